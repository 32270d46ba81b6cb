#pragma once

namespace meshtls::base {

// RouteGrpcLogs sends gRPC's own log lines (connection errors, for example) through Log(), so
// that with `log.format: json` every line on stderr is JSON. gRPC's ERROR becomes `error`, INFO
// `info`, DEBUG `debug`, each with a `source` field (gRPC's file:line). Call once from main(),
// after SetLogOptions and before gRPC starts a thread. Lives apart from log.h so that only the
// two binaries' mains see gRPC.
void RouteGrpcLogs();

}  // namespace meshtls::base

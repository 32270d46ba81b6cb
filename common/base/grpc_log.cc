#include "common/base/grpc_log.h"

#include <grpc/support/log.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"

namespace meshtls::base {
namespace {

void ForwardGrpcLog(gpr_log_func_args* args) {
  LogLevel level = LogLevel::kDebug;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) {
    level = LogLevel::kError;
  } else if (args->severity == GPR_LOG_SEVERITY_INFO) {
    level = LogLevel::kInfo;
  }
  Log(level, args->message != nullptr ? args->message : "",
      {{"source",
        absl::StrCat("grpc:", args->file != nullptr ? args->file : "?", ":", args->line)}});
}

}  // namespace

void RouteGrpcLogs() {
  // gRPC filters by its own verbosity first (GRPC_VERBOSITY, ERROR by default); Log() then
  // applies log.level.
  gpr_set_log_function(&ForwardGrpcLog);
}

}  // namespace meshtls::base

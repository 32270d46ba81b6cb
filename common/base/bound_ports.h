#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/base/host_port.h"

namespace meshtls::base {

// BoundListener is one listening socket a process has bound: its name and the address the
// kernel gave it, with the real port when the configuration said port 0.
//
// Names: "admin", "grpc" and "webhook" (certmgr), "admin", "inbound.<name>" and "outbound.<name>"
// (sidecar, by the listener names of its configuration).
struct BoundListener {
  std::string name;
  HostPort address;
};

// FormatBoundPorts renders the bound-ports file (`--bound-ports-file`): one
// `<name>=<ip>:<port>` line per listener, in the given order, for example
//
//   admin=127.0.0.1:40321
//   inbound.http=0.0.0.0:40323
//
// IPv6 addresses keep their brackets ("grpc=[::1]:8443"). Lines are this simple so that a shell
// script reads a port with `sed -n 's/^admin=.*://p'`.
std::string FormatBoundPorts(const std::vector<BoundListener>& listeners);

// WriteBoundPortsFile writes FormatBoundPorts(listeners) to `path` atomically (temporary file and
// rename), so a reader polling for the file sees all the listeners or no file.
absl::Status WriteBoundPortsFile(const std::string& path,
                                 const std::vector<BoundListener>& listeners);

// ParseBoundPorts reads a bound-ports file back, by listener name. InvalidArgument, naming the
// line, for a line that is not `<name>=<ip>:<port>` with a port from 1 to 65535, or a name given
// twice. Empty lines are skipped.
absl::StatusOr<std::map<std::string, HostPort>> ParseBoundPorts(absl::string_view text);

}  // namespace meshtls::base

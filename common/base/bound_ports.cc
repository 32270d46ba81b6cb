#include "common/base/bound_ports.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/file.h"

namespace meshtls::base {

std::string FormatBoundPorts(const std::vector<BoundListener>& listeners) {
  std::string text;
  for (const BoundListener& l : listeners) {
    absl::StrAppend(&text, l.name, "=", l.address.ToString(), "\n");
  }
  return text;
}

absl::Status WriteBoundPortsFile(const std::string& path,
                                 const std::vector<BoundListener>& listeners) {
  absl::Status s = WriteFileAtomically(path, FormatBoundPorts(listeners), 0644);
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("--bound-ports-file: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, HostPort>> ParseBoundPorts(absl::string_view text) {
  std::map<std::string, HostPort> listeners;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (line.empty()) {
      continue;
    }
    const size_t equals = line.find('=');
    if (equals == 0 || equals == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": \"", line, "\" is not <name>=<ip>:<port>"));
    }
    absl::StatusOr<HostPort> address = ParseHostPort(line.substr(equals + 1));
    if (!address.ok() || !address->host_is_ip) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line_number, ": \"", line, "\" is not <name>=<ip>:<port>",
                       address.ok() ? "" : absl::StrCat(" (", address.status().message(), ")")));
    }
    if (!listeners.emplace(std::string(line.substr(0, equals)), *std::move(address)).second) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": listener \"",
                                                     line.substr(0, equals), "\" given twice"));
    }
  }
  return listeners;
}

}  // namespace meshtls::base

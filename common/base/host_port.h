#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::base {

// HostPort is a parsed "host:port" or "[ipv6]:port". `host` has no brackets.
struct HostPort {
  std::string host;
  uint16_t port = 0;
  bool host_is_ip = false;  // an IPv4 or IPv6 literal (no DNS lookup needed)
  bool is_ipv6 = false;

  // ToString formats it back, with brackets around an IPv6 host.
  std::string ToString() const;
};

// ParseHostPort accepts "host:port", "1.2.3.4:port" and "[::1]:port". The host is an IP literal
// or a DNS name (letters, digits, '-', '.', '_'); the port is 0..65535, and 0 only where
// `allow_port_zero` (a listener that takes any free port).
absl::StatusOr<HostPort> ParseHostPort(absl::string_view text, bool allow_port_zero = false);

}  // namespace meshtls::base

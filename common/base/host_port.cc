#include "common/base/host_port.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace meshtls::base {

std::string HostPort::ToString() const {
  if (is_ipv6) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<HostPort> ParseHostPort(absl::string_view text, bool allow_port_zero) {
  HostPort out;
  absl::string_view host;
  absl::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", text, "\" is not an address: want [ipv6]:port"));
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    in6_addr addr6;
    if (inet_pton(AF_INET6, std::string(host).c_str(), &addr6) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("\"", host, "\" is not an IPv6 address"));
    }
    out.host_is_ip = true;
    out.is_ipv6 = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", text, "\" is not an address: want host:port"));
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", text, "\": put an IPv6 address in brackets, as [::1]:port"));
    }
    if (host.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" has no host"));
    }
    in_addr addr4;
    if (inet_pton(AF_INET, std::string(host).c_str(), &addr4) == 1) {
      out.host_is_ip = true;
    } else {
      if (host.size() > 253) {
        return absl::InvalidArgumentError(absl::StrCat("host name is longer than 253 bytes"));
      }
      for (char c : host) {
        if (!absl::ascii_isalnum(c) && c != '-' && c != '.' && c != '_') {
          return absl::InvalidArgumentError(
              absl::StrCat("\"", host, "\" is not a valid host name or IP address"));
        }
      }
    }
  }
  uint32_t port_number = 0;
  if (port.empty() || port.size() > 5 || !absl::SimpleAtoi(port, &port_number) ||
      !absl::ascii_isdigit(port.front()) || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", port, "\" is not a port (0..65535)"));
  }
  if (port_number == 0 && !allow_port_zero) {
    return absl::InvalidArgumentError(absl::StrCat("port 0 is not allowed in \"", text, "\""));
  }
  out.host = std::string(host);
  out.port = static_cast<uint16_t>(port_number);
  return out;
}

}  // namespace meshtls::base

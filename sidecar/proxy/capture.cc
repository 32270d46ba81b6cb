#include "sidecar/proxy/capture.h"

#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace meshtls::sidecar {
namespace {

// IP6T_SO_ORIGINAL_DST from <linux/netfilter_ipv6/ip6_tables.h>, whose other declarations do
// not compile as C++; the kernel ABI fixes it at 80, as SO_ORIGINAL_DST is.
constexpr int kIp6tSoOriginalDst = 80;

}  // namespace

absl::StatusOr<net::SocketAddress> OriginalDestination(int fd) {
  net::SocketAddress local;
  local.length = sizeof(local.storage);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local.storage), &local.length) != 0) {
    return absl::InternalError(absl::StrCat("getsockname: ", std::strerror(errno)));
  }
  net::SocketAddress original;
  original.length = sizeof(original.storage);
  const bool ipv6 = local.storage.ss_family == AF_INET6;
  const int rc =
      ipv6 ? ::getsockopt(fd, SOL_IPV6, kIp6tSoOriginalDst, &original.storage, &original.length)
           : ::getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &original.storage, &original.length);
  if (rc != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOPROTOOPT) {
      return absl::NotFoundError(
          "the connection has no original destination (it was not redirected to the capture "
          "port by the packet filter)");
    }
    return absl::InternalError(
        absl::StrCat(ipv6 ? "IP6T_SO_ORIGINAL_DST: " : "SO_ORIGINAL_DST: ", std::strerror(err)));
  }
  if (original.storage.ss_family != AF_INET && original.storage.ss_family != AF_INET6) {
    return absl::InternalError("the original destination is not an IP address");
  }
  return original;
}

uint16_t PortOf(const net::SocketAddress& address) {
  if (address.storage.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in*>(&address.storage)->sin_port);
}

net::SocketAddress LoopbackAddress(uint16_t port) {
  net::SocketAddress address;
  auto* in = reinterpret_cast<sockaddr_in*>(&address.storage);
  in->sin_family = AF_INET;
  in->sin_port = htons(port);
  in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.length = sizeof(sockaddr_in);
  return address;
}

bool IsSameAddress(const net::SocketAddress& a, const net::SocketAddress& b) {
  if (PortOf(a) != PortOf(b)) {
    return false;
  }
  return net::PeerAddress::From(a).AddressBytes() == net::PeerAddress::From(b).AddressBytes();
}

FirstBytes ClassifyFirstBytes(absl::string_view bytes) {
  // A TLS record header: content type 22 (handshake), then the legacy version 3.0 to 3.4 (every
  // client, TLS 1.3's included, writes 3.1 or 3.3 here).
  if (bytes.empty()) {
    return FirstBytes::kNeedMore;
  }
  if (static_cast<uint8_t>(bytes[0]) != 22) {
    return FirstBytes::kOther;
  }
  if (bytes.size() < 2) {
    return FirstBytes::kNeedMore;
  }
  if (static_cast<uint8_t>(bytes[1]) != 3) {
    return FirstBytes::kOther;
  }
  if (bytes.size() < 3) {
    return FirstBytes::kNeedMore;
  }
  return static_cast<uint8_t>(bytes[2]) <= 4 ? FirstBytes::kTlsHandshake : FirstBytes::kOther;
}

bool CaptureRule::Matches(absl::string_view address_bytes, uint16_t port) const {
  if (!ports.empty() && std::find(ports.begin(), ports.end(), port) == ports.end()) {
    return false;
  }
  if (networks.empty()) {
    return true;
  }
  return std::any_of(networks.begin(), networks.end(),
                     [&](const net::Cidr& n) { return n.ContainsAddress(address_bytes); });
}

const CaptureRule* OutboundCapture::Match(const net::SocketAddress& destination) const {
  const std::string address = net::PeerAddress::From(destination).AddressBytes();
  const uint16_t port = PortOf(destination);
  for (const CaptureRule& rule : rules) {
    if (rule.Matches(address, port)) {
      return &rule;
    }
  }
  return nullptr;
}

const InboundPort& InboundCapture::For(uint16_t port) const {
  for (const InboundPort& p : ports) {
    if (p.port == port) {
      return p;
    }
  }
  return default_port;
}

bool InboundCapture::IsOwnPort(uint16_t port) const {
  return std::find(own_ports.begin(), own_ports.end(), port) != own_ports.end();
}

}  // namespace meshtls::sidecar

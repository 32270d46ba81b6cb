#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/base/fd.h"
#include "common/base/host_port.h"

namespace meshtls::net {

// SocketAddress is a resolved IPv4 or IPv6 address.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string ToString() const;
};

// PeerAddress is an IPv4 or IPv6 socket address in 28 bytes, kept by each connection so that a
// log line can still name the peer after its socket is gone (getpeername fails then).
class PeerAddress {
 public:
  PeerAddress() = default;
  // From copies an AF_INET or AF_INET6 address; anything else stays unknown ("?").
  static PeerAddress From(const sockaddr* address, socklen_t length);
  static PeerAddress From(const SocketAddress& address) {
    return From(reinterpret_cast<const sockaddr*>(&address.storage), address.length);
  }
  std::string ToString() const;

 private:
  sockaddr_in6 address_{};  // large enough for a sockaddr_in, with the family at the same place
};

// ToSocketAddress converts an IP-literal HostPort (no DNS).
absl::StatusOr<SocketAddress> ToSocketAddress(const base::HostPort& hp);

// ListenTcp makes a non-blocking listening socket. With `reuse_port`, several workers bind
// the same address and the kernel spreads connections across them.
absl::StatusOr<base::UniqueFd> ListenTcp(const SocketAddress& address, bool reuse_port,
                                         int backlog = 1024);

// ConnectTcp starts a non-blocking connect; completion is signalled by EPOLLOUT.
absl::StatusOr<base::UniqueFd> ConnectTcp(const SocketAddress& address);

// SocketError returns and clears SO_ERROR (0 when the connect succeeded).
int SocketError(int fd);
uint16_t LocalPort(int fd);
void SetNoDelay(int fd);
// AbortiveClose makes close() send a RST instead of a FIN (a truncated stream must not look
// like a clean end).
void SetAbortiveClose(int fd);

}  // namespace meshtls::net

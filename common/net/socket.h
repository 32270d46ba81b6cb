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
  // AddressBytes is the IP address alone (no port) as 4 or 16 raw bytes, empty when unknown. An
  // IPv4-mapped IPv6 address gives the 4 bytes of the IPv4 address it maps, so one client host
  // has one key whether a dual-stack listener saw it over IPv4 or IPv6.
  std::string AddressBytes() const;

 private:
  sockaddr_in6 address_{};  // large enough for a sockaddr_in, with the family at the same place
};

// ToSocketAddress converts an IP-literal HostPort (no DNS).
absl::StatusOr<SocketAddress> ToSocketAddress(const base::HostPort& hp);

// ListenOptions say how ListenTcp sets up its socket.
struct ListenOptions {
  // reuse_port (SO_REUSEPORT): several workers bind the same address and the kernel spreads
  // connections across them.
  bool reuse_port = false;
  // backlog is the kernel's queue of connections not yet accepted (capped by
  // net.core.somaxconn). When it is full, new SYNs are dropped and clients retry a second later.
  int backlog = 1024;
  // ipv6_only (IPV6_V6ONLY) keeps an IPv6 listener to IPv6 clients; false lets a wildcard
  // listener ("[::]") take IPv4 clients too, as IPv4-mapped addresses. Ignored for IPv4.
  bool ipv6_only = true;
};

// ListenTcp makes a non-blocking listening socket (SO_REUSEADDR set, so a restarted process
// binds at once). Fails with Unavailable naming the address when bind or listen fails.
absl::StatusOr<base::UniqueFd> ListenTcp(const SocketAddress& address,
                                         const ListenOptions& options = {});

// AcceptTcp takes one connection from the listening socket `listen_fd`, non-blocking and
// close-on-exec, and stores its peer in `peer`. On failure the result is invalid and errno is
// accept4's: EAGAIN when none is waiting, EMFILE and its relatives when out of descriptors.
base::UniqueFd AcceptTcp(int listen_fd, PeerAddress& peer);

// ConnectTcp starts a non-blocking connect; completion is signalled by EPOLLOUT.
absl::StatusOr<base::UniqueFd> ConnectTcp(const SocketAddress& address);

// SocketError returns and clears SO_ERROR (0 when the connect succeeded).
int SocketError(int fd);
uint16_t LocalPort(int fd);
void SetNoDelay(int fd);
// SetNotSentLowWater sets TCP_NOTSENT_LOWAT. With 1 byte, send() takes nothing and EPOLLOUT stays
// off while anything queued is unsent, so EPOLLOUT means "the kernel has sent all of it": a
// writer can wait for its peer to take a whole response without spinning. False if refused.
bool SetNotSentLowWater(int fd, int bytes);
// UnsentBytes is how much queued on `fd` the kernel has not sent yet (SIOCOUTQNSD): more than
// zero while the peer's receive window is closed, that is while the peer does not read. 0 when
// the kernel cannot tell.
int UnsentBytes(int fd);
// AbortiveClose makes close() send a RST instead of a FIN (a truncated stream must not look
// like a clean end).
void SetAbortiveClose(int fd);

}  // namespace meshtls::net

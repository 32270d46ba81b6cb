#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "certmgr/base/fd.h"
#include "certmgr/base/host_port.h"

namespace meshtls::sidecar::net {

// SocketAddress is a resolved IPv4 or IPv6 address.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string ToString() const;
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
std::string PeerAddressString(int fd);
void SetNoDelay(int fd);
// AbortiveClose makes close() send a RST instead of a FIN (a truncated stream must not look
// like a clean end).
void SetAbortiveClose(int fd);

}  // namespace meshtls::sidecar::net

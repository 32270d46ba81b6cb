#include "common/net/socket.h"

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace meshtls::net {

std::string SocketAddress::ToString() const {
  char host[INET6_ADDRSTRLEN] = {0};
  if (storage.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return absl::StrCat(host, ":", ntohs(a->sin_port));
  }
  if (storage.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return absl::StrCat("[", host, "]:", ntohs(a->sin6_port));
  }
  return "?";
}

PeerAddress PeerAddress::From(const sockaddr* address, socklen_t length) {
  PeerAddress out;
  if (address != nullptr && ((address->sa_family == AF_INET && length >= sizeof(sockaddr_in)) ||
                             (address->sa_family == AF_INET6 && length >= sizeof(sockaddr_in6)))) {
    std::memcpy(&out.address_, address,
                address->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
  }
  return out;
}

std::string PeerAddress::ToString() const {
  SocketAddress full;
  std::memcpy(&full.storage, &address_, sizeof(address_));
  full.length = sizeof(address_);
  return full.ToString();
}

std::string PeerAddress::AddressBytes() const {
  if (address_.sin6_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&address_);
    return std::string(reinterpret_cast<const char*>(&a->sin_addr), sizeof(a->sin_addr));
  }
  if (address_.sin6_family == AF_INET6) {
    const char* bytes = reinterpret_cast<const char*>(&address_.sin6_addr);
    if (IN6_IS_ADDR_V4MAPPED(&address_.sin6_addr)) {
      return std::string(bytes + 12, 4);
    }
    return std::string(bytes, sizeof(address_.sin6_addr));
  }
  return std::string();
}

absl::StatusOr<SocketAddress> ToSocketAddress(const base::HostPort& hp) {
  SocketAddress out;
  if (hp.is_ipv6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out.storage);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(hp.port);
    if (inet_pton(AF_INET6, hp.host.c_str(), &a->sin6_addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(hp.host, " is not an IPv6 address"));
    }
    out.length = sizeof(sockaddr_in6);
    return out;
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&out.storage);
  a->sin_family = AF_INET;
  a->sin_port = htons(hp.port);
  if (inet_pton(AF_INET, hp.host.c_str(), &a->sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(hp.host, " is not an IPv4 address"));
  }
  out.length = sizeof(sockaddr_in);
  return out;
}

absl::StatusOr<base::UniqueFd> ListenTcp(const SocketAddress& address,
                                         const ListenOptions& options) {
  base::UniqueFd fd(
      ::socket(address.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (options.reuse_port) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  }
  if (address.storage.ss_family == AF_INET6) {
    const int v6_only = options.ipv6_only ? 1 : 0;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, sizeof(v6_only));
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address.ToString(), ": ", std::strerror(errno)));
  }
  if (::listen(fd.get(), options.backlog) != 0) {
    return absl::UnavailableError(
        absl::StrCat("listen on ", address.ToString(), ": ", std::strerror(errno)));
  }
  return fd;
}

base::UniqueFd AcceptTcp(int listen_fd, PeerAddress& peer) {
  sockaddr_in6 from{};  // a sockaddr_in fits too
  socklen_t from_length = sizeof(from);
  base::UniqueFd fd(::accept4(listen_fd, reinterpret_cast<sockaddr*>(&from), &from_length,
                              SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (fd.valid()) {
    peer = PeerAddress::From(reinterpret_cast<const sockaddr*>(&from), from_length);
  }
  return fd;
}

absl::StatusOr<base::UniqueFd> ConnectTcp(const SocketAddress& address) {
  base::UniqueFd fd(
      ::socket(address.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return absl::ResourceExhaustedError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  SetNoDelay(fd.get());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) !=
          0 &&
      errno != EINPROGRESS) {
    return absl::UnavailableError(
        absl::StrCat("connect to ", address.ToString(), ": ", std::strerror(errno)));
  }
  return fd;
}

int SocketError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
    return errno;
  }
  return err;
}

uint16_t LocalPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return 0;
  }
  if (ss.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  }
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool SetNotSentLowWater(int fd, int bytes) {
  return ::setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &bytes, sizeof(bytes)) == 0;
}

int UnsentBytes(int fd) {
  int unsent = 0;
  if (::ioctl(fd, SIOCOUTQNSD, &unsent) != 0) {
    return 0;
  }
  return unsent;
}

void SetAbortiveClose(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

}  // namespace meshtls::net

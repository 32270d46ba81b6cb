#include "common/admin/admin_server.h"

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/fd.h"
#include "common/base/host_port.h"
#include "common/base/log.h"

namespace meshtls::admin {
namespace {

using Clock = std::chrono::steady_clock;

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

// Why the server dropped a connection or refused a request: the reason label of
// meshtls_admin_rejected_total.
enum class Rejection { kTimeout, kEvicted, kMalformed, kTooLarge, kCount };
constexpr const char* kRejectionNames[] = {"timeout", "evicted", "malformed", "too_large"};

// ParsedRequest is what the server needs of one request head.
struct ParsedRequest {
  int error_status = 0;  // non-zero: answer this and close
  std::string method;
  std::string path;  // without the query
  bool keep_alive = true;
};

// ParseRequestHead parses "METHOD SP target SP HTTP/1.x" and the header lines of `head` (CRLF
// line ends, without the final empty line). Only what a scraper or probe sends is accepted:
// GET or HEAD, an origin-form target, no body, no obsolete line folding.
ParsedRequest ParseRequestHead(absl::string_view head) {
  ParsedRequest r;
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  std::vector<absl::string_view> parts = absl::StrSplit(lines[0], ' ');
  if (parts.size() != 3 || parts[0].empty() || parts[1].empty() || parts[1][0] != '/') {
    r.error_status = 400;
    return r;
  }
  for (char c : parts[0]) {
    if (!absl::ascii_isupper(static_cast<unsigned char>(c))) {
      r.error_status = 400;
      return r;
    }
  }
  if (parts[2] == "HTTP/1.0") {
    r.keep_alive = false;
  } else if (parts[2] != "HTTP/1.1") {
    r.error_status = absl::StartsWith(parts[2], "HTTP/") ? 505 : 400;
    return r;
  }
  r.method = std::string(parts[0]);
  absl::string_view target = parts[1];
  r.path = std::string(target.substr(0, target.find('?')));
  for (size_t i = 1; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    const size_t colon = line.find(':');
    if (colon == 0 || colon == absl::string_view::npos || line[0] == ' ' || line[0] == '\t') {
      r.error_status = 400;  // not "name: value", or an obsolete folded line
      return r;
    }
    absl::string_view name = line.substr(0, colon);
    if (absl::StrContains(name, ' ') || absl::StrContains(name, '\t')) {
      r.error_status = 400;
      return r;
    }
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (absl::EqualsIgnoreCase(name, "Content-Length")) {
      uint64_t length = 0;
      if (!absl::SimpleAtoi(value, &length) || length != 0) {
        r.error_status = 400;  // GET and HEAD carry no body here
        return r;
      }
    } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding")) {
      r.error_status = 501;
      return r;
    } else if (absl::EqualsIgnoreCase(name, "Connection")) {
      const std::string tokens = absl::AsciiStrToLower(value);
      if (absl::StrContains(tokens, "close")) {
        r.keep_alive = false;
      } else if (absl::StrContains(tokens, "keep-alive")) {
        r.keep_alive = true;
      }
    }
  }
  if (r.method != "GET" && r.method != "HEAD") {
    r.error_status = 405;
  }
  return r;
}

// kListenBacklog is the kernel's queue of connections not yet accepted. When it is full the
// kernel drops new SYNs and the client retries a second later, past a kubelet probe's 1 s
// timeout: under a flood of reconnecting clients (hundreds at once, each evicted and back at
// once), a probe must find room in the queue and wait its turn instead. The kernel caps it at
// net.core.somaxconn (4096 by default since Linux 5.4).
constexpr int kListenBacklog = 1024;

// SourceKey is the peer's IP address as bytes: the unit of the per-address share. An
// IPv4-mapped IPv6 address counts as the IPv4 address it maps.
std::string SourceKey(const sockaddr_storage& peer) {
  if (peer.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(peer);
    return std::string(reinterpret_cast<const char*>(&a.sin_addr), sizeof(a.sin_addr));
  }
  if (peer.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(peer);
    const char* bytes = reinterpret_cast<const char*>(&a.sin6_addr);
    if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) {
      return std::string(bytes + 12, 4);
    }
    return std::string(bytes, sizeof(a.sin6_addr));
  }
  return std::string();
}

}  // namespace

// Impl is the server: one thread running an epoll loop over the listening socket, an eventfd
// (stop) and at most max_connections client connections, all non-blocking. Everything below
// except Stop() runs on that thread; the routes' handlers are called there too.
//
// Resource bounds (AdminLimits), against slowloris and its relatives:
//   - a request head must arrive whole within request_timeout of its first byte (or of the
//     accept), and be at most max_request_head bytes: trickling bytes does not extend it;
//   - a keep-alive connection waiting for its next request is closed after idle_timeout;
//   - a response must be taken by the client within write_timeout, and it counts as taken
//     only once the kernel has sent all of it (TCP_NOTSENT_LOWAT and SIOCOUTQNSD), not when
//     send() accepted it: a client that does not read keeps its response unsent;
//   - no pipelined request is read or parsed while a response is untaken, so a connection
//     holds one response (in memory and in the kernel's send queue) and a bounded input
//     buffer; further requests wait in the kernel's receive buffer, and TCP flow control
//     stops the client;
//   - a new connection always gets a slot. When its address already holds
//     max_connections_per_address connections, its own address's longest-waiting one is
//     evicted; otherwise, at max_connections, the longest-waiting connection of all is. A
//     connection waits for a request (since the accept or its previous response) or for its
//     peer to take a response (since the response began). Probes and scrapes ask at once and
//     take their answers at once, so they never wait longest; a client holding a slot by not
//     asking or not reading does.
struct AdminServer::Impl {
  explicit Impl(const AdminLimits& limits)
      : max_connections(std::max<size_t>(limits.max_connections, 1)),
        max_connections_per_address(
            std::clamp<size_t>(limits.max_connections_per_address, 1, max_connections)),
        max_request_head(limits.max_request_head),
        request_timeout(absl::ToChronoNanoseconds(limits.request_timeout)),
        idle_timeout(absl::ToChronoNanoseconds(limits.idle_timeout)),
        write_timeout(absl::ToChronoNanoseconds(limits.write_timeout)) {
    RegisterOwnMetrics();
  }

  const size_t max_connections;
  const size_t max_connections_per_address;
  const size_t max_request_head;
  const Clock::duration request_timeout;
  const Clock::duration idle_timeout;
  const Clock::duration write_timeout;

  struct Connection {
    base::UniqueFd fd;
    std::string source;  // the peer's address (SourceKey)
    std::string in;      // bytes of the request head(s) received so far
    std::string out;     // the part of the response not yet handed to the kernel
    size_t out_sent = 0;
    bool close_after_write = false;
    bool writing = false;   // a response is untaken: being written or not yet sent by the kernel
    bool answered = false;  // at least one response was taken
    // unsent_observable: TCP_NOTSENT_LOWAT is set, so EPOLLOUT means "all sent" and the
    // kernel's unsent bytes can be waited for without spinning.
    bool unsent_observable = false;
    // waiting_since: when the current wait began; reading: since the previous response was
    // taken (or the accept); writing: since the response began. Eviction takes the oldest.
    Clock::time_point waiting_since;
    Clock::time_point deadline;
    uint32_t events = 0;  // the epoll interest
  };

  std::vector<AdminRoute> routes;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables;
  std::shared_ptr<prometheus::Registry> own_metrics = std::make_shared<prometheus::Registry>();
  prometheus::Counter* rejected[static_cast<int>(Rejection::kCount)] = {};
  base::UniqueFd listen_fd;
  base::UniqueFd epoll_fd;
  base::UniqueFd stop_fd;
  std::map<int, Connection> connections;  // by fd
  std::thread thread;

  void RegisterOwnMetrics() {
    auto& family = prometheus::BuildCounter()
                       .Name("meshtls_admin_rejected_total")
                       .Help(
                           "Admin HTTP connections closed or requests refused by the server, "
                           "by reason (timeout, evicted, malformed, too_large)")
                       .Register(*own_metrics);
    for (int i = 0; i < static_cast<int>(Rejection::kCount); ++i) {
      rejected[i] = &family.Add({{"reason", kRejectionNames[i]}});
    }
  }

  void Count(Rejection r) { rejected[static_cast<int>(r)]->Increment(); }

  HttpResponse Metrics() const {
    std::vector<prometheus::MetricFamily> families;
    for (const auto& c : collectables) {
      std::vector<prometheus::MetricFamily> more = c->Collect();
      families.insert(families.end(), std::make_move_iterator(more.begin()),
                      std::make_move_iterator(more.end()));
    }
    return HttpResponse{.status = 200,
                        .content_type = "text/plain; version=0.0.4; charset=utf-8",
                        .body = prometheus::TextSerializer().Serialize(families)};
  }

  HttpResponse Route(const std::string& path) const {
    if (path == "/metrics") {
      return Metrics();
    }
    for (const AdminRoute& route : routes) {
      if (route.path == path) {
        return route.handler();
      }
    }
    return HttpResponse{.status = 404, .body = "not found\n"};
  }

  void Run() {
    constexpr int kMaxEvents = 64;
    epoll_event events[kMaxEvents];
    while (true) {
      const int n = ::epoll_wait(epoll_fd.get(), events, kMaxEvents, NextTimeoutMs());
      if (n < 0 && errno != EINTR) {
        base::LogError("admin server: epoll_wait failed", {{"error", std::strerror(errno)}});
        return;
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == stop_fd.get()) {
          return;
        }
        if (fd == listen_fd.get()) {
          Accept();
          continue;
        }
        auto it = connections.find(fd);
        if (it != connections.end()) {
          OnEvents(it->second, events[i].events);
        }
      }
      ExpireDeadlines();
    }
  }

  int NextTimeoutMs() const {
    if (connections.empty()) {
      return -1;
    }
    Clock::time_point next = Clock::time_point::max();
    for (const auto& [fd, c] : connections) {
      next = std::min(next, c.deadline);
    }
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
    return static_cast<int>(std::clamp<int64_t>(wait.count() + 1, 0, 60'000));
  }

  void ExpireDeadlines() {
    const Clock::time_point now = Clock::now();
    std::vector<int> expired;
    for (const auto& [fd, c] : connections) {
      if (c.deadline <= now) {
        expired.push_back(fd);
      }
    }
    for (int fd : expired) {
      Connection& c = connections.at(fd);
      // A keep-alive connection that went quiet after its answers is no attack; a connection
      // that never asked, or stopped mid-request or mid-response, is.
      if (c.writing || !c.in.empty() || !c.answered) {
        Count(Rejection::kTimeout);
      }
      Close(fd);
    }
  }

  void Accept() {
    for (int i = 0; i < 16; ++i) {
      sockaddr_storage peer{};
      socklen_t peer_length = sizeof(peer);
      base::UniqueFd fd(::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_length,
                                  SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd.valid()) {
        return;  // EAGAIN, or out of descriptors: the backlog waits for the next wake-up
      }
      Connection c;
      c.source = SourceKey(peer);
      MakeRoomFor(c.source);
      // With a low-water mark of one byte, send() stops and EPOLLOUT stays off while anything
      // is unsent: Write() can wait for a response to be sent whole without spinning.
      const int one = 1;
      c.unsent_observable =
          ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &one, sizeof(one)) == 0;
      const Clock::time_point now = Clock::now();
      c.waiting_since = now;
      c.deadline = now + request_timeout;  // a new connection is expected to ask at once
      c.fd = std::move(fd);
      const int raw = c.fd.get();
      Connection& placed = connections.emplace(raw, std::move(c)).first->second;
      SetInterest(placed, EPOLLIN);
    }
  }

  // MakeRoomFor evicts a connection if one more from `source` would exceed that address's
  // share or the cap (see the class comment). The share keeps one client address (an
  // attacker's pod) from pushing out the others (the kubelet's node address, Prometheus).
  void MakeRoomFor(const std::string& source) {
    size_t from_source = 0;
    for (const auto& [fd, c] : connections) {
      from_source += c.source == source ? 1 : 0;
    }
    if (from_source >= max_connections_per_address) {
      EvictLongestWaiting(&source);
    } else if (connections.size() >= max_connections) {
      EvictLongestWaiting(nullptr);
    }
  }

  // EvictLongestWaiting closes the connection (of `only_source`, if given) whose current
  // wait began first, whether it waits for a request or for its peer to take a response.
  void EvictLongestWaiting(const std::string* only_source) {
    auto oldest = connections.end();
    for (auto it = connections.begin(); it != connections.end(); ++it) {
      if (only_source != nullptr && it->second.source != *only_source) {
        continue;
      }
      if (oldest == connections.end() || it->second.waiting_since < oldest->second.waiting_since) {
        oldest = it;
      }
    }
    if (oldest != connections.end()) {
      Count(Rejection::kEvicted);
      Close(oldest->first);
    }
  }

  void SetInterest(Connection& c, uint32_t events) {
    if (c.events == events) {
      return;
    }
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = c.fd.get();
    ::epoll_ctl(epoll_fd.get(), c.events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, c.fd.get(), &ev);
    c.events = events;
  }

  void Close(int fd) {
    ::epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, fd, nullptr);
    connections.erase(fd);  // closes the socket
  }

  void OnEvents(Connection& c, uint32_t events) {
    const int fd = c.fd.get();
    if (c.writing) {
      if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
        Close(fd);  // reset, or closed both ways: nobody will take the rest of the response
      } else if ((events & EPOLLOUT) != 0) {
        Write(c);
      }
      return;  // no request is read while a response is untaken
    }
    char buffer[4096];
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      Close(fd);  // the client went away (a half-closed client gets no answer: it asked for none)
      return;
    }
    if (n < 0) {
      return;
    }
    if (c.in.empty()) {
      c.deadline = Clock::now() + request_timeout;  // the head's clock starts at its first byte
    }
    c.in.append(buffer, static_cast<size_t>(n));
    ProcessInput(c);
  }

  // ProcessInput answers the request whose head is complete in `c.in`, if any.
  void ProcessInput(Connection& c) {
    const size_t end = c.in.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (c.in.size() > max_request_head) {
        Count(Rejection::kTooLarge);
        Respond(c, HttpResponse{.status = 431, .body = "request head too large\n"}, false, true);
      }
      return;
    }
    if (end > max_request_head) {
      Count(Rejection::kTooLarge);
      Respond(c, HttpResponse{.status = 431, .body = "request head too large\n"}, false, true);
      return;
    }
    ParsedRequest request = ParseRequestHead(absl::string_view(c.in).substr(0, end));
    c.in.erase(0, end + 4);
    if (request.error_status != 0) {
      Count(Rejection::kMalformed);
      Respond(c,
              HttpResponse{.status = request.error_status,
                           .body = absl::StrCat(ReasonPhrase(request.error_status), "\n")},
              false, true);
      return;
    }
    HttpResponse response = Route(request.path);
    // Only a client that gets what it asked for keeps its connection: one probing unknown
    // paths (or meeting a 503) frees its slot.
    const bool close = !request.keep_alive || response.status >= 400;
    Respond(c, response, request.method == "HEAD", close);
  }

  void Respond(Connection& c, const HttpResponse& r, bool head, bool close) {
    c.out =
        absl::StrCat("HTTP/1.1 ", r.status, " ", ReasonPhrase(r.status),
                     "\r\nContent-Type: ", r.content_type, "\r\nContent-Length: ", r.body.size(),
                     "\r\nCache-Control: no-store", r.status == 405 ? "\r\nAllow: GET, HEAD" : "",
                     close ? "\r\nConnection: close" : "", "\r\n\r\n");
    if (!head) {
      c.out += r.body;
    }
    c.out_sent = 0;
    c.close_after_write = close;
    c.writing = true;
    c.waiting_since = Clock::now();
    c.deadline = c.waiting_since + write_timeout;
    Write(c);
  }

  // UnsentBytes is how much of what was handed to the kernel it has not sent yet: more than
  // zero while the peer's receive window is closed, that is while the peer does not read.
  static int UnsentBytes(const Connection& c) {
    int unsent = 0;
    if (!c.unsent_observable || ::ioctl(c.fd.get(), SIOCOUTQNSD, &unsent) != 0) {
      return 0;
    }
    return unsent;
  }

  void Write(Connection& c) {
    const int fd = c.fd.get();
    while (c.out_sent < c.out.size()) {
      const ssize_t n =
          ::send(fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        SetInterest(c, EPOLLOUT);
        return;
      }
      Close(fd);
      return;
    }
    if (!c.out.empty()) {
      c.out.clear();  // all handed to the kernel: the memory goes back at once
      c.out.shrink_to_fit();
    }
    if (c.close_after_write) {
      // Let the client read the answer before the close: a close with unread request bytes
      // would send a reset that can destroy the response in flight.
      ::shutdown(fd, SHUT_WR);
      Close(fd);
      return;
    }
    if (UnsentBytes(c) > 0) {
      SetInterest(c, EPOLLOUT);  // taken when the kernel has sent it all (see Accept)
      return;
    }
    c.writing = false;
    c.answered = true;
    c.waiting_since = Clock::now();
    c.deadline = c.waiting_since + (c.in.empty() ? idle_timeout : request_timeout);
    SetInterest(c, EPOLLIN);
    if (!c.in.empty()) {
      ProcessInput(c);  // a pipelined request already here
    }
  }
};

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& listen, std::vector<AdminRoute> routes,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables, const AdminLimits& limits) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(listen, /*allow_port_zero=*/true);
  if (!hp.ok()) {
    return hp.status();
  }
  if (!hp->host_is_ip) {
    return absl::InvalidArgumentError(
        absl::StrCat("admin listen address \"", listen, "\" must be an IP address"));
  }
  auto impl = std::make_unique<Impl>(limits);
  impl->routes = std::move(routes);
  impl->collectables = std::move(collectables);
  impl->collectables.push_back(impl->own_metrics);

  sockaddr_storage address{};
  socklen_t address_length = 0;
  if (hp->is_ipv6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&address);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(hp->port);
    if (::inet_pton(AF_INET6, hp->host.c_str(), &a->sin6_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin listen address \"", listen, "\" is not an IPv6 address"));
    }
    address_length = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&address);
    a->sin_family = AF_INET;
    a->sin_port = htons(hp->port);
    if (::inet_pton(AF_INET, hp->host.c_str(), &a->sin_addr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("admin listen address \"", listen, "\" is not an IPv4 address"));
    }
    address_length = sizeof(*a);
  }
  impl->listen_fd.reset(::socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  const int one = 1;
  if (!impl->listen_fd.valid() ||
      ::setsockopt(impl->listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      ::bind(impl->listen_fd.get(), reinterpret_cast<sockaddr*>(&address), address_length) != 0 ||
      ::listen(impl->listen_fd.get(), kListenBacklog) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", hp->ToString(),
                                               " for the admin endpoint: ", std::strerror(errno)));
  }
  sockaddr_storage bound{};
  socklen_t bound_length = sizeof(bound);
  ::getsockname(impl->listen_fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_length);
  const uint16_t port = ntohs(hp->is_ipv6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  impl->epoll_fd.reset(::epoll_create1(EPOLL_CLOEXEC));
  impl->stop_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!impl->epoll_fd.valid() || !impl->stop_fd.valid()) {
    return absl::InternalError(absl::StrCat("admin server: ", std::strerror(errno)));
  }
  for (int fd : {impl->listen_fd.get(), impl->stop_fd.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(impl->epoll_fd.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::InternalError(absl::StrCat("admin server: epoll_ctl: ", std::strerror(errno)));
    }
  }
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl), port));
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl, uint16_t port)
    : impl_(std::move(impl)), port_(port) {}

AdminServer::~AdminServer() {
  if (impl_ == nullptr) {
    return;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(impl_->stop_fd.get(), &one, sizeof(one));
  impl_->thread.join();  // no handler runs after this
}

}  // namespace meshtls::admin

#include "common/admin/admin_server.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/fd.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/net/event_loop.h"
#include "common/net/socket.h"

namespace meshtls::admin {

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
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
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

namespace {

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

}  // namespace

// Impl is the server: a net::EventLoop of its own, run by one thread, over the listening socket
// and at most max_connections client connections, all non-blocking. Everything below runs on
// that thread (the destructor's Stop() is the loop's own thread-safe call); the routes' handlers
// are called there too.
//
// Resource bounds (AdminLimits), against slowloris and its relatives:
//   - a request head must arrive whole within request_timeout of its first byte (or of the
//     accept), and be at most max_request_head bytes: trickling bytes does not extend it;
//   - a keep-alive connection waiting for its next request is closed after idle_timeout;
//   - a response must be taken by the client within write_timeout, and it counts as taken
//     only once the kernel has sent all of it (net::SetNotSentLowWater and net::UnsentBytes),
//     not when send() accepted it: a client that does not read keeps its response unsent;
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
  // Connection is one client's socket and HTTP state. Owned by `connections` while open; once
  // closed (fd invalid) it is handed to the loop's Defer, so an event for it later in the same
  // batch finds a closed object instead of freed memory.
  struct Connection final : net::EventHandler {
    Connection(Impl& server, uint64_t id, base::UniqueFd fd, std::string source)
        : server(server), id(id), fd(std::move(fd)), source(std::move(source)) {}
    void OnEvents(uint32_t ready) override {
      if (fd.valid()) {
        server.OnEvents(*this, ready);
      }
    }

    Impl& server;
    const uint64_t id;
    base::UniqueFd fd;
    const std::string source;  // the peer's IP address (net::PeerAddress::AddressBytes)
    std::string in;            // bytes of the request head(s) received so far
    std::string out;           // the part of the response not yet handed to the kernel
    size_t out_sent = 0;
    bool close_after_write = false;
    bool writing = false;   // a response is untaken: being written or not yet sent by the kernel
    bool answered = false;  // at least one response was taken
    bool pending = false;   // an asynchronous route has the request and has not replied yet
    // unsent_observable: the low-water mark is set, so EPOLLOUT means "all sent" and the
    // kernel's unsent bytes can be waited for without spinning.
    bool unsent_observable = false;
    // waiting_since: when the current wait began; reading: since the previous response was
    // taken (or the accept); writing: since the response began. Eviction takes the oldest.
    net::MonoTime waiting_since;
    net::EventLoop::TimerId deadline = 0;  // the loop's timer that closes this connection
    uint32_t events = 0;                   // the epoll interest; 0 until added to the loop
  };

  // Listener accepts on the listening socket's events.
  struct Listener final : net::EventHandler {
    explicit Listener(Impl& server) : server(server) {}
    void OnEvents(uint32_t) override { server.Accept(); }
    Impl& server;
  };

  Impl(const AdminLimits& limits, std::unique_ptr<net::EventLoop> event_loop)
      : max_connections(std::max<size_t>(limits.max_connections, 1)),
        max_connections_per_address(
            std::clamp<size_t>(limits.max_connections_per_address, 1, max_connections)),
        max_request_head(limits.max_request_head),
        request_timeout(absl::ToChronoNanoseconds(limits.request_timeout)),
        idle_timeout(absl::ToChronoNanoseconds(limits.idle_timeout)),
        write_timeout(absl::ToChronoNanoseconds(limits.write_timeout)),
        loop(std::move(event_loop)) {
    RegisterOwnMetrics();
  }

  const size_t max_connections;
  const size_t max_connections_per_address;
  const size_t max_request_head;
  const net::MonoDuration request_timeout;
  const net::MonoDuration idle_timeout;
  const net::MonoDuration write_timeout;

  std::vector<AdminRoute> routes;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables;
  std::shared_ptr<prometheus::Registry> own_metrics = std::make_shared<prometheus::Registry>();
  prometheus::Counter* rejected[static_cast<int>(Rejection::kCount)] = {};
  std::unique_ptr<net::EventLoop> loop;  // run by `thread`
  base::UniqueFd listen_fd;
  Listener listener{*this};
  std::map<uint64_t, std::unique_ptr<Connection>> connections;  // open ones, by id
  uint64_t next_connection_id = 1;
  std::thread thread;

  // ReplyGate lets a Reply reach the loop from any thread until the server stops: the
  // destructor clears `server` under `mu` once the loop has stopped, and a Reply posts to the
  // loop only while holding `mu` with `server` set.
  struct ReplyGate {
    std::mutex mu;
    Impl* server = nullptr;
  };
  std::shared_ptr<ReplyGate> reply_gate = std::make_shared<ReplyGate>();

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

  const AdminRoute* FindRoute(const std::string& path) const {
    for (const AdminRoute& route : routes) {
      if (route.path == path) {
        return &route;
      }
    }
    return nullptr;
  }

  // StartAsync hands the request to an asynchronous route; the connection waits, reading
  // nothing, until Answer (or a deadline, or the client's close).
  void StartAsync(Connection& c, const AdminRoute& route, bool head, bool keep_alive) {
    c.pending = true;
    c.waiting_since = net::EventLoop::Now();
    SetDeadline(c, route.async_timeout > absl::ZeroDuration()
                       ? absl::ToChronoNanoseconds(route.async_timeout)
                       : write_timeout);
    SetInterest(c, EPOLLRDHUP);
    if (!c.fd.valid()) {
      return;
    }
    route.async_handler([gate = reply_gate, id = c.id, head, keep_alive](HttpResponse r) {
      std::lock_guard<std::mutex> lock(gate->mu);
      if (Impl* server = gate->server) {
        server->loop->Post([server, id, head, keep_alive, r = std::move(r)] {
          server->Answer(id, r, head, keep_alive);
        });
      }
    });
  }

  void Answer(uint64_t id, const HttpResponse& r, bool head, bool keep_alive) {
    auto it = connections.find(id);
    if (it == connections.end() || !it->second->pending) {
      return;  // closed meanwhile (timeout, eviction, the client's close)
    }
    Connection& c = *it->second;
    c.pending = false;
    Respond(c, r, head, !keep_alive || r.status >= 400);
  }

  // SetDeadline closes `c` when `after` has passed, unless set again first.
  void SetDeadline(Connection& c, net::MonoDuration after) {
    loop->CancelTimer(c.deadline);
    c.deadline = loop->AddTimer(after, [this, &c] { OnDeadline(c); });
  }

  void OnDeadline(Connection& c) {
    // A keep-alive connection that went quiet after its answers is no attack; a connection
    // that never asked, or stopped mid-request or mid-response, is.
    if (c.writing || !c.in.empty() || !c.answered) {
      Count(Rejection::kTimeout);
    }
    Close(c);
  }

  void Accept() {
    for (int i = 0; i < 16; ++i) {
      net::PeerAddress peer;
      base::UniqueFd fd = net::AcceptTcp(listen_fd.get(), peer);
      if (!fd.valid()) {
        return;  // EAGAIN, or out of descriptors: the backlog waits for the next wake-up
      }
      std::string source = peer.AddressBytes();
      MakeRoomFor(source);
      const uint64_t id = next_connection_id++;
      Connection& c = *connections
                           .emplace(id, std::make_unique<Connection>(*this, id, std::move(fd),
                                                                     std::move(source)))
                           .first->second;
      // With a low-water mark of one byte, send() stops and EPOLLOUT stays off while anything
      // is unsent: Write() can wait for a response to be sent whole without spinning.
      c.unsent_observable = net::SetNotSentLowWater(c.fd.get(), 1);
      c.waiting_since = net::EventLoop::Now();
      SetDeadline(c, request_timeout);  // a new connection is expected to ask at once
      SetInterest(c, EPOLLIN);
    }
  }

  // MakeRoomFor evicts a connection if one more from `source` would exceed that address's
  // share or the cap (see the class comment). The share keeps one client address (an
  // attacker's pod) from pushing out the others (the kubelet's node address, Prometheus).
  void MakeRoomFor(const std::string& source) {
    size_t from_source = 0;
    for (const auto& [id, c] : connections) {
      from_source += c->source == source ? 1 : 0;
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
    Connection* oldest = nullptr;
    for (const auto& [id, c] : connections) {
      if (only_source != nullptr && c->source != *only_source) {
        continue;
      }
      if (oldest == nullptr || c->waiting_since < oldest->waiting_since) {
        oldest = c.get();
      }
    }
    if (oldest != nullptr) {
      Count(Rejection::kEvicted);
      Close(*oldest);
    }
  }

  void SetInterest(Connection& c, uint32_t events) {
    if (c.events == events) {
      return;
    }
    const absl::Status s =
        c.events == 0 ? loop->Add(c.fd.get(), events, &c) : loop->Modify(c.fd.get(), events, &c);
    if (!s.ok()) {
      base::LogWarning("admin server: connection dropped", {{"error", s.ToString()}});
      Close(c);
      return;
    }
    c.events = events;
  }

  // Close closes the socket now and deletes `c` after the loop's current batch of events.
  void Close(Connection& c) {
    loop->Remove(c.fd.get());
    loop->CancelTimer(c.deadline);
    c.fd.reset();
    auto node = connections.extract(c.id);
    loop->Defer([closed = std::move(node.mapped())] {});
  }

  void OnEvents(Connection& c, uint32_t events) {
    if (c.pending) {
      Close(c);  // the client closed or reset while its answer was being made
      return;
    }
    if (c.writing) {
      if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
        Close(c);  // reset, or closed both ways: nobody will take the rest of the response
      } else if ((events & EPOLLOUT) != 0) {
        Write(c);
      }
      return;  // no request is read while a response is untaken
    }
    char buffer[4096];
    const ssize_t n = ::recv(c.fd.get(), buffer, sizeof(buffer), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      Close(c);  // the client went away (a half-closed client gets no answer: it asked for none)
      return;
    }
    if (n < 0) {
      return;
    }
    if (c.in.empty()) {
      SetDeadline(c, request_timeout);  // the head's clock starts at its first byte
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
    HttpResponse response;
    if (request.path == "/metrics") {
      response = Metrics();
    } else if (const AdminRoute* route = FindRoute(request.path); route == nullptr) {
      response = HttpResponse{.status = 404, .body = "not found\n"};
    } else if (route->async_handler) {
      StartAsync(c, *route, request.method == "HEAD", request.keep_alive);
      return;
    } else {
      response = route->handler();
    }
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
    c.waiting_since = net::EventLoop::Now();
    SetDeadline(c, write_timeout);
    Write(c);
  }

  void Write(Connection& c) {
    while (c.out_sent < c.out.size()) {
      const ssize_t n =
          ::send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        SetInterest(c, EPOLLOUT);
        return;
      }
      Close(c);
      return;
    }
    if (!c.out.empty()) {
      c.out.clear();  // all handed to the kernel: the memory goes back at once
      c.out.shrink_to_fit();
    }
    if (c.close_after_write) {
      // Let the client read the answer before the close: a close with unread request bytes
      // would send a reset that can destroy the response in flight.
      ::shutdown(c.fd.get(), SHUT_WR);
      Close(c);
      return;
    }
    if (c.unsent_observable && net::UnsentBytes(c.fd.get()) > 0) {
      SetInterest(c, EPOLLOUT);  // taken when the kernel has sent it all (see Accept)
      return;
    }
    c.writing = false;
    c.answered = true;
    c.waiting_since = net::EventLoop::Now();
    SetDeadline(c, c.in.empty() ? idle_timeout : request_timeout);
    SetInterest(c, EPOLLIN);
    if (c.fd.valid() && !c.in.empty()) {
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
  absl::StatusOr<net::SocketAddress> address = net::ToSocketAddress(*hp);
  if (!address.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("admin listen address \"", listen, "\": ", address.status().message()));
  }
  // A wildcard IPv6 address ("[::]") serves IPv4 clients too (a kubelet probing the pod's
  // IPv4 address); MakeRoomFor counts them by their IPv4 address.
  absl::StatusOr<base::UniqueFd> listen_fd =
      net::ListenTcp(*address, {.backlog = kListenBacklog, .ipv6_only = false});
  if (!listen_fd.ok()) {
    return absl::Status(listen_fd.status().code(),
                        absl::StrCat("admin endpoint: ", listen_fd.status().message()));
  }
  absl::StatusOr<std::unique_ptr<net::EventLoop>> loop = net::EventLoop::Create();
  if (!loop.ok()) {
    return absl::Status(loop.status().code(),
                        absl::StrCat("admin server: ", loop.status().message()));
  }
  auto impl = std::make_unique<Impl>(limits, *std::move(loop));
  impl->routes = std::move(routes);
  impl->collectables = std::move(collectables);
  impl->collectables.push_back(impl->own_metrics);
  impl->listen_fd = *std::move(listen_fd);
  const uint16_t port = net::LocalPort(impl->listen_fd.get());
  MESHTLS_RETURN_IF_ERROR(impl->loop->Add(impl->listen_fd.get(), EPOLLIN, &impl->listener));
  net::EventLoop* raw = impl->loop.get();
  impl->reply_gate->server = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl), port));
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl, uint16_t port)
    : impl_(std::move(impl)), port_(port) {}

AdminServer::~AdminServer() {
  if (impl_ == nullptr) {
    return;
  }
  impl_->loop->Stop();
  impl_->thread.join();  // no handler runs after this; the connections close with impl_
  std::lock_guard<std::mutex> lock(impl_->reply_gate->mu);
  impl_->reply_gate->server = nullptr;  // later Replies do nothing
}

}  // namespace meshtls::admin

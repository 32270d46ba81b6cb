#include "certmgr/admin/admin_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "certmgr/base/fd.h"
#include "certmgr/base/host_port.h"

namespace meshtls::admin {

struct AdminServer::Impl {
  // Target is civetweb's callback data for one route (route == nullptr: /metrics).
  struct Target {
    const Impl* impl;
    const AdminRoute* route;
  };
  std::vector<AdminRoute> routes;
  std::vector<Target> targets;  // sized once before the server starts; never reallocated
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables;
  mg_context* ctx = nullptr;

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
};

namespace {

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

void Send(mg_connection* conn, const HttpResponse& r, bool head) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n",
            r.status, ReasonPhrase(r.status), r.content_type.c_str(), r.body.size());
  if (!head) {
    mg_write(conn, r.body.data(), r.body.size());
  }
}

int Dispatch(mg_connection* conn, void* cbdata) {
  const mg_request_info* info = mg_get_request_info(conn);
  const bool head = std::strcmp(info->request_method, "HEAD") == 0;
  if (!head && std::strcmp(info->request_method, "GET") != 0) {
    Send(conn, {.status = 405, .body = "only GET and HEAD\n"}, false);
    return 405;
  }
  auto* target = static_cast<AdminServer::Impl::Target*>(cbdata);
  HttpResponse r = target->route == nullptr ? target->impl->Metrics() : target->route->handler();
  Send(conn, r, head);
  return r.status;
}

int NotFound(mg_connection* conn, void*) {
  Send(conn, {.status = 404, .body = "not found\n"}, false);
  return 404;
}

int QuietLog(const mg_connection*, const char*) { return 1; }  // civetweb's own log is noise

std::once_flag g_civetweb_init;

}  // namespace

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(
    const std::string& listen, std::vector<AdminRoute> routes,
    std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(listen, /*allow_port_zero=*/true);
  if (!hp.ok()) {
    return hp.status();
  }
  if (!hp->host_is_ip) {
    return absl::InvalidArgumentError(
        absl::StrCat("admin listen address \"", listen, "\" must be an IP address"));
  }
  std::call_once(g_civetweb_init, [] { mg_init_library(0); });
  auto impl = std::make_unique<Impl>();
  impl->routes = std::move(routes);
  impl->collectables = std::move(collectables);

  const std::string ports = hp->ToString();
  const char* options[] = {"listening_ports",
                           ports.c_str(),
                           "num_threads",
                           "2",
                           "request_timeout_ms",
                           "10000",
                           "enable_keep_alive",
                           "no",
                           "max_request_size",
                           "16384",
                           nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = QuietLog;
  mg_context* ctx = mg_start(&callbacks, nullptr, options);
  if (ctx == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", ports, " for the admin endpoint (in use?)"));
  }
  impl->ctx = ctx;
  impl->targets.reserve(impl->routes.size() + 1);
  impl->targets.push_back({impl.get(), nullptr});
  mg_set_request_handler(ctx, "/metrics$", Dispatch, &impl->targets.back());
  for (const AdminRoute& route : impl->routes) {
    impl->targets.push_back({impl.get(), &route});
    mg_set_request_handler(ctx, absl::StrCat(route.path, "$").c_str(), Dispatch,
                           &impl->targets.back());
  }
  mg_set_request_handler(ctx, "/", NotFound, nullptr);

  mg_server_port server_ports[4];
  int n = mg_get_server_ports(ctx, 4, server_ports);
  uint16_t port = n > 0 ? static_cast<uint16_t>(server_ports[0].port) : hp->port;
  auto server = std::unique_ptr<AdminServer>(new AdminServer(std::move(impl), port));
  server->listen_is_ipv6_ = hp->is_ipv6;
  return server;
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl, uint16_t port)
    : impl_(std::move(impl)), port_(port) {}

AdminServer::~AdminServer() {
  if (impl_ == nullptr || impl_->ctx == nullptr) {
    return;
  }
  // mg_stop joins civetweb's threads (no handler runs after it returns), but its listener
  // thread only notices the stop flag when its poll() returns, which by itself takes up to
  // 2 s. A connection to our own port wakes it at once.
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    mg_stop(impl_->ctx);
    stopped.store(true);
  });
  const bool v6 = listen_is_ipv6_;
  for (int i = 0; i < 200 && !stopped.load(); ++i) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (v6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      a->sin6_family = AF_INET6;
      a->sin6_port = htons(port_);
      a->sin6_addr = in6addr_loopback;
      len = sizeof(*a);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      a->sin_family = AF_INET;
      a->sin_port = htons(port_);
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof(*a);
    }
    base::UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
    fd.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stopper.join();
}

}  // namespace meshtls::admin

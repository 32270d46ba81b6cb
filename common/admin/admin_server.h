#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace prometheus {
class Collectable;
}

namespace meshtls::admin {

// ReasonPhrase is the reason phrase of an HTTP status code ("Not Found"); "Error" for codes the
// servers here do not send.
const char* ReasonPhrase(int status);

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Reply answers one request of an asynchronous route. Call it once, from any thread; after the
// server stopped, or once the client went away, it does nothing.
using Reply = std::function<void(HttpResponse)>;

struct AdminRoute {
  std::string path = {};  // exact path, e.g. "/readyz"
  std::function<HttpResponse()> handler = {};
  // Instead of `handler`, for an answer that takes time (probing the app): called on the
  // server's thread, it must return at once and answer later through the Reply. Meanwhile the
  // connection reads nothing more, and it is closed if the Reply has not come within the
  // write timeout or the client closes.
  std::function<void(Reply)> async_handler = {};
  // With async_handler: how long the connection waits for the Reply (zero: the write timeout).
  absl::Duration async_timeout = absl::ZeroDuration();
};

// AdminLimits bound what each client may hold (see AdminServer). The defaults are what both
// binaries use; tests shorten the timeouts.
struct AdminLimits {
  size_t max_connections = 64;
  // One client address's share of max_connections: past it, that address's own oldest
  // connection is evicted, never another client's.
  size_t max_connections_per_address = 32;
  size_t max_request_head = 8 * 1024;                 // request line and headers
  absl::Duration request_timeout = absl::Seconds(5);  // a whole head, from its first byte
  absl::Duration idle_timeout = absl::Seconds(30);    // keep-alive, between requests
  absl::Duration write_timeout = absl::Seconds(10);   // a whole response
};

// AdminServer is the small HTTP/1.1 listener both binaries expose: /metrics (Prometheus text
// format, gathered from the given collectables at scrape time, plus the server's own
// meshtls_admin_rejected_total) and the routes the caller adds (/healthz, /readyz, ...). GET and
// HEAD only, keep-alive, no request bodies. One thread, running a net::EventLoop of the server's
// own, serves every connection without blocking, with a deadline on each request head and
// response and a cap on connections (see the .cc), so slow or hostile clients cannot starve a
// scraper or a kubelet probe. Handlers run on that thread, so they must be thread-safe and
// quick. Listens on an IPv4 or IPv6 address; "[::]" takes IPv4 clients too. Stops on
// destruction: the thread is joined and every client connection closed.
class AdminServer {
 public:
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(
      const std::string& listen, std::vector<AdminRoute> routes,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
      const AdminLimits& limits = AdminLimits{});
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // port is the bound port (useful when listening on port 0).
  uint16_t port() const { return port_; }

  struct Impl;  // the server; defined in the .cc

 private:
  explicit AdminServer(std::unique_ptr<Impl> impl, uint16_t port);
  std::unique_ptr<Impl> impl_;
  uint16_t port_;
};

}  // namespace meshtls::admin

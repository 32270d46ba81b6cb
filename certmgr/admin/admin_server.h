#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Collectable;
}

namespace meshtls::admin {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

struct AdminRoute {
  std::string path;  // exact path, e.g. "/readyz"
  std::function<HttpResponse()> handler;
};

// AdminServer is the small HTTP listener both binaries expose: /metrics (Prometheus text format,
// gathered from the given collectables at scrape time) plus the routes the caller adds
// (/healthz, /readyz, ...). GET and HEAD only; requests time out after 10 s so a slow client
// cannot hold a thread. Handlers run on the server's own threads (2), so they must be
// thread-safe. Stops on destruction.
class AdminServer {
 public:
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(
      const std::string& listen, std::vector<AdminRoute> routes,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // port is the bound port (useful when listening on port 0).
  uint16_t port() const { return port_; }

  struct Impl;  // opaque; public only so the .cc's civetweb callbacks can name it

 private:
  explicit AdminServer(std::unique_ptr<Impl> impl, uint16_t port);
  std::unique_ptr<Impl> impl_;
  uint16_t port_;
  bool listen_is_ipv6_ = false;
};

}  // namespace meshtls::admin

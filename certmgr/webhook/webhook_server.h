#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/admin/admin_server.h"

namespace meshtls::webhook {

struct WebhookOptions {
  std::string listen;  // IP:port; port 0 picks one (port())
  size_t max_request_bytes = 2 << 20;
  // One request, from the accept (or its first byte on a kept-alive connection) to its last:
  // the TLS handshake, the head and the body.
  absl::Duration request_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Seconds(30);  // a kept-alive connection between requests
  int max_connections = 64;
  // One client address's share of max_connections: a pod holding connections open cannot take
  // the API server's.
  int max_connections_per_address = 8;
};

// Why the server closed a connection or refused a request without asking the handler (the
// reason label of meshtls_certmgr_webhook_rejected_total).
enum class Rejection { kTls, kTimeout, kMalformed, kTooLarge, kOverCapacity };
absl::string_view RejectionName(Rejection r);

// WebhookServer is the admission webhook's HTTPS listener: HTTP/1.1 with keep-alive, POST with a
// Content-Length body (no chunked bodies: the API server sends lengths), over TLS 1.2+ with a
// serving certificate the caller sets (and replaces on CA rotation without a restart). Each
// connection runs on a thread of its own (at most max_connections; past that a new one is
// closed at once), with the deadlines of WebhookOptions, so a slow or hostile client holds one
// thread for at most request_timeout per request. The handler gets the path and the body of each
// POST and runs on the connection's thread. Stops on destruction: every connection thread is
// woken, closed and joined.
class WebhookServer {
 public:
  using Handler =
      std::function<admin::HttpResponse(absl::string_view path, absl::string_view body)>;
  using OnRejected = std::function<void(Rejection)>;

  static absl::StatusOr<std::unique_ptr<WebhookServer>> Start(const WebhookOptions& options,
                                                              const std::string& key_pem,
                                                              const std::string& chain_pem,
                                                              Handler handler,
                                                              OnRejected on_rejected);
  ~WebhookServer();
  WebhookServer(const WebhookServer&) = delete;
  WebhookServer& operator=(const WebhookServer&) = delete;

  // SetCredentials replaces the serving key and chain for new connections. Any thread.
  absl::Status SetCredentials(const std::string& key_pem, const std::string& chain_pem);

  uint16_t port() const;

  struct Impl;  // defined in the .cc

 private:
  explicit WebhookServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshtls::webhook

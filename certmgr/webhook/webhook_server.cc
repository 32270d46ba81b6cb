#include "certmgr/webhook/webhook_server.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/fd.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/base/thread_set.h"
#include "common/net/socket.h"

namespace meshtls::webhook {
namespace {

constexpr size_t kMaxHead = 16 * 1024;

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) {
    return "unknown OpenSSL error";
  }
  char text[256];
  ERR_error_string_n(e, text, sizeof(text));
  return text;
}

absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeContext(const std::string& key_pem,
                                                     const std::string& chain_pem) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) {
    return absl::InternalError(absl::StrCat("webhook TLS: ", OpenSslError()));
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // ECDHE with AEAD only for TLS 1.2 (TLS 1.3's suites are all of that kind).
  SSL_CTX_set_cipher_list(ctx.get(),
                          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                          "ECDHE-ECDSA-CHACHA20-POLY1305");
  std::unique_ptr<BIO, BioFree> chain(
      BIO_new_mem_buf(chain_pem.data(), static_cast<int>(chain_pem.size())));
  X509* leaf = PEM_read_bio_X509(chain.get(), nullptr, nullptr, nullptr);
  if (leaf == nullptr || SSL_CTX_use_certificate(ctx.get(), leaf) != 1) {
    X509_free(leaf);
    return absl::InvalidArgumentError(absl::StrCat("webhook TLS certificate: ", OpenSslError()));
  }
  X509_free(leaf);
  while (X509* issuer = PEM_read_bio_X509(chain.get(), nullptr, nullptr, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx.get(), issuer) != 1) {
      X509_free(issuer);
      return absl::InvalidArgumentError(absl::StrCat("webhook TLS chain: ", OpenSslError()));
    }
  }
  ERR_clear_error();  // the end of the PEM list
  std::unique_ptr<BIO, BioFree> key(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(key.get(), nullptr, nullptr, nullptr);
  if (pkey == nullptr || SSL_CTX_use_PrivateKey(ctx.get(), pkey) != 1 ||
      SSL_CTX_check_private_key(ctx.get()) != 1) {
    EVP_PKEY_free(pkey);
    return absl::InvalidArgumentError(absl::StrCat("webhook TLS key: ", OpenSslError()));
  }
  EVP_PKEY_free(pkey);
  return std::shared_ptr<SSL_CTX>(ctx.release(), SslCtxFree());
}

}  // namespace

absl::string_view RejectionName(Rejection r) {
  switch (r) {
    case Rejection::kTls:
      return "tls";
    case Rejection::kTimeout:
      return "timeout";
    case Rejection::kMalformed:
      return "malformed";
    case Rejection::kTooLarge:
      return "too_large";
    case Rejection::kOverCapacity:
      return "over_capacity";
  }
  return "?";
}

// Impl: the listening socket, the accept thread, and one thread per connection (ThreadSet).
// `stop_fd` is an eventfd that becomes readable once, at the stop, and every wait polls it, so
// the destructor wakes every thread at once.
struct WebhookServer::Impl {
  WebhookOptions options;
  Handler handler;
  OnRejected on_rejected;
  base::UniqueFd listen_fd;
  base::UniqueFd stop_fd;
  uint16_t port = 0;
  std::mutex ctx_mu;
  std::shared_ptr<SSL_CTX> ctx;  // guarded by ctx_mu; each connection keeps its own reference
  std::unique_ptr<base::ThreadSet> connections;
  std::mutex per_address_mu;
  std::map<std::string, int> per_address;  // open connections by client address; per_address_mu

  void Release(const std::string& source) {
    std::lock_guard<std::mutex> lock(per_address_mu);
    if (--per_address[source] <= 0) {
      per_address.erase(source);
    }
  }
  std::thread accept_thread;

  std::shared_ptr<SSL_CTX> Context() {
    std::lock_guard<std::mutex> lock(ctx_mu);
    return ctx;
  }

  void Reject(Rejection r) {
    if (on_rejected) {
      on_rejected(r);
    }
  }

  // Wait polls `fd` for `events` until `deadline`; false on the deadline or the stop.
  bool Wait(int fd, short events, absl::Time deadline) {
    while (true) {
      const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left_ms <= 0) {
        return false;
      }
      pollfd p[2] = {{.fd = fd, .events = events, .revents = 0},
                     {.fd = stop_fd.get(), .events = POLLIN, .revents = 0}};
      const int n = ::poll(p, 2, static_cast<int>(std::min<int64_t>(left_ms, 1 << 30)));
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0 || p[1].revents != 0) {
        return false;
      }
      return true;  // ready, or an error the next I/O call reports
    }
  }

  void AcceptLoop() {
    while (true) {
      pollfd p[2] = {{.fd = listen_fd.get(), .events = POLLIN, .revents = 0},
                     {.fd = stop_fd.get(), .events = POLLIN, .revents = 0}};
      if (::poll(p, 2, -1) < 0 && errno != EINTR) {
        return;
      }
      if (p[1].revents != 0) {
        return;
      }
      net::PeerAddress peer;
      base::UniqueFd fd = net::AcceptTcp(listen_fd.get(), peer);
      if (!fd.valid()) {
        if (errno == EMFILE || errno == ENFILE) {
          // Out of descriptors: wait for a connection to end instead of spinning.
          Wait(stop_fd.get(), POLLIN, absl::Now() + absl::Milliseconds(100));
        }
        continue;
      }
      std::string source = peer.AddressBytes();
      {
        std::lock_guard<std::mutex> lock(per_address_mu);
        int& held = per_address[source];
        if (held >= options.max_connections_per_address) {
          Reject(Rejection::kOverCapacity);
          continue;  // fd closes here
        }
        ++held;
      }
      auto shared_fd = std::make_shared<base::UniqueFd>(std::move(fd));
      if (!connections->TryRun([this, shared_fd, source] {
            Serve(std::move(*shared_fd));
            Release(source);
          })) {
        Release(source);
        Reject(Rejection::kOverCapacity);  // closed as shared_fd goes
      }
    }
  }

  // Result of one SSL read or write: bytes, 0 at the peer's close, -1 on a deadline, the stop or
  // an error.
  int SslIo(SSL* ssl, int fd, absl::Time deadline, const std::function<int()>& op) {
    while (true) {
      ERR_clear_error();
      const int r = op();
      if (r > 0) {
        return r;
      }
      const int e = SSL_get_error(ssl, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (!Wait(fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          return -1;
        }
        continue;
      }
      return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
  }

  bool WriteAll(SSL* ssl, int fd, absl::string_view data, absl::Time deadline) {
    size_t sent = 0;
    while (sent < data.size()) {
      const int n = SslIo(ssl, fd, deadline, [&] {
        return SSL_write(ssl, data.data() + sent, static_cast<int>(data.size() - sent));
      });
      if (n <= 0) {
        return false;
      }
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  bool Respond(SSL* ssl, int fd, const admin::HttpResponse& r, bool close, absl::Time deadline) {
    const std::string out =
        absl::StrCat("HTTP/1.1 ", r.status, " ", admin::ReasonPhrase(r.status),
                     "\r\nContent-Type: ", r.content_type, "\r\nContent-Length: ", r.body.size(),
                     close ? "\r\nConnection: close" : "", "\r\n\r\n", r.body);
    return WriteAll(ssl, fd, out, deadline);
  }

  // Refuse answers a request the server will not read to its end, then closes. The client may
  // still be sending (a body over the limit): what it sends is read and dropped until it stops
  // or the deadline, so the close sends no reset that would destroy the answer in flight.
  void Refuse(SSL* ssl, int fd, const admin::HttpResponse& r, absl::Time deadline) {
    if (!Respond(ssl, fd, r, /*close=*/true, deadline)) {
      return;
    }
    SslIo(ssl, fd, deadline, [&] { return SSL_shutdown(ssl); });
    ::shutdown(fd, SHUT_WR);
    char buffer[16384];
    while (SslIo(ssl, fd, deadline, [&] { return SSL_read(ssl, buffer, sizeof(buffer)); }) > 0) {
    }
  }

  // Serve runs one connection: the handshake, then requests until the client closes, a deadline
  // passes, an error, or the stop.
  void Serve(base::UniqueFd fd) {
    std::shared_ptr<SSL_CTX> context = Context();
    std::unique_ptr<SSL, SslFree> ssl(SSL_new(context.get()));
    if (ssl == nullptr || SSL_set_fd(ssl.get(), fd.get()) != 1) {
      return;
    }
    absl::Time deadline = absl::Now() + options.request_timeout;
    if (SslIo(ssl.get(), fd.get(), deadline, [&] { return SSL_accept(ssl.get()); }) <= 0) {
      Reject(absl::Now() >= deadline ? Rejection::kTimeout : Rejection::kTls);
      return;
    }
    std::string in;  // bytes received and not yet consumed
    bool first = true;
    while (true) {
      // The next request: its first byte within the idle timeout (the handshake's deadline for
      // the first one), then the whole of it within request_timeout.
      if (!first) {
        deadline = absl::Now() + options.idle_timeout;
      }
      bool started = !in.empty();
      size_t head_end;
      while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
        if (in.size() > kMaxHead) {
          Reject(Rejection::kTooLarge);
          Refuse(ssl.get(), fd.get(), {.status = 431, .body = "request head too large\n"},
                 deadline);
          return;
        }
        char buffer[16384];
        const int n = SslIo(ssl.get(), fd.get(), deadline,
                            [&] { return SSL_read(ssl.get(), buffer, sizeof(buffer)); });
        if (n <= 0) {
          if (n < 0 && (started || first) && absl::Now() >= deadline) {
            Reject(Rejection::kTimeout);
          }
          return;
        }
        if (!started) {
          started = true;
          if (!first) {
            deadline = absl::Now() + options.request_timeout;
          }
        }
        in.append(buffer, static_cast<size_t>(n));
      }
      first = false;
      // Request line and headers.
      std::vector<absl::string_view> lines =
          absl::StrSplit(absl::string_view(in).substr(0, head_end), "\r\n");
      std::vector<absl::string_view> parts = absl::StrSplit(lines[0], ' ');
      if (parts.size() != 3 || !absl::StartsWith(parts[1], "/") ||
          !absl::StartsWith(parts[2], "HTTP/1.")) {
        Reject(Rejection::kMalformed);
        Refuse(ssl.get(), fd.get(), {.status = 400, .body = "malformed request line\n"}, deadline);
        return;
      }
      const std::string method(parts[0]);
      const std::string path(parts[1].substr(0, parts[1].find('?')));
      bool close = parts[2] == "HTTP/1.0";
      std::optional<uint64_t> length;
      for (size_t i = 1; i < lines.size(); ++i) {
        const size_t colon = lines[i].find(':');
        if (colon == absl::string_view::npos || colon == 0) {
          Reject(Rejection::kMalformed);
          Refuse(ssl.get(), fd.get(), {.status = 400, .body = "malformed header line\n"}, deadline);
          return;
        }
        const absl::string_view name = lines[i].substr(0, colon);
        const absl::string_view value = absl::StripAsciiWhitespace(lines[i].substr(colon + 1));
        if (absl::EqualsIgnoreCase(name, "Content-Length")) {
          uint64_t n = 0;
          if (length.has_value() || !absl::SimpleAtoi(value, &n)) {
            Reject(Rejection::kMalformed);
            Refuse(ssl.get(), fd.get(), {.status = 400, .body = "bad Content-Length\n"}, deadline);
            return;
          }
          length = n;
        } else if (absl::EqualsIgnoreCase(name, "Transfer-Encoding")) {
          Reject(Rejection::kMalformed);
          Refuse(ssl.get(), fd.get(),
                 {.status = 411, .body = "send the body with a Content-Length\n"}, deadline);
          return;
        } else if (absl::EqualsIgnoreCase(name, "Connection") &&
                   absl::StrContains(absl::AsciiStrToLower(value), "close")) {
          close = true;
        }
      }
      in.erase(0, head_end + 4);
      if (method != "POST") {
        // No body to skip: anything but POST is answered and the connection closed.
        Refuse(ssl.get(), fd.get(), {.status = 405, .body = "POST an AdmissionReview\n"}, deadline);
        return;
      }
      if (!length.has_value()) {
        Reject(Rejection::kMalformed);
        Refuse(ssl.get(), fd.get(), {.status = 411, .body = "Content-Length required\n"}, deadline);
        return;
      }
      if (*length > options.max_request_bytes) {
        Reject(Rejection::kTooLarge);
        Refuse(ssl.get(), fd.get(),
               {.status = 413,
                .body = absl::StrCat("request body over ", options.max_request_bytes, " bytes\n")},
               deadline);
        return;
      }
      while (in.size() < *length) {
        char buffer[65536];
        const int n = SslIo(ssl.get(), fd.get(), deadline,
                            [&] { return SSL_read(ssl.get(), buffer, sizeof(buffer)); });
        if (n <= 0) {
          if (n < 0 && absl::Now() >= deadline) {
            Reject(Rejection::kTimeout);
          }
          return;
        }
        in.append(buffer, static_cast<size_t>(n));
      }
      const std::string body = in.substr(0, *length);
      in.erase(0, *length);
      admin::HttpResponse response = handler(path, body);
      close = close || response.status >= 400;
      if (!Respond(ssl.get(), fd.get(), response, close, deadline) || close) {
        if (close) {
          SslIo(ssl.get(), fd.get(), deadline, [&] { return SSL_shutdown(ssl.get()); });
        }
        return;
      }
    }
  }
};

absl::StatusOr<std::unique_ptr<WebhookServer>> WebhookServer::Start(const WebhookOptions& options,
                                                                    const std::string& key_pem,
                                                                    const std::string& chain_pem,
                                                                    Handler handler,
                                                                    OnRejected on_rejected) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->handler = std::move(handler);
  impl->on_rejected = std::move(on_rejected);
  MESHTLS_ASSIGN_OR_RETURN(impl->ctx, MakeContext(key_pem, chain_pem));
  MESHTLS_ASSIGN_OR_RETURN(base::HostPort hp,
                           base::ParseHostPort(options.listen, /*allow_port_zero=*/true));
  MESHTLS_ASSIGN_OR_RETURN(net::SocketAddress address, net::ToSocketAddress(hp));
  absl::StatusOr<base::UniqueFd> listen_fd = net::ListenTcp(address, {.backlog = 128});
  if (!listen_fd.ok()) {
    return absl::Status(
        listen_fd.status().code(),
        absl::StrCat("webhook listen ", options.listen, ": ", listen_fd.status().message()));
  }
  impl->listen_fd = *std::move(listen_fd);
  impl->port = net::LocalPort(impl->listen_fd.get());
  impl->stop_fd = base::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->stop_fd.valid()) {
    return absl::InternalError("webhook: eventfd failed");
  }
  impl->connections =
      std::make_unique<base::ThreadSet>(static_cast<size_t>(options.max_connections));
  Impl* raw = impl.get();
  impl->accept_thread = std::thread([raw] { raw->AcceptLoop(); });
  return std::unique_ptr<WebhookServer>(new WebhookServer(std::move(impl)));
}

WebhookServer::WebhookServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WebhookServer::~WebhookServer() {
  const uint64_t one = 1;
  if (::write(impl_->stop_fd.get(), &one, sizeof(one)) != sizeof(one)) {
    base::LogWarning("webhook: cannot signal the stop");
  }
  impl_->accept_thread.join();
  impl_->connections.reset();  // joins every connection thread, each woken by stop_fd
}

absl::Status WebhookServer::SetCredentials(const std::string& key_pem,
                                           const std::string& chain_pem) {
  MESHTLS_ASSIGN_OR_RETURN(std::shared_ptr<SSL_CTX> ctx, MakeContext(key_pem, chain_pem));
  std::lock_guard<std::mutex> lock(impl_->ctx_mu);
  impl_->ctx = std::move(ctx);
  return absl::OkStatus();
}

uint16_t WebhookServer::port() const { return impl_->port; }

}  // namespace meshtls::webhook

#include "tests/testing/tls_peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/pki/certificate.h"
#include "common/pki/key.h"
#include "common/pki/openssl_error.h"
#include "tests/testing/harness.h"

namespace meshtls::testing {
namespace {

void SetTimeouts(int fd, absl::Duration timeout) {
  timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

absl::Status UseIdentity(SSL_CTX* ctx, const TlsIdentity& identity) {
  if (identity.chain_pem.empty()) {
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<pki::Certificate>> chain = pki::ParsePemChain(identity.chain_pem);
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::FromPem(identity.key_pem);
  if (!chain.ok() || !key.ok()) {
    return absl::InvalidArgumentError("bad test identity");
  }
  if (SSL_CTX_use_certificate(ctx, (*chain)[0].get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx, key->get()) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "test identity");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsClient>> TlsClient::Connect(
    uint16_t port, const TlsIdentity& identity, const std::string& roots_pem, int max_version,
    absl::Duration timeout, SSL_SESSION* resume, const std::string& tls13_ciphersuites) {
  auto client = std::unique_ptr<TlsClient>(new TlsClient());
  client->ctx_.reset(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_max_proto_version(client->ctx_.get(), max_version);
  SSL_CTX_set_min_proto_version(client->ctx_.get(), TLS1_2_VERSION);
  if (!tls13_ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(client->ctx_.get(), tls13_ciphersuites.c_str()) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInvalidArgument, "test client ciphersuites");
  }
  if (absl::Status s = UseIdentity(client->ctx_.get(), identity); !s.ok()) {
    return s;
  }
  if (!roots_pem.empty()) {
    X509_STORE* store = SSL_CTX_get_cert_store(client->ctx_.get());
    absl::StatusOr<std::vector<pki::Certificate>> roots = pki::ParsePemChain(roots_pem);
    if (!roots.ok()) {
      return roots.status();
    }
    for (const pki::Certificate& r : *roots) {
      X509_STORE_add_cert(store, r.get());
    }
    SSL_CTX_set_verify(client->ctx_.get(), SSL_VERIFY_PEER, nullptr);
  }
  absl::StatusOr<base::UniqueFd> fd = TcpConnect(port, timeout);
  if (!fd.ok()) {
    return fd.status();
  }
  client->fd_ = *std::move(fd);
  SetTimeouts(client->fd_.get(), timeout);
  client->ssl_.reset(SSL_new(client->ctx_.get()));
  SSL_set_fd(client->ssl_.get(), client->fd_.get());
  if (resume != nullptr) {
    SSL_set_session(client->ssl_.get(), resume);
  }
  ERR_clear_error();
  if (SSL_connect(client->ssl_.get()) != 1) {
    return pki::OpenSslError(absl::StatusCode::kUnavailable, "TLS handshake");
  }
  return client;
}

absl::Status TlsClient::Write(absl::string_view data) {
  ERR_clear_error();
  if (SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size())) <= 0) {
    return pki::OpenSslError(absl::StatusCode::kUnavailable, "SSL_write");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> TlsClient::Read(size_t max, absl::Duration timeout) {
  SetTimeouts(fd_.get(), timeout);
  std::string buf(max, '\0');
  ERR_clear_error();
  int n = SSL_read(ssl_.get(), buf.data(), static_cast<int>(max));
  if (n <= 0) {
    int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_ZERO_RETURN) {
      return absl::OutOfRangeError("close_notify");
    }
    return pki::OpenSslError(absl::StatusCode::kUnavailable, absl::StrCat("SSL_read error ", err));
  }
  buf.resize(static_cast<size_t>(n));
  return buf;
}

namespace {

// RecordAlert keeps the description of a fatal alert the peer sent (info callback).
void RecordAlert(const SSL* ssl, int where, int ret) {
  if ((where & SSL_CB_READ_ALERT) == SSL_CB_READ_ALERT && (ret >> 8) == SSL3_AL_FATAL) {
    static_cast<WriteFirstOutcome*>(SSL_get_app_data(ssl))->alert = ret & 0xff;
  }
}

// WaitFd polls `fd` for `events` until `deadline`; false when it passed.
bool WaitFd(int fd, short events, absl::Time deadline) {
  while (absl::Now() < deadline) {
    pollfd p{fd, events, 0};
    const int wait_ms = static_cast<int>(
        std::clamp<int64_t>(absl::ToInt64Milliseconds(deadline - absl::Now()), 1, 100));
    if (::poll(&p, 1, wait_ms) > 0) {
      return true;
    }
  }
  return false;
}

// SslFailure describes why an SSL call failed: OpenSSL's reason, or the socket's.
std::string SslFailure(const char* what, int ssl_error) {
  std::string out = absl::StrCat(what, ": SSL error ", ssl_error);
  if (ssl_error == SSL_ERROR_SYSCALL) {
    absl::StrAppend(&out, errno != 0 ? absl::StrCat(" (", std::strerror(errno), ")") : " (EOF)");
  }
  while (unsigned long code = ERR_get_error()) {
    const char* reason = ERR_reason_error_string(code);
    absl::StrAppend(&out, "; ", reason != nullptr ? reason : "?");
  }
  return out;
}

}  // namespace

WriteFirstOutcome WriteFirstThenRead(uint16_t port, const TlsIdentity& identity, size_t bytes,
                                     absl::Duration timeout) {
  // OpenSSL writes with write(): a reset connection must be an EPIPE here, not a signal that
  // ends the test binary.
  std::signal(SIGPIPE, SIG_IGN);
  WriteFirstOutcome out;
  const absl::Time deadline = absl::Now() + timeout;
  sidecar::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  if (absl::Status s = UseIdentity(ctx.get(), identity); !s.ok()) {
    out.error = std::string(s.message());
    return out;
  }
  absl::StatusOr<base::UniqueFd> fd = TcpConnect(port, timeout);
  if (!fd.ok()) {
    out.error = std::string(fd.status().message());
    return out;
  }
  const int small = 4096;  // the kernel's minimum, about 4.5 KiB
  ::setsockopt(fd->get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  ::fcntl(fd->get(), F_SETFL, ::fcntl(fd->get(), F_GETFL) | O_NONBLOCK);
  sidecar::SslPtr ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd->get());
  SSL_set_app_data(ssl.get(), &out);
  SSL_set_info_callback(ssl.get(), RecordAlert);
  SSL_set_mode(ssl.get(), SSL_MODE_ENABLE_PARTIAL_WRITE);
  // At most one wait per call below, each bounded by `deadline`.
  while (true) {
    ERR_clear_error();
    const int rc = SSL_connect(ssl.get());
    if (rc == 1) {
      out.handshake_done = true;
      break;
    }
    const int err = SSL_get_error(ssl.get(), rc);
    if ((err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) ||
        !WaitFd(fd->get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
      out.error = SslFailure("handshake", err);
      return out;
    }
  }
  const std::string chunk(16384, 'w');
  while (out.written < bytes) {
    ERR_clear_error();
    errno = 0;
    const int n = SSL_write(ssl.get(), chunk.data(),
                            static_cast<int>(std::min(chunk.size(), bytes - out.written)));
    if (n > 0) {
      out.written += static_cast<size_t>(n);
      continue;
    }
    const int err = SSL_get_error(ssl.get(), n);
    if (err == SSL_ERROR_WANT_WRITE && WaitFd(fd->get(), POLLOUT, deadline)) {
      continue;
    }
    if (err == SSL_ERROR_WANT_READ && WaitFd(fd->get(), POLLIN, deadline)) {
      continue;
    }
    out.error = SslFailure("write", err) + "; ";
    break;
  }
  char buffer[16384];
  while (true) {
    ERR_clear_error();
    errno = 0;
    const int n = SSL_read(ssl.get(), buffer, sizeof(buffer));
    if (n > 0) {
      continue;  // not expected from a refusing server; the alert or the close follows
    }
    const int err = SSL_get_error(ssl.get(), n);
    if (err == SSL_ERROR_WANT_READ && WaitFd(fd->get(), POLLIN, deadline)) {
      continue;
    }
    absl::StrAppend(&out.error, SslFailure("read", err));
    return out;
  }
}

TlsServer::TlsServer(const TlsIdentity& identity, int max_version,
                     const std::string& tls13_ciphersuites)
    : ctx_(SSL_CTX_new(TLS_server_method())), listen_fd_(ListenLoopback(&port_, 16)) {
  (void)UseIdentity(ctx_.get(), identity);
  SSL_CTX_set_max_proto_version(ctx_.get(), max_version);
  if (!tls13_ciphersuites.empty()) {
    (void)SSL_CTX_set_ciphersuites(ctx_.get(), tls13_ciphersuites.c_str());
  }
  SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER,
                     [](int, X509_STORE_CTX*) { return 1; });  // request, accept anything
  thread_ = std::thread([this] { Run(); });
}

TlsServer::~TlsServer() {
  stop_.store(true);
  thread_.join();
}

void TlsServer::Run() {
  while (!stop_.load()) {
    pollfd p{listen_fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) {
      continue;
    }
    base::UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) {
      continue;
    }
    accepted_.fetch_add(1);
    SetTimeouts(fd.get(), absl::Seconds(2));
    sidecar::SslPtr ssl(SSL_new(ctx_.get()));
    SSL_set_fd(ssl.get(), fd.get());
    ERR_clear_error();
    if (SSL_accept(ssl.get()) != 1) {
      ERR_clear_error();
      continue;
    }
    handshakes_.fetch_add(1);
    char buf[16384];
    while (!stop_.load()) {
      int n = SSL_read(ssl.get(), buf, sizeof(buf));
      if (n <= 0) {
        int err = SSL_get_error(ssl.get(), n);
        if (err == SSL_ERROR_WANT_READ || (err == SSL_ERROR_SYSCALL && errno == EAGAIN)) {
          continue;  // read timeout: check stop_ and keep reading
        }
        break;
      }
      bytes_.fetch_add(static_cast<uint64_t>(n));
    }
    ERR_clear_error();
  }
}

}  // namespace meshtls::testing

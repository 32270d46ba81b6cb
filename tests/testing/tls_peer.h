#pragma once

// Plain OpenSSL TLS peers for tests: a client that presents any certificate (or none) to an
// inbound listener, and a server that plays the upstream of an outbound listener.

#include <openssl/ssl.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/base/fd.h"
#include "sidecar/tls/ssl_ptr.h"
#include "tests/testing/test_ca.h"

namespace meshtls::testing {

struct TlsIdentity {
  std::string chain_pem;  // empty: present no certificate
  std::string key_pem;
};

// AsIdentity presents a certificate TestCa issued.
inline TlsIdentity AsIdentity(const IssuedLeaf& leaf) { return {leaf.ChainPem(), leaf.KeyPem()}; }

// TlsClient is a blocking TLS client with timeouts. Not thread-safe.
class TlsClient {
 public:
  // Connect connects to 127.0.0.1:port and completes a handshake. With an empty `roots_pem`
  // the server certificate is not verified (the tests aim at the server's checks).
  // With `resume`, that session (ticket) is offered. A non-empty `tls13_ciphersuites` replaces
  // OpenSSL's default TLS 1.3 suites (to offer only what the server does not take).
  static absl::StatusOr<std::unique_ptr<TlsClient>> Connect(
      uint16_t port, const TlsIdentity& identity, const std::string& roots_pem,
      int max_version = TLS1_3_VERSION, absl::Duration timeout = absl::Seconds(5),
      SSL_SESSION* resume = nullptr, const std::string& tls13_ciphersuites = "");
  absl::Status Write(absl::string_view data);
  // Read returns up to `max` bytes; an error when the peer aborted (alert, reset) or on EOF.
  absl::StatusOr<std::string> Read(size_t max, absl::Duration timeout = absl::Seconds(5));
  // PeerCertificate is the server's leaf (owned by the connection).
  X509* PeerCertificate() const { return SSL_get0_peer_certificate(ssl_.get()); }
  // Resumed: the handshake resumed the offered session.
  bool Resumed() const { return SSL_session_reused(ssl_.get()) == 1; }
  // Session returns a copy of the current session; in TLS 1.3 it carries a ticket only after a
  // read has processed the server's NewSessionTicket. A copy, so that it stays resumable after
  // this client is gone: OpenSSL marks a connection's own session non-resumable when the
  // connection ends without close_notify (the outbound sidecar caches copies for the same
  // reason).
  sidecar::SslSessionPtr Session() const {
    SSL_SESSION* current = SSL_get0_session(ssl_.get());
    return sidecar::SslSessionPtr(current == nullptr ? nullptr : SSL_SESSION_dup(current));
  }

 private:
  TlsClient() = default;
  sidecar::SslCtxPtr ctx_;
  base::UniqueFd fd_;
  sidecar::SslPtr ssl_;
};

// WriteFirstOutcome is what a TLS 1.3 client that writes before it reads learned.
struct WriteFirstOutcome {
  bool handshake_done = false;  // the client's side of the handshake completed
  size_t written = 0;           // application bytes the connection took
  int alert = -1;               // description of the fatal alert received (SSL_AD_*), or -1
  std::string error;            // what ended the write, if it did not finish, and the read
};

// WriteFirstThenRead plays a client that sends its first request right behind its Finished, as
// real TLS 1.3 clients do (Certificate, Finished and application data in one flight): it
// connects to 127.0.0.1:port presenting `identity`, and as soon as its side of the handshake is
// complete writes `bytes` of application data, then reads until the connection fails or
// `timeout` passes. Its socket's send buffer is kept small, so a write larger than the kernel's
// loopback buffers finishes only if the server reads it: a server that closes with it unread
// resets the connection under the writer.
WriteFirstOutcome WriteFirstThenRead(uint16_t port, const TlsIdentity& identity, size_t bytes,
                                     absl::Duration timeout = absl::Seconds(10));

// TlsServer accepts TLS connections on 127.0.0.1 in a thread, presenting `identity` and
// requesting (not verifying) a client certificate, then reads until the peer closes. It counts
// completed handshakes and application bytes received. `max_version` and a non-empty
// `tls13_ciphersuites` narrow what it accepts, to play an upstream the sidecar cannot agree with.
class TlsServer {
 public:
  explicit TlsServer(const TlsIdentity& identity, int max_version = TLS1_3_VERSION,
                     const std::string& tls13_ciphersuites = "");
  ~TlsServer();
  uint16_t port() const { return port_; }
  int handshakes() const { return handshakes_.load(); }
  int accepted() const { return accepted_.load(); }
  uint64_t bytes_received() const { return bytes_.load(); }

 private:
  void Run();
  sidecar::SslCtxPtr ctx_;
  uint16_t port_ = 0;  // declared first: ListenLoopback fills it while listen_fd_ is built
  base::UniqueFd listen_fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> handshakes_{0};
  std::atomic<uint64_t> bytes_{0};
  std::thread thread_;
};

}  // namespace meshtls::testing

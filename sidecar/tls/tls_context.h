#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/pki/chain_verifier.h"
#include "common/pki/credential_bundle.h"
#include "sidecar/tls/peer_authorizer.h"
#include "sidecar/tls/server_session_store.h"
#include "sidecar/tls/ssl_ptr.h"

namespace meshtls::sidecar {

// The pooled transport's ALPN ids, in wire format: `meshtls-h2` (any meshtls inbound port takes
// it), then `h2` (the pooled port 15008, and independent HTTP/2 servers). A pooled client offers
// both; a server selects the first alone outside the pooled port (SelectAlpn).
inline constexpr unsigned char kPooledAlpn[] = {10,  'm', 'e', 's', 'h', 't', 'l',
                                                's', '-', 'h', '2', 2,   'h', '2'};
inline constexpr unsigned int kMeshtlsH2AlpnLength = 11;  // `meshtls-h2` alone
// SelectedPooledAlpn: the handshake of `ssl` selected one of kPooledAlpn's ids.
bool SelectedPooledAlpn(const SSL* ssl);

struct TlsSettings {
  bool allow_tls12 = false;  // TLS 1.2 with ECDHE + AEAD only, when configured
  // TLS 1.3 session resumption: the server issues one ticket per handshake, the client offers
  // the newest cached one; either side remembers the peer identity each session was verified
  // with.
  bool session_resumption = false;
  // How long a session may be resumed (never past the peer certificate's expiry).
  absl::Duration session_lifetime = absl::Hours(1);
};

// TlsContext is one immutable generation of the sidecar's TLS configuration: a server SSL_CTX
// (inbound: client certificate required) and a client SSL_CTX (outbound), both presenting the
// workload certificate, and the chain verifier for the trust bundle. Peers are verified by a
// custom callback that runs pki::ChainVerifier (X509_STRICT + X.509-SVID rules) and then the
// connection's PeerAuthorizer, so an unauthorized peer fails inside the handshake.
//
// Never mutated after Create(); shared by all workers; each connection holds a shared_ptr to
// the generation it started with, so a rotation never disturbs a live connection.
//
// Session resumption (when on): the server keeps the sessions it issued tickets for in this
// generation's ServerSessionStore, so a ticket never outlives the generation that issued it: a
// renewed certificate or a changed trust bundle (a removed root included) ends every earlier
// ticket. Each session remembers the peer's verified SPIFFE ID; on resumption that ID must
// still pass the listener's policy and the peer certificate must still be valid, or the server
// falls back to a full handshake, which verifies the certificate again.
class TlsContext {
 public:
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(
      const pki::CredentialBundle& bundle, const std::string& trust_domain,
      const TlsSettings& settings, uint64_t generation);

  SSL_CTX* server_ctx() const { return server_.get(); }
  SSL_CTX* client_ctx() const { return client_.get(); }
  const pki::ChainVerifier& verifier() const { return *verifier_; }
  // Unique to this context's verifier among all made in the process (an address may be reused
  // after a context is freed; this is not), for caches keyed by what verified a chain.
  uint64_t verifier_serial() const { return verifier_serial_; }
  const pki::SpiffeId& identity() const { return identity_; }
  const pki::CredentialBundle& bundle() const { return bundle_; }
  absl::Time not_after() const { return bundle_.chain[0].not_after(); }
  uint64_t generation() const { return generation_; }

  // The inbound side's resumable sessions. Internally synchronized: workers add and take
  // sessions through a const context.
  ServerSessionStore& server_sessions() const { return server_sessions_; }

  // NewSsl makes an SSL for one connection; `check` (owned by the connection, which must
  // outlive the SSL) receives the verification outcome.
  absl::StatusOr<SslPtr> NewSsl(bool server, int fd, PeerCheck* check) const;
  // BindPeerCheck points an SSL's callbacks at another PeerCheck (a connection handed over to
  // a new owner, which keeps the check from then on).
  static void BindPeerCheck(SSL* ssl, PeerCheck* check);

 private:
  TlsContext(pki::CredentialBundle bundle, pki::SpiffeId identity, const TlsSettings& settings,
             uint64_t generation)
      : bundle_(std::move(bundle)),
        identity_(std::move(identity)),
        settings_(settings),
        generation_(generation) {}

  pki::CredentialBundle bundle_;
  pki::SpiffeId identity_;
  TlsSettings settings_;
  uint64_t generation_;
  mutable ServerSessionStore server_sessions_;
  std::shared_ptr<const pki::ChainVerifier> verifier_;
  uint64_t verifier_serial_ = 0;
  SslCtxPtr server_;
  SslCtxPtr client_;
};

// TlsContextStore holds the context for new connections. Publish() runs on the rotator's
// thread; Snapshot() on workers, once per accepted or dialed connection (never per read).
// A std::mutex rather than std::atomic<std::shared_ptr>: GCC 12's atomic shared_ptr also takes
// an internal lock, but releases it with a relaxed store on load(), which ThreadSanitizer
// rightly reports; the mutex costs the same for a copy per connection and is TSan-visible.
class TlsContextStore {
 public:
  void Publish(std::shared_ptr<const TlsContext> ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    current_.swap(ctx);  // `ctx` now holds the old generation, released after the lock
  }
  std::shared_ptr<const TlsContext> Snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return current_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const TlsContext> current_;
};

}  // namespace meshtls::sidecar

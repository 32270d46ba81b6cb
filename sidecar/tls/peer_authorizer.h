#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::sidecar {

// PeerAuthorizer is one listener's allow-list (`allow` inbound, `expect` outbound): exact
// SPIFFE IDs and "<id>/*" prefixes. Immutable; thread-safe.
class PeerAuthorizer {
 public:
  static absl::StatusOr<PeerAuthorizer> Create(const std::vector<std::string>& patterns);
  // AnyVerified allows every identity the TLS context verified: a certificate of the mesh's
  // trust bundle for the trust domain (a transparent `mesh` rule without `expect`).
  static PeerAuthorizer AnyVerified() { return PeerAuthorizer({}, /*any=*/true); }
  bool Allows(const pki::SpiffeId& id) const { return any_ || pki::MatchesAny(matchers_, id); }

 private:
  PeerAuthorizer(std::vector<pki::SpiffeIdMatcher> m, bool any)
      : matchers_(std::move(m)), any_(any) {}
  std::vector<pki::SpiffeIdMatcher> matchers_;
  bool any_ = false;
};

class SessionCache;

// PeerCheck is one connection's verification record, filled in by the TLS callbacks during the
// handshake (certificate verification; on the server, the session ticket check) and read
// afterwards. Owned by the connection; touched only on its worker's thread.
struct PeerCheck {
  const PeerAuthorizer* authorizer = nullptr;  // the listener's policy
  std::optional<pki::SpiffeId> peer_id;        // verified (set even when then denied)
  std::string claimed_id;                      // the leaf's first URI SAN, verified or not
  int x509_error = 0;                          // X509_V_OK (0) unless verification failed
  std::string detail;                          // why verification or authorization failed
  bool verified = false;
  bool identity_denied = false;
  // Inbound TLS 1.3: the identity was denied, but the certificate was accepted so that the
  // handshake goes on and the refusal can be an `access_denied` alert, which OpenSSL sends
  // only from a point after the handshake (see TlsContext). The connection must send it and
  // never relay: SSL_do_handshake returning 1 does not mean the peer is allowed.
  bool deny_after_handshake = false;
  // Resumption: the identity a session was established with. Inbound, set when a ticket names
  // a stored session whose identity is still allowed here; outbound, set when a cached session
  // is offered. Used only if the handshake really resumed (SSL_session_reused).
  std::optional<pki::SpiffeId> resumed_peer_id;
  // Outbound with resumption on: where the server's new session tickets go (the worker's
  // cache for this listener).
  SessionCache* session_cache = nullptr;
  // Inbound: the connection came to the pooled port (15008), where ALPN `h2` selects the pooled
  // transport as `meshtls-h2` does everywhere.
  bool pooled_port = false;
};

}  // namespace meshtls::sidecar

#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "certmgr/pki/spiffe_id.h"

namespace meshtls::sidecar {

// PeerAuthorizer is one listener's allow-list (`allow` inbound, `expect` outbound): exact
// SPIFFE IDs and "<id>/*" prefixes. Immutable; thread-safe.
class PeerAuthorizer {
 public:
  static absl::StatusOr<PeerAuthorizer> Create(const std::vector<std::string>& patterns);
  bool Allows(const pki::SpiffeId& id) const { return pki::MatchesAny(matchers_, id); }

 private:
  explicit PeerAuthorizer(std::vector<pki::SpiffeIdMatcher> m) : matchers_(std::move(m)) {}
  std::vector<pki::SpiffeIdMatcher> matchers_;
};

// PeerCheck is one connection's verification record, filled in by the TLS verify callback
// during the handshake and read afterwards. Owned by the connection; touched only on its
// worker's thread.
struct PeerCheck {
  const PeerAuthorizer* authorizer = nullptr;  // the listener's policy
  std::optional<pki::SpiffeId> peer_id;        // verified (set even when then denied)
  std::string claimed_id;                      // the leaf's first URI SAN, verified or not
  int x509_error = 0;                          // X509_V_OK (0) unless verification failed
  std::string detail;                          // why verification or authorization failed
  bool verified = false;
  bool identity_denied = false;
};

}  // namespace meshtls::sidecar

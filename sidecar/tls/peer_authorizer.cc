#include "sidecar/tls/peer_authorizer.h"

namespace meshtls::sidecar {

absl::StatusOr<PeerAuthorizer> PeerAuthorizer::Create(const std::vector<std::string>& patterns) {
  std::vector<pki::SpiffeIdMatcher> matchers;
  for (const std::string& p : patterns) {
    absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(p);
    if (!m.ok()) {
      return m.status();
    }
    matchers.push_back(*std::move(m));
  }
  return PeerAuthorizer(std::move(matchers), /*any=*/false);
}

}  // namespace meshtls::sidecar

#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/caller_authenticator.h"
#include "common/base/clock.h"
#include "common/pki/chain_verifier.h"

namespace meshtls::certmgr {

// MeshAuthenticator is certmgr's policy for who gets which identity:
//  1. a client certificate that verifies against the current trust bundle (X.509-SVID rules,
//     clientAuth) keeps its own SPIFFE ID: renewal, allowed only while a bootstrap
//     authenticator's current policy would still issue that identity (CheckRenewal: its
//     namespace is still allowed, its join token line is still there), so taking an identity
//     out of the bootstrap policy also ends its renewals;
//  2. otherwise each bootstrap authenticator (join tokens, ...) is asked in order; an expired
//     certificate plus a good token therefore still succeeds, which is how a sidecar recovers
//     by itself after an outage;
//  3. the identity must be in certmgr's trust domain, have a path and match no entry of the
//     deny-list, else PermissionDenied.
// Thread-safe.
class MeshAuthenticator final : public CallerAuthenticator {
 public:
  MeshAuthenticator(std::string trust_domain, const TrustBundleSource& bundle,
                    std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap,
                    const base::Clock& clock)
      : trust_domain_(std::move(trust_domain)),
        bundle_(bundle),
        bootstrap_(std::move(bootstrap)),
        clock_(clock) {}

  absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) override;
  // CheckRenewal: the trust-domain and deny-list rules, then OK when a bootstrap authenticator
  // would issue `id` today; PermissionDenied otherwise.
  absl::Status CheckRenewal(const pki::SpiffeId& id) override;
  // SetDenyList applies a new deny-list (a config reload) to every later call. Any thread.
  void SetDenyList(std::vector<pki::SpiffeIdMatcher> deny);

 private:
  absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> CurrentVerifier();
  absl::Status CheckAllowed(const pki::SpiffeId& id);

  const std::string trust_domain_;
  const TrustBundleSource& bundle_;
  const std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap_;
  const base::Clock& clock_;
  absl::Mutex mu_;
  std::shared_ptr<const pki::ChainVerifier> verifier_ ABSL_GUARDED_BY(mu_);
  uint64_t verifier_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<pki::SpiffeIdMatcher> deny_ ABSL_GUARDED_BY(mu_);
};

}  // namespace meshtls::certmgr

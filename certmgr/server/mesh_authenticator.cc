#include "certmgr/server/mesh_authenticator.h"

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"

namespace meshtls::certmgr {

absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> MeshAuthenticator::CurrentVerifier() {
  std::shared_ptr<const TrustBundle> bundle = bundle_.Current();
  absl::MutexLock lock(&mu_);
  if (verifier_ == nullptr || verifier_sequence_ != bundle->sequence) {
    absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> v =
        pki::ChainVerifier::Create(trust_domain_, bundle->roots);
    if (!v.ok()) {
      return v.status();
    }
    verifier_ = *std::move(v);
    verifier_sequence_ = bundle->sequence;
  }
  return verifier_;
}

absl::Status MeshAuthenticator::CheckAllowed(const pki::SpiffeId& id) {
  if (id.trust_domain() != trust_domain_) {
    return absl::PermissionDeniedError(
        absl::StrCat(id.str(), " is not in trust domain ", trust_domain_));
  }
  if (id.path().empty()) {
    return absl::PermissionDeniedError(
        absl::StrCat(id.str(), " names a trust domain, not a workload"));
  }
  absl::MutexLock lock(&mu_);
  for (const pki::SpiffeIdMatcher& m : deny_) {
    if (m.Matches(id)) {
      return absl::PermissionDeniedError(
          absl::StrCat(id.str(), " is denied (deny-list entry ", m.pattern(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status MeshAuthenticator::CheckRenewal(const pki::SpiffeId& id) {
  MESHTLS_RETURN_IF_ERROR(CheckAllowed(id));
  std::string refusals;
  for (const auto& authenticator : bootstrap_) {
    absl::Status s = authenticator->CheckRenewal(id);
    if (s.ok()) {
      return s;
    }
    absl::StrAppend(&refusals, refusals.empty() ? "" : "; ", s.message());
  }
  return absl::PermissionDeniedError(
      absl::StrCat(id.str(), " may no longer renew: no bootstrap policy issues it today (",
                   refusals.empty() ? "no bootstrap authenticator is configured" : refusals, ")"));
}

void MeshAuthenticator::SetDenyList(std::vector<pki::SpiffeIdMatcher> deny) {
  absl::MutexLock lock(&mu_);
  deny_ = std::move(deny);
}

absl::StatusOr<pki::SpiffeId> MeshAuthenticator::Authenticate(
    const CallerCredentials& credentials) {
  absl::Status certificate_error = absl::UnauthenticatedError("no credential presented");
  if (!credentials.peer_chain.empty()) {
    absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> verifier = CurrentVerifier();
    if (!verifier.ok()) {
      return verifier.status();
    }
    absl::StatusOr<pki::SpiffeId> id =
        (*verifier)->VerifyChain(credentials.peer_chain, pki::PeerRole::kClient, clock_.Now());
    if (id.ok()) {
      if (absl::Status s = CheckRenewal(*id); !s.ok()) {
        return s;
      }
      return id;
    }
    certificate_error = absl::UnauthenticatedError(
        absl::StrCat("client certificate rejected: ", id.status().message()));
  }
  if (!credentials.bearer_token.has_value()) {
    return certificate_error;
  }
  absl::Status token_error = absl::UnauthenticatedError("the bearer token is of no known kind");
  for (const auto& authenticator : bootstrap_) {
    absl::StatusOr<pki::SpiffeId> id = authenticator->Authenticate(credentials);
    if (absl::IsNotFound(id.status())) {
      continue;  // not this authenticator's kind of token
    }
    if (id.ok()) {
      if (absl::Status s = CheckAllowed(*id); !s.ok()) {
        return s;
      }
      if (!credentials.peer_chain.empty()) {
        base::LogWarning("client certificate rejected; authenticated by bootstrap token instead",
                         {{"spiffe_id", id->str()},
                          {"certificate_error", std::string(certificate_error.message())}});
      }
      return id;
    }
    token_error = id.status();
    break;  // the authenticator that owns this kind of token has refused it
  }
  return token_error;
}

}  // namespace meshtls::certmgr

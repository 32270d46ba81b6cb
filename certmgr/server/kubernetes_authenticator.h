#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "certmgr/base/clock.h"
#include "certmgr/base/file.h"
#include "certmgr/pki/openssl_ptr.h"
#include "certmgr/server/caller_authenticator.h"

namespace meshtls::certmgr {

// ParseJwks parses a JWKS document into (kid, kty, key) entries; RSA (n, e) and EC P-256
// (x, y) keys are supported, others are skipped.
struct ParsedJwk {
  std::string kid;
  std::string kty;
  pki::EvpPkeyPtr key;
};
absl::StatusOr<std::vector<ParsedJwk>> ParseJwks(absl::string_view json);

struct KubernetesAuthOptions {
  std::string trust_domain;
  std::string issuer;                // the cluster's service-account issuer (`iss`)
  std::string audience = "meshtls";  // must appear in `aud`
  std::string jwks_file;             // the issuer's signing keys (JWKS), re-read on change
  std::vector<std::string> allowed_namespaces;  // empty: every namespace
  absl::Duration clock_skew = absl::Seconds(30);
};

// KubernetesAuthenticator accepts Kubernetes projected ServiceAccount tokens: JWTs signed RS256
// or ES256 by a key of the JWKS file, with the configured `iss` and `aud`, inside `nbf`..`exp`
// (with a small clock-skew allowance). The identity is spiffe://<td>/ns/<namespace>/sa/<name>
// from the `kubernetes.io` claim (which must agree with `sub` when both are present).
//
// Errors: NotFound for a bearer token that is not a JWT (another authenticator's), Unauthenticated
// for a bad JWT (malformed, unknown key, bad signature, expired, wrong audience or issuer),
// PermissionDenied for a namespace outside `allowed_namespaces`. Thread-safe.
class KubernetesAuthenticator final : public CallerAuthenticator {
 public:
  KubernetesAuthenticator(KubernetesAuthOptions options, const base::Clock& clock)
      : options_(std::move(options)), clock_(clock) {}
  absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) override;

 private:
  // Keys returns the JWKS keys with `kid` (all keys when kid is empty), reloading the file if
  // it changed.
  absl::StatusOr<std::vector<EVP_PKEY*>> Keys(const std::string& kid, const std::string& kty)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const KubernetesAuthOptions options_;
  const base::Clock& clock_;
  absl::Mutex mu_;
  std::multimap<std::string, ParsedJwk> keys_ ABSL_GUARDED_BY(mu_);  // by kid ("" when absent)
  base::FileVersion loaded_ ABSL_GUARDED_BY(mu_);
};

}  // namespace meshtls::certmgr

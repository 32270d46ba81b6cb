#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "certmgr/server/caller_authenticator.h"
#include "common/base/clock.h"
#include "common/base/file.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::certmgr {

// ParseJwks parses a JWKS document into (kid, kty, key) entries; RSA (n, e) keys of at least
// kMinJwksRsaBits and EC P-256 (x, y) keys are supported, others are skipped.
inline constexpr int kMinJwksRsaBits = 2048;
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
  std::vector<std::string> allowed_namespaces;  // empty: every namespace; updated live
  absl::Duration clock_skew = absl::Seconds(30);
  // exp - iat may not exceed this: a stolen token is good for at most this long. Kubernetes
  // projects tokens of 1 h by default (at most 48 h with --service-account-max-token-expiration).
  absl::Duration max_token_lifetime = absl::Hours(24);
  // Require the kubernetes.io.pod claim: only tokens the kubelet projected into a pod, which
  // the API server invalidates when that pod is deleted, bootstrap an identity.
  bool require_pod_binding = true;
};

// KubernetesAuthenticator accepts Kubernetes projected ServiceAccount tokens: JWTs signed RS256
// or ES256 by a key of the JWKS file, with the configured `iss` and `aud`, inside `nbf`..`exp`
// (with a small clock-skew allowance), with an `iat` no more than max_token_lifetime before
// `exp`, and (by default) bound to a pod. The identity is spiffe://<td>/ns/<namespace>/sa/<name>
// from the `kubernetes.io` claim (which must agree with `sub` when both are present).
// certmgr checks tokens offline against the JWKS; it makes no TokenReview call, so a token
// stays usable until its `exp` even after its pod is gone (hence the lifetime cap).
//
// Errors: NotFound for a bearer token that is not a JWT (another authenticator's), Unauthenticated
// for a bad JWT (malformed, unknown key, bad signature, expired, too long-lived, unbound, wrong
// audience or issuer), PermissionDenied for a namespace outside `allowed_namespaces`. Thread-safe.
class KubernetesAuthenticator final : public CallerAuthenticator {
 public:
  KubernetesAuthenticator(KubernetesAuthOptions options, const base::Clock& clock)
      : options_(std::move(options)),
        clock_(clock),
        allowed_namespaces_(options_.allowed_namespaces) {}
  absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) override;
  // CheckRenewal: OK for spiffe://<td>/ns/<allowed namespace>/sa/<name>, PermissionDenied for
  // another namespace, NotFound for an identity not of that shape.
  absl::Status CheckRenewal(const pki::SpiffeId& id) override;
  // SetAllowedNamespaces applies a new namespace allow-list (a config reload) to every later
  // call. Any thread.
  void SetAllowedNamespaces(std::vector<std::string> namespaces);

 private:
  absl::Status CheckNamespace(absl::string_view ns);

  // Keys returns the JWKS keys with `kid` (all keys when kid is empty), reloading the file if
  // it changed.
  absl::StatusOr<std::vector<EVP_PKEY*>> Keys(const std::string& kid, const std::string& kty)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const KubernetesAuthOptions options_;
  const base::Clock& clock_;
  absl::Mutex mu_;
  std::multimap<std::string, ParsedJwk> keys_ ABSL_GUARDED_BY(mu_);  // by kid ("" when absent)
  base::FileVersion loaded_ ABSL_GUARDED_BY(mu_);
  absl::Mutex policy_mu_;
  std::vector<std::string> allowed_namespaces_ ABSL_GUARDED_BY(policy_mu_);
};

}  // namespace meshtls::certmgr

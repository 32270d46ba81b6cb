#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "certmgr/ca/ca_material.h"
#include "certmgr/ca/issuance_policy.h"
#include "common/base/clock.h"
#include "common/pki/certificate.h"
#include "common/pki/csr.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::certmgr {

// IssuedCertificate is a signed leaf with its chain (leaf first, then intermediates).
struct IssuedCertificate {
  std::vector<pki::Certificate> chain;
  absl::Time not_after;
};

// Signer issues certificates from one CA. Immutable after construction; thread-safe (OpenSSL 3
// signs with a shared EVP_PKEY from several threads).
class Signer {
 public:
  Signer(CaMaterial ca, IssuancePolicy policy, const base::Clock& clock)
      : ca_(std::move(ca)), policy_(policy), clock_(clock) {}

  // SignWorkload issues an X.509-SVID for `id` on the CSR's key: empty subject, exactly one URI
  // SAN (critical), CA:FALSE, digitalSignature, EKU serverAuth+clientAuth, NotBefore backdated,
  // NotAfter = now + the effective TTL, never past the CA's own NotAfter.
  absl::StatusOr<IssuedCertificate> SignWorkload(const pki::VerifiedCsr& csr,
                                                 const pki::SpiffeId& id,
                                                 std::optional<absl::Duration> requested_ttl) const;

  // IssueServing issues certmgr's own TLS serving certificate (serverAuth, DNS and IP SANs).
  absl::StatusOr<IssuedCertificate> IssueServing(EVP_PKEY* key, const std::vector<std::string>& dns,
                                                 const std::vector<std::string>& ips,
                                                 absl::Duration ttl) const;

  const CaMaterial& ca() const { return ca_; }
  const IssuancePolicy& policy() const { return policy_; }

 private:
  IssuedCertificate WithChain(pki::Certificate leaf) const;

  CaMaterial ca_;
  IssuancePolicy policy_;
  const base::Clock& clock_;
};

// CurrentSigner holds the signer in use; CA rotation swaps it. Thread-safe.
class CurrentSigner {
 public:
  std::shared_ptr<const Signer> Get() const {
    absl::MutexLock lock(&mu_);
    return signer_;
  }
  void Set(std::shared_ptr<const Signer> signer) {
    absl::MutexLock lock(&mu_);
    signer_ = std::move(signer);
  }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const Signer> signer_ ABSL_GUARDED_BY(mu_);
};

// DueRotationStep returns the automatic CA rotation step due at `now`, if any: prepare once
// `prepare_at` of the active root's lifetime has passed, activate at `activate_at`, retire once
// the previous root's leaves have all expired.
std::optional<CaRotationStep> DueRotationStep(const CaMaterial& ca, absl::Time now,
                                              double prepare_at, double activate_at);

}  // namespace meshtls::certmgr

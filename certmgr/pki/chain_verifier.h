#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "certmgr/pki/certificate.h"
#include "certmgr/pki/openssl_ptr.h"
#include "certmgr/pki/spiffe_id.h"

namespace meshtls::pki {

// PeerRole is the role of the peer whose certificate is verified: a TLS client (checked by the
// inbound listener and by certmgr) or a TLS server (checked by the outbound listener).
enum class PeerRole { kClient, kServer };

// VerifyProfile selects the checks: kSvid is what the mesh uses (path + X.509-SVID leaf rules);
// kPath checks only the certification path (chain, validity, constraints, key usage, purpose),
// as generic X.509 conformance suites expect.
enum class VerifyProfile { kSvid, kPath };

// ValidityWindow is the time span in which every certificate of a verified path, leaf to trust
// anchor, is within its validity period.
struct ValidityWindow {
  absl::Time not_before = absl::InfinitePast();
  absl::Time not_after = absl::InfiniteFuture();
};

// ChainVerifier verifies X.509-SVID chains against one trust bundle. It runs OpenSSL's path
// validation with X509_V_FLAG_X509_STRICT and the TLS purpose of the role, then the X.509-SVID
// leaf rules OpenSSL 3.0 does not apply: exactly one URI SAN, a valid spiffe:// ID in the
// bundle's trust domain, CA:FALSE, no keyCertSign/cRLSign, digitalSignature, and the EKU of
// the role (clientAuth / serverAuth) present.
//
// Immutable once created; thread-safe. A trust bundle change makes a new verifier.
class ChainVerifier {
 public:
  static absl::StatusOr<std::shared_ptr<const ChainVerifier>> Create(
      std::string trust_domain, std::vector<Certificate> roots);
  // CreatePathOnly makes a verifier without a trust domain: only VerifyProfile::kPath works.
  static absl::StatusOr<std::shared_ptr<const ChainVerifier>> CreatePathOnly(
      std::vector<Certificate> roots);

  // Verify returns the leaf's SPIFFE ID, or an error: FailedPrecondition for a certificate
  // outside its validity, Unauthenticated for anything else. `*x509_error` (if given) is set
  // to the X509_V_ERR_* code that explains the failure (X509_V_OK on success). On success,
  // `*window` (if given) is the validity window of the path that was built.
  absl::StatusOr<SpiffeId> Verify(X509* leaf, STACK_OF(X509) * untrusted, PeerRole role,
                                  absl::Time now, int* x509_error = nullptr,
                                  ValidityWindow* window = nullptr) const;
  // VerifyChain is Verify for a chain held as Certificates, leaf first.
  absl::StatusOr<SpiffeId> VerifyChain(const std::vector<Certificate>& chain, PeerRole role,
                                       absl::Time now, int* x509_error = nullptr) const;

  // VerifyPath runs only the certification-path checks (VerifyProfile::kPath).
  absl::Status VerifyPath(X509* leaf, STACK_OF(X509) * untrusted, PeerRole role, absl::Time now,
                          int* x509_error = nullptr, ValidityWindow* window = nullptr) const;
  absl::Status VerifyChainPath(const std::vector<Certificate>& chain, PeerRole role, absl::Time now,
                               int* x509_error = nullptr) const;

  const std::string& trust_domain() const { return trust_domain_; }
  const std::vector<Certificate>& roots() const { return roots_; }

 private:
  static absl::StatusOr<std::shared_ptr<const ChainVerifier>> CreateWithDomain(
      std::string trust_domain, std::vector<Certificate> roots);
  ChainVerifier(std::string trust_domain, std::vector<Certificate> roots, X509StorePtr store)
      : trust_domain_(std::move(trust_domain)),
        roots_(std::move(roots)),
        store_(std::move(store)) {}

  std::string trust_domain_;
  std::vector<Certificate> roots_;
  X509StorePtr store_;
};

// CheckSvidLeaf applies the X.509-SVID leaf rules alone (no chain validation).
absl::StatusOr<SpiffeId> CheckSvidLeaf(X509* leaf, PeerRole role, absl::string_view trust_domain,
                                       int* x509_error = nullptr);

}  // namespace meshtls::pki

#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"
#include "common/pki/openssl_ptr.h"
#include "common/pki/spiffe_id.h"

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

// ChainVerifier verifies X.509-SVID chains against one trust bundle. It builds every candidate
// path from the leaf through the peer's intermediates to a bundle certificate (CandidatePaths:
// cross-signed and out-of-order chains, bounded work) and accepts the first that validates:
// OpenSSL's path validation with X509_V_FLAG_X509_STRICT against that path's anchor alone,
// then what OpenSSL 3.0 does not check: validity with RFC 5280's inclusive notAfter, extended
// key usage of the role on every certificate that has one, and the name-constraint profile of
// CheckNameConstraintsProfile. The SVID
// profile then applies the X.509-SVID leaf rules: exactly one URI SAN, a valid spiffe:// ID in
// the bundle's trust domain, CA:FALSE, no keyCertSign/cRLSign, digitalSignature, and the EKU of
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
  // Anchor is one certificate of the bundle and a store holding only it.
  struct Anchor {
    Certificate cert;
    X509StorePtr store;
    bool self_issued;  // subject == issuer
  };
  ChainVerifier(std::string trust_domain, std::vector<Certificate> roots,
                std::vector<Anchor> anchors)
      : trust_domain_(std::move(trust_domain)),
        roots_(std::move(roots)),
        anchors_(std::move(anchors)) {
    for (const Anchor& a : anchors_) {
      anchor_certs_.push_back(a.cert.get());
    }
  }
  // CheckOnePath validates one candidate path (leaf first, anchor last).
  absl::Status CheckOnePath(const std::vector<X509*>& path, PeerRole role, absl::Time now,
                            int* x509_error, int* depth) const;

  std::string trust_domain_;
  std::vector<Certificate> roots_;
  std::vector<Anchor> anchors_;
  std::vector<X509*> anchor_certs_;  // anchors_' certificates, borrowed, for CandidatePaths
};

// CheckSvidLeafShape applies the X.509-SVID leaf rules that do not depend on the SPIFFE ID or
// the role: CA:FALSE, neither keyCertSign nor cRLSign, no invalid extension.
absl::Status CheckSvidLeafShape(X509* leaf, int* x509_error = nullptr);

// CheckSvidLeaf applies the X.509-SVID leaf rules alone (no chain validation): the shape, then
// digitalSignature, the role's EKU, and exactly one URI SAN with a SPIFFE ID in `trust_domain`.
absl::StatusOr<SpiffeId> CheckSvidLeaf(X509* leaf, PeerRole role, absl::string_view trust_domain,
                                       int* x509_error = nullptr);

}  // namespace meshtls::pki

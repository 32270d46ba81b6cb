#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"
#include "common/pki/certificate_builder.h"
#include "common/pki/key.h"

namespace meshtls::testing {

// IssuedLeaf is a certificate minted by TestCa, with its key and chain (leaf first).
struct IssuedLeaf {
  std::vector<pki::Certificate> chain;
  pki::PrivateKey key;
  std::string ChainPem() const { return pki::ChainToPem(chain); }
  std::string KeyPem() const;
};

// TestCa is a root CA made at test time, so nothing in the repository ever expires. Issue()
// mints an X.509-SVID like certmgr's; IssueWith() mints anything, including the malformed
// certificates the verification tests need. Not thread-safe.
class TestCa {
 public:
  explicit TestCa(std::string trust_domain, absl::Time now = absl::Now());
  // TestCa from an existing root (for example one a certmgr created).
  TestCa(std::string trust_domain, pki::Certificate root, pki::PrivateKey root_key)
      : trust_domain_(std::move(trust_domain)),
        root_key_(std::move(root_key)),
        root_(std::move(root)) {}

  IssuedLeaf Issue(const std::string& spiffe_id, absl::Duration ttl = absl::Hours(1),
                   absl::Time now = absl::Now()) const;
  // IssueWith signs `profile` on a fresh P-256 key.
  IssuedLeaf IssueWith(const pki::CertificateProfile& profile) const;
  // SignCsr issues a leaf for the key of a DER CSR (as certmgr would, for fake CA clients); the
  // CSR must verify.
  absl::StatusOr<pki::Certificate> SignCsr(const std::string& csr_der, const std::string& spiffe_id,
                                           absl::Time not_before, absl::Time not_after) const;
  // LeafProfile is the profile Issue() uses, to modify one field at a time.
  static pki::CertificateProfile LeafProfile(const std::string& spiffe_id, absl::Time not_before,
                                             absl::Time not_after);

  const pki::Certificate& root() const { return root_; }
  const pki::PrivateKey& root_key() const { return root_key_; }
  std::string RootPem() const { return root_.ToPem(); }
  const std::string& trust_domain() const { return trust_domain_; }

 private:
  std::string trust_domain_;
  pki::PrivateKey root_key_;
  pki::Certificate root_;
};

}  // namespace meshtls::testing

#include "tests/testing/test_ca.h"

#include "common/base/check.h"
#include "common/pki/csr.h"

namespace meshtls::testing {
namespace {

template <typename T>
T ValueOrDie(absl::StatusOr<T> v) {
  MESHTLS_CHECK(v.ok(), std::string(v.status().message()).c_str());
  return *std::move(v);
}

}  // namespace

std::string IssuedLeaf::KeyPem() const { return ValueOrDie(key.ToPem()); }

TestCa::TestCa(std::string trust_domain, absl::Time now)
    : trust_domain_(std::move(trust_domain)),
      root_key_(ValueOrDie(pki::PrivateKey::GenerateEcP256())),
      root_([&] {
        pki::CertificateProfile p;
        p.organization = "meshtls tests";
        p.common_name = "test root " + trust_domain_;
        p.uri_sans = {"spiffe://" + trust_domain_};
        p.is_ca = true;
        p.key_cert_sign = true;
        p.crl_sign = true;
        p.not_before = now - absl::Hours(24);
        p.not_after = now + absl::Hours(24 * 30);
        return ValueOrDie(pki::BuildCertificate(p, root_key_.get(), nullptr, root_key_.get()));
      }()) {}

pki::CertificateProfile TestCa::LeafProfile(const std::string& spiffe_id, absl::Time not_before,
                                            absl::Time not_after) {
  pki::CertificateProfile p;
  p.uri_sans = {spiffe_id};
  p.san_critical = true;
  p.digital_signature = true;
  p.server_auth = true;
  p.client_auth = true;
  p.not_before = not_before;
  p.not_after = not_after;
  return p;
}

IssuedLeaf TestCa::Issue(const std::string& spiffe_id, absl::Duration ttl, absl::Time now) const {
  return IssueWith(LeafProfile(spiffe_id, now - absl::Minutes(2), now + ttl));
}

IssuedLeaf TestCa::IssueWith(const pki::CertificateProfile& profile) const {
  pki::PrivateKey key = ValueOrDie(pki::PrivateKey::GenerateEcP256());
  pki::Certificate cert =
      ValueOrDie(pki::BuildCertificate(profile, key.get(), &root_, root_key_.get()));
  return IssuedLeaf{.chain = {cert}, .key = key};
}

absl::StatusOr<pki::Certificate> TestCa::SignCsr(const std::string& csr_der,
                                                 const std::string& spiffe_id,
                                                 absl::Time not_before,
                                                 absl::Time not_after) const {
  absl::StatusOr<pki::VerifiedCsr> csr = pki::ParseAndVerifyCsr(csr_der);
  if (!csr.ok()) {
    return csr.status();
  }
  return pki::BuildCertificate(LeafProfile(spiffe_id, not_before, not_after), csr->public_key.get(),
                               &root_, root_key_.get());
}

}  // namespace meshtls::testing

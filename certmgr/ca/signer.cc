#include "certmgr/ca/signer.h"

#include <algorithm>

#include "common/base/status_macros.h"
#include "common/pki/certificate_builder.h"

namespace meshtls::certmgr {

IssuedCertificate Signer::WithChain(pki::Certificate leaf) const {
  IssuedCertificate out{.chain = {}, .not_after = leaf.not_after()};
  out.chain.push_back(std::move(leaf));
  if (X509_check_issued(ca_.cert.get(), ca_.cert.get()) != X509_V_OK) {
    out.chain.push_back(ca_.cert);  // an intermediate signer: send it with the leaf
  }
  for (const pki::Certificate& c : ca_.intermediates) {
    out.chain.push_back(c);
  }
  return out;
}

absl::StatusOr<IssuedCertificate> Signer::SignWorkload(
    const pki::VerifiedCsr& csr, const pki::SpiffeId& id,
    std::optional<absl::Duration> requested_ttl) const {
  const absl::Time now = clock_.Now();
  const absl::Time ca_not_after = ca_.cert.not_after();
  if (now >= ca_not_after) {
    return absl::FailedPreconditionError("the signing CA has expired");
  }
  pki::CertificateProfile profile;
  profile.uri_sans = {id.str()};
  profile.san_critical = true;  // the subject is empty
  profile.is_ca = false;
  profile.digital_signature = true;
  profile.server_auth = true;
  profile.client_auth = true;
  profile.not_before = std::max(now - policy_.backdate, ca_.cert.not_before());
  profile.not_after = std::min(now + policy_.EffectiveTtl(requested_ttl), ca_not_after);
  MESHTLS_ASSIGN_OR_RETURN(
      pki::Certificate leaf,
      pki::BuildCertificate(profile, csr.public_key.get(), &ca_.cert, ca_.key.get()));
  return WithChain(std::move(leaf));
}

absl::StatusOr<IssuedCertificate> Signer::IssueServing(EVP_PKEY* key,
                                                       const std::vector<std::string>& dns,
                                                       const std::vector<std::string>& ips,
                                                       absl::Duration ttl) const {
  const absl::Time now = clock_.Now();
  pki::CertificateProfile profile;
  profile.common_name = "meshtls-certmgr";
  profile.dns_sans = dns;
  profile.ip_sans = ips;
  profile.digital_signature = true;
  profile.server_auth = true;
  profile.not_before = std::max(now - policy_.backdate, ca_.cert.not_before());
  profile.not_after = std::min(now + ttl, ca_.cert.not_after());
  MESHTLS_ASSIGN_OR_RETURN(pki::Certificate leaf,
                           pki::BuildCertificate(profile, key, &ca_.cert, ca_.key.get()));
  return WithChain(std::move(leaf));
}

std::optional<CaRotationStep> DueRotationStep(const CaMaterial& ca, absl::Time now,
                                              double prepare_at, double activate_at) {
  if (ca.previous.has_value() && now >= ca.previous_retire_after) {
    return CaRotationStep::kRetire;
  }
  const absl::Time start = ca.cert.not_before();
  const absl::Duration life = ca.cert.not_after() - start;
  if (ca.next.has_value()) {
    if (!ca.previous.has_value() && now >= start + life * activate_at) {
      return CaRotationStep::kActivate;
    }
    return std::nullopt;
  }
  if (!ca.previous.has_value() && now >= start + life * prepare_at) {
    return CaRotationStep::kPrepare;
  }
  return std::nullopt;
}

}  // namespace meshtls::certmgr

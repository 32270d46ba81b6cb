#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"
#include "common/pki/key.h"

namespace meshtls::pki {

// CertificateProfile says what goes into a certificate. Every field is explicit so the CA's
// leaf profile, its root and the tests' unusual certificates are all built by one function.
struct CertificateProfile {
  std::string common_name;   // empty: no CN
  std::string organization;  // empty: no O
  std::vector<std::string> uri_sans;
  std::vector<std::string> dns_sans;
  std::vector<std::string> ip_sans;  // textual IPv4 or IPv6
  bool san_critical = false;         // required when the subject is empty (RFC 5280 4.2.1.6)
  bool is_ca = false;
  std::optional<int> path_length;  // CA only
  bool digital_signature = true;
  bool key_cert_sign = false;
  bool crl_sign = false;
  bool server_auth = false;
  bool client_auth = false;
  bool include_key_usage = true;
  bool include_basic_constraints = true;
  absl::Time not_before;
  absl::Time not_after;
};

// BuildCertificate signs a certificate for `subject_key` (a public key suffices) with
// `issuer_key`, SHA-256. `issuer` is null for a self-signed certificate. Adds subject and
// authority key identifiers and a random positive 128-bit serial.
absl::StatusOr<Certificate> BuildCertificate(const CertificateProfile& profile,
                                             EVP_PKEY* subject_key, const Certificate* issuer,
                                             EVP_PKEY* issuer_key);

}  // namespace meshtls::pki

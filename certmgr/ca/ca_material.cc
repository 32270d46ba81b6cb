#include "certmgr/ca/ca_material.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "certmgr/base/fd.h"
#include "certmgr/base/file.h"
#include "certmgr/base/log.h"
#include "certmgr/base/status_macros.h"
#include "certmgr/pki/certificate_builder.h"
#include "certmgr/pki/spiffe_id.h"

namespace meshtls::certmgr {
namespace {

bool IsSelfSigned(const pki::Certificate& cert) {
  return X509_check_issued(cert.get(), cert.get()) == X509_V_OK;
}

absl::StatusOr<CaMaterial> CreateRoot(absl::string_view trust_domain, absl::Duration ca_ttl,
                                      const base::Clock& clock) {
  MESHTLS_ASSIGN_OR_RETURN(pki::PrivateKey key, pki::PrivateKey::GenerateEcP256());
  const absl::Time now = clock.Now();
  pki::CertificateProfile profile;
  profile.organization = "meshtls";
  profile.common_name = absl::StrCat("meshtls root CA ", trust_domain, " ",
                                     absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone()));
  profile.uri_sans = {absl::StrCat("spiffe://", trust_domain)};
  profile.is_ca = true;
  profile.path_length = 1;
  profile.digital_signature = true;
  profile.key_cert_sign = true;
  profile.crl_sign = true;
  profile.not_before = now - absl::Hours(1);
  profile.not_after = now + ca_ttl;
  MESHTLS_ASSIGN_OR_RETURN(pki::Certificate cert,
                           pki::BuildCertificate(profile, key.get(), nullptr, key.get()));
  return CaMaterial{.cert = cert, .key = key, .intermediates = {}, .roots = {cert}};
}

}  // namespace

absl::Status CheckCaMaterial(const CaMaterial& ca, absl::string_view trust_domain, absl::Time now) {
  if (!ca.cert.MatchesKey(ca.key.get())) {
    return absl::InvalidArgumentError("the CA key does not match the CA certificate");
  }
  if (!ca.cert.IsCa() || (X509_get_key_usage(ca.cert.get()) & KU_KEY_CERT_SIGN) == 0) {
    return absl::InvalidArgumentError(
        "the CA certificate is not a CA (needs CA:TRUE and keyCertSign)");
  }
  if (now >= ca.cert.not_after()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CA certificate expired at ", absl::FormatTime(ca.cert.not_after())));
  }
  if (now < ca.cert.not_before()) {
    return absl::FailedPreconditionError(absl::StrCat("the CA certificate is not valid before ",
                                                      absl::FormatTime(ca.cert.not_before())));
  }
  if (ca.roots.empty()) {
    return absl::InvalidArgumentError("the trust bundle is empty");
  }
  for (const std::string& uri : ca.cert.UriSans()) {
    absl::StatusOr<pki::SpiffeId> id = pki::SpiffeId::Parse(uri);
    if (id.ok() && id->trust_domain() != trust_domain) {
      return absl::InvalidArgumentError(absl::StrCat("the CA certificate is for trust domain ",
                                                     id->trust_domain(), ", not ", trust_domain));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CaMaterial> LoadOrCreateCaInDir(const std::string& dir,
                                               absl::string_view trust_domain,
                                               absl::Duration ca_ttl, const base::Clock& clock) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::InternalError(
        absl::StrCat("cannot create CA directory ", dir, ": ", std::strerror(errno)));
  }
  const std::string lock_path = absl::StrCat(dir, "/.lock");
  base::UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid() || ::flock(lock.get(), LOCK_EX) != 0) {
    return absl::InternalError(absl::StrCat("cannot lock ", lock_path, ": ", std::strerror(errno)));
  }
  const std::string cert_path = absl::StrCat(dir, "/ca.pem");
  const std::string key_path = absl::StrCat(dir, "/ca.key");
  const bool have_cert = base::FileExists(cert_path);
  const bool have_key = base::FileExists(key_path);
  if (have_cert != have_key) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CA directory ", dir, " has ", have_cert ? "ca.pem but no ca.key" : "ca.key but no ca.pem",
        "; restore the missing file or empty the directory"));
  }
  if (have_cert) {
    struct stat st;
    if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      base::LogWarning("CA key file is readable by group or others; chmod 600 it",
                       {{"path", key_path}});
    }
    return LoadCaFromFiles(cert_path, key_path, "", trust_domain, clock);
  }
  MESHTLS_ASSIGN_OR_RETURN(CaMaterial ca, CreateRoot(trust_domain, ca_ttl, clock));
  MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, ca.key.ToPem());
  MESHTLS_RETURN_IF_ERROR(base::WriteFileAtomically(key_path, key_pem, 0600));
  MESHTLS_RETURN_IF_ERROR(base::WriteFileAtomically(cert_path, ca.cert.ToPem(), 0644));
  base::LogInfo("created a new root CA", {{"dir", dir},
                                          {"subject", ca.cert.SubjectText()},
                                          {"not_after", absl::FormatTime(ca.cert.not_after())},
                                          {"sha256", ca.cert.Sha256Fingerprint()}});
  return ca;
}

absl::StatusOr<CaMaterial> LoadCaFromFiles(const std::string& cert_path,
                                           const std::string& key_path,
                                           const std::string& bundle_path,
                                           absl::string_view trust_domain,
                                           const base::Clock& clock) {
  MESHTLS_ASSIGN_OR_RETURN(std::string cert_pem, base::ReadFileToString(cert_path));
  MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, base::ReadFileToString(key_path));
  absl::StatusOr<std::vector<pki::Certificate>> chain = pki::ParsePemChain(cert_pem);
  if (!chain.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(cert_path, ": ", chain.status().message()));
  }
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::FromPem(key_pem);
  if (!key.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(key_path, ": ", key.status().message()));
  }
  CaMaterial ca{.cert = (*chain)[0], .key = *key, .intermediates = {}, .roots = {}};
  for (size_t i = 1; i < chain->size(); ++i) {
    if (IsSelfSigned((*chain)[i])) {
      ca.roots.push_back((*chain)[i]);
    } else {
      ca.intermediates.push_back((*chain)[i]);
    }
  }
  if (!bundle_path.empty()) {
    MESHTLS_ASSIGN_OR_RETURN(std::string bundle_pem, base::ReadFileToString(bundle_path));
    absl::StatusOr<std::vector<pki::Certificate>> roots = pki::ParsePemChain(bundle_pem);
    if (!roots.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(bundle_path, ": ", roots.status().message()));
    }
    ca.roots = *std::move(roots);
  } else if (ca.roots.empty()) {
    if (!IsSelfSigned(ca.cert)) {
      return absl::InvalidArgumentError(
          absl::StrCat(cert_path, " holds an intermediate CA; give the root in ca.trust_bundle"));
    }
    ca.roots.push_back(ca.cert);
  }
  if (absl::Status s = CheckCaMaterial(ca, trust_domain, clock.Now()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(cert_path, ": ", s.message()));
  }
  return ca;
}

}  // namespace meshtls::certmgr

#include "certmgr/ca/ca_material.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/base/fd.h"
#include "common/base/file.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/pki/certificate_builder.h"
#include "common/pki/spiffe_id.h"

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

namespace {

// CheckCaDirNotWritableByOthers refuses a CA directory that its group or other users may
// write: they could replace ca.pem and ca.key, or plant files the CA then reads. Only write
// access that exists counts, so a directory on a read-only mount passes whatever its mode says:
// kubelet mounts a Secret volume read-only into the container, with a directory mode (often
// 1777 on its tmpfs) that grants nothing there, and the files' 0440 for the pod's fsGroup is
// about reading. Sticky (1777) does not help on a writable mount: it stops others deleting
// our files, not adding theirs (a ca.key where none is yet).
absl::Status CheckCaDirNotWritableByOthers(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot stat CA directory ", dir, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) {
    return absl::OkStatus();
  }
  struct statvfs fs;
  if (::statvfs(dir.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY) != 0) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "CA directory %s has mode %04o: group or others can write it and replace the CA's files; "
      "run chmod go-w %s",
      dir, st.st_mode & 07777, dir));
}

// LockCaDir creates the directory if needed and takes its exclusive flock (held while the
// returned fd lives), so processes sharing the directory see each change whole.
absl::StatusOr<base::UniqueFd> LockCaDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::InternalError(
        absl::StrCat("cannot create CA directory ", dir, ": ", std::strerror(errno)));
  }
  MESHTLS_RETURN_IF_ERROR(CheckCaDirNotWritableByOthers(dir));
  if (!CaDirIsWritable(dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CA directory ", dir,
        " is read-only (a Kubernetes Secret volume?): run the step on a copy with --ca-dir and "
        "update the Secret (deploy/kubernetes/README.md)"));
  }
  const std::string lock_path = absl::StrCat(dir, "/.lock");
  base::UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock.valid() || ::flock(lock.get(), LOCK_EX) != 0) {
    return absl::InternalError(absl::StrCat("cannot lock ", lock_path, ": ", std::strerror(errno)));
  }
  return lock;
}

// ReadView is where a load reads the directory's files from. A Kubernetes Secret volume
// (kubelet's atomic writer) keeps each version in its own hidden directory behind the `..data`
// symlink and swaps the link on update: reading every file through one resolution of that link
// sees a single version, never files of two. Elsewhere it is the directory itself.
std::string ReadView(const std::string& dir) {
  char resolved[PATH_MAX];
  const std::string data = absl::StrCat(dir, "/..data");
  if (::realpath(data.c_str(), resolved) != nullptr) {
    return resolved;
  }
  return dir;
}

std::string InDir(const std::string& dir, absl::string_view name) {
  return absl::StrCat(dir, "/", name);
}

absl::StatusOr<uint64_t> ReadSequence(const std::string& dir) {
  absl::StatusOr<std::string> text = base::ReadFileToString(InDir(dir, "bundle.seq"));
  if (absl::IsNotFound(text.status())) {
    return 1;
  }
  uint64_t seq = 0;
  if (!text.ok() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &seq) || seq == 0) {
    return absl::FailedPreconditionError(absl::StrCat(dir, "/bundle.seq is unreadable"));
  }
  return seq;
}

absl::Status BumpSequence(const std::string& dir, absl::Time now) {
  MESHTLS_ASSIGN_OR_RETURN(uint64_t seq, ReadSequence(dir));
  return base::WriteFileAtomically(InDir(dir, "bundle.seq"),
                                   absl::StrCat(NextBundleSequence(seq, now), "\n"), 0644);
}

absl::Status WriteKeyPair(const std::string& dir, absl::string_view name, const CaMaterial& ca) {
  MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, ca.key.ToPem());
  MESHTLS_RETURN_IF_ERROR(
      base::WriteFileAtomically(InDir(dir, absl::StrCat(name, ".key")), key_pem, 0600));
  return base::WriteFileAtomically(InDir(dir, absl::StrCat(name, ".pem")), ca.cert.ToPem(), 0644);
}

// LoadCaDirLocked reads the directory's state; the caller holds the lock, or the directory is
// read-only (then its writer is kubelet, whose swaps ReadView makes atomic for us).
absl::StatusOr<CaMaterial> LoadCaDirLocked(const std::string& real_dir,
                                           absl::string_view trust_domain,
                                           const base::Clock& clock) {
  MESHTLS_RETURN_IF_ERROR(CheckCaDirNotWritableByOthers(real_dir));
  const std::string dir = ReadView(real_dir);
  const std::string key_path = InDir(dir, "ca.key");
  struct stat st;
  // Not for a read-only directory: a Secret volume's files are group-readable for the pod's
  // fsGroup by design, and no other user of the node can read them.
  if (CaDirIsWritable(real_dir) && ::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    base::LogWarning("CA key file is readable by group or others; chmod 600 it",
                     {{"path", key_path}});
  }
  MESHTLS_ASSIGN_OR_RETURN(
      CaMaterial ca, LoadCaFromFiles(InDir(dir, "ca.pem"), key_path, "", trust_domain, clock));
  MESHTLS_ASSIGN_OR_RETURN(ca.bundle_sequence, ReadSequence(dir));
  if (base::FileExists(InDir(dir, "next.pem"))) {
    MESHTLS_ASSIGN_OR_RETURN(std::string pem, base::ReadFileToString(InDir(dir, "next.pem")));
    absl::StatusOr<pki::Certificate> next = pki::Certificate::FromPem(pem);
    if (!next.ok() || !next->IsCa()) {
      return absl::FailedPreconditionError(absl::StrCat(dir, "/next.pem is not a CA certificate"));
    }
    ca.next = *next;
    ca.roots.push_back(*next);
  }
  if (base::FileExists(InDir(dir, "previous.pem"))) {
    MESHTLS_ASSIGN_OR_RETURN(std::string pem, base::ReadFileToString(InDir(dir, "previous.pem")));
    absl::StatusOr<pki::Certificate> previous = pki::Certificate::FromPem(pem);
    if (!previous.ok() || !previous->IsCa()) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, "/previous.pem is not a CA certificate"));
    }
    absl::StatusOr<std::string> state = base::ReadFileToString(InDir(dir, "previous.state"));
    int64_t retire_after = 0;
    if (!state.ok() ||
        !absl::SimpleAtoi(absl::StripPrefix(absl::StripAsciiWhitespace(*state), "retire_after "),
                          &retire_after)) {
      return absl::FailedPreconditionError(absl::StrCat(dir, "/previous.state is unreadable"));
    }
    ca.previous = *previous;
    ca.previous_retire_after = absl::FromUnixSeconds(retire_after);
    ca.roots.push_back(*previous);
  }
  return ca;
}

}  // namespace

absl::StatusOr<CaMaterial> LoadOrCreateCaInDir(const std::string& dir,
                                               absl::string_view trust_domain,
                                               absl::Duration ca_ttl, const base::Clock& clock) {
  if (::access(dir.c_str(), F_OK) == 0 && !CaDirIsWritable(dir)) {
    if (!base::FileExists(InDir(dir, "ca.pem"))) {
      return absl::FailedPreconditionError(
          absl::StrCat("CA directory ", dir,
                       " is read-only and holds no CA (ca.pem): create the CA Secret first "
                       "(deploy/kubernetes/ca.sh init)"));
    }
    return LoadCaDirLocked(dir, trust_domain, clock);
  }
  MESHTLS_ASSIGN_OR_RETURN(base::UniqueFd lock, LockCaDir(dir));
  const bool have_cert = base::FileExists(InDir(dir, "ca.pem"));
  const bool have_key = base::FileExists(InDir(dir, "ca.key"));
  if (have_cert != have_key) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CA directory ", dir, " has ", have_cert ? "ca.pem but no ca.key" : "ca.key but no ca.pem",
        "; restore the missing file or empty the directory"));
  }
  if (!have_cert) {
    MESHTLS_ASSIGN_OR_RETURN(CaMaterial ca, CreateRoot(trust_domain, ca_ttl, clock));
    MESHTLS_RETURN_IF_ERROR(WriteKeyPair(dir, "ca", ca));
    MESHTLS_RETURN_IF_ERROR(base::WriteFileAtomically(
        InDir(dir, "bundle.seq"), absl::StrCat(NextBundleSequence(0, clock.Now()), "\n"), 0644));
    base::LogInfo("created a new root CA", {{"dir", dir},
                                            {"subject", ca.cert.SubjectText()},
                                            {"not_after", absl::FormatTime(ca.cert.not_after())},
                                            {"sha256", ca.cert.Sha256Fingerprint()}});
  }
  return LoadCaDirLocked(dir, trust_domain, clock);
}

absl::StatusOr<CaMaterial> LoadCaDir(const std::string& dir, absl::string_view trust_domain,
                                     const base::Clock& clock) {
  if (!CaDirIsWritable(dir)) {
    return LoadCaDirLocked(dir, trust_domain, clock);
  }
  MESHTLS_ASSIGN_OR_RETURN(base::UniqueFd lock, LockCaDir(dir));
  return LoadCaDirLocked(dir, trust_domain, clock);
}

uint64_t NextBundleSequence(uint64_t current, absl::Time now) {
  return std::max(current + 1,
                  static_cast<uint64_t>(std::max<int64_t>(absl::ToUnixMicros(now), 0)));
}

bool CaDirIsWritable(const std::string& dir) { return ::access(dir.c_str(), W_OK) == 0; }

absl::Status RotateCa(const std::string& dir, absl::string_view trust_domain, CaRotationStep step,
                      absl::Duration ca_ttl, absl::Duration max_leaf_lifetime, bool force,
                      const base::Clock& clock) {
  MESHTLS_ASSIGN_OR_RETURN(base::UniqueFd lock, LockCaDir(dir));
  MESHTLS_ASSIGN_OR_RETURN(CaMaterial ca, LoadCaDirLocked(dir, trust_domain, clock));
  const absl::Time now = clock.Now();
  switch (step) {
    case CaRotationStep::kPrepare: {
      if (ca.next.has_value()) {
        return absl::FailedPreconditionError("a next root is already prepared; activate it");
      }
      MESHTLS_ASSIGN_OR_RETURN(CaMaterial next, CreateRoot(trust_domain, ca_ttl, clock));
      MESHTLS_RETURN_IF_ERROR(WriteKeyPair(dir, "next", next));
      base::LogInfo("CA rotation: next root prepared (trusted, not signing yet)",
                    {{"sha256", next.cert.Sha256Fingerprint()}});
      break;
    }
    case CaRotationStep::kActivate: {
      if (!ca.next.has_value()) {
        return absl::FailedPreconditionError("no next root is prepared; run prepare first");
      }
      if (ca.previous.has_value()) {
        return absl::FailedPreconditionError(
            absl::StrCat("the previous root is still in the bundle until ",
                         absl::FormatTime(ca.previous_retire_after), "; retire it first"));
      }
      // The old signer stays trusted until every leaf it signed has expired.
      MESHTLS_RETURN_IF_ERROR(
          base::WriteFileAtomically(InDir(dir, "previous.pem"), ca.cert.ToPem(), 0644));
      MESHTLS_RETURN_IF_ERROR(base::WriteFileAtomically(
          InDir(dir, "previous.state"),
          absl::StrCat("retire_after ", absl::ToUnixSeconds(now + max_leaf_lifetime) + 1, "\n"),
          0644));
      MESHTLS_ASSIGN_OR_RETURN(std::string next_key,
                               base::ReadFileToString(InDir(dir, "next.key")));
      MESHTLS_RETURN_IF_ERROR(base::WriteFileAtomically(InDir(dir, "ca.key"), next_key, 0600));
      MESHTLS_RETURN_IF_ERROR(
          base::WriteFileAtomically(InDir(dir, "ca.pem"), ca.next->ToPem(), 0644));
      ::unlink(InDir(dir, "next.pem").c_str());
      ::unlink(InDir(dir, "next.key").c_str());
      base::LogInfo("CA rotation: next root activated as the signer",
                    {{"sha256", ca.next->Sha256Fingerprint()},
                     {"previous_retire_after", absl::FormatTime(now + max_leaf_lifetime)}});
      break;
    }
    case CaRotationStep::kRetire: {
      if (!ca.previous.has_value()) {
        return absl::FailedPreconditionError("there is no previous root to retire");
      }
      if (now < ca.previous_retire_after && !force) {
        return absl::FailedPreconditionError(absl::StrCat(
            "leaves signed by the previous root may be valid until ",
            absl::FormatTime(ca.previous_retire_after), "; retire after that (or force it)"));
      }
      ::unlink(InDir(dir, "previous.pem").c_str());
      ::unlink(InDir(dir, "previous.state").c_str());
      base::LogInfo("CA rotation: previous root retired from the bundle",
                    {{"sha256", ca.previous->Sha256Fingerprint()}});
      break;
    }
  }
  return BumpSequence(dir, clock.Now());
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

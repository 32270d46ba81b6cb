#include "sidecar/identity/files_identity_source.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/base/file.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/pki/certificate.h"
#include "common/pki/credential_bundle.h"
#include "common/pki/key.h"

namespace meshtls::sidecar {

absl::Status FilesIdentitySource::Start() {
  MESHTLS_RETURN_IF_ERROR(Reload());
  watcher_ = std::make_unique<base::FileWatcher>(
      std::vector<std::string>{options_.cert, options_.key, options_.trust_bundle},
      options_.poll_interval, [this] {
        absl::Status s = Reload();
        base::LogInfo("identity files changed",
                      {{"reload", s.ok() ? "applied" : std::string(s.message())}});
      });
  return absl::OkStatus();
}

absl::Status FilesIdentitySource::Reload() {
  absl::MutexLock reload_lock(&reload_mu_);
  absl::Status s = LoadAndPublish();
  absl::MutexLock lock(&status_mu_);
  if (s.ok()) {
    ++status_.successes;
    status_.last_success = absl::Now();
  } else {
    ++status_.failures;
  }
  return s;
}

absl::Status FilesIdentitySource::LoadAndPublish() {
  MESHTLS_ASSIGN_OR_RETURN(std::string cert_pem, base::ReadFileToString(options_.cert));
  MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, base::ReadFileToString(options_.key));
  MESHTLS_ASSIGN_OR_RETURN(std::string bundle_pem, base::ReadFileToString(options_.trust_bundle));
  absl::StatusOr<std::vector<pki::Certificate>> chain = pki::ParsePemChain(cert_pem);
  if (!chain.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("identity.files.cert: ", chain.status().message()));
  }
  absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::FromPem(key_pem);
  if (!key.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("identity.files.key: ", key.status().message()));
  }
  absl::StatusOr<std::vector<pki::Certificate>> roots = pki::ParsePemChain(bundle_pem);
  if (!roots.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("identity.files.trust_bundle: ", roots.status().message()));
  }
  // The bundle's identity is its set of roots, so the sequence moves only when trust changes.
  std::vector<std::string> root_ders;
  root_ders.reserve(roots->size());
  for (const pki::Certificate& root : *roots) {
    root_ders.push_back(root.ToDer());
  }
  std::sort(root_ders.begin(), root_ders.end());
  const bool bundle_changed = bundle_sequence_ == 0 || root_ders != published_roots_;
  const uint64_t sequence = bundle_changed ? bundle_sequence_ + 1 : bundle_sequence_;
  MESHTLS_RETURN_IF_ERROR(sink_.Publish(pki::CredentialBundle{.chain = *std::move(chain),
                                                              .key = *std::move(key),
                                                              .trust_bundle = *std::move(roots),
                                                              .bundle_sequence = sequence}));
  if (bundle_changed) {
    published_roots_ = std::move(root_ders);
    bundle_sequence_ = sequence;
  }
  return absl::OkStatus();
}

void FilesIdentitySource::Stop() { watcher_.reset(); }

IdentityStatus FilesIdentitySource::status() const {
  absl::MutexLock lock(&status_mu_);
  return status_;
}

}  // namespace meshtls::sidecar

#include "sidecar/identity/certmgr_identity_source.h"

#include "absl/strings/str_cat.h"
#include "common/base/file.h"

namespace meshtls::sidecar {

absl::StatusOr<std::unique_ptr<CertmgrIdentitySource>> CertmgrIdentitySource::Create(
    const CertmgrIdentityOptions& options, CredentialSink& sink) {
  absl::StatusOr<std::string> server_ca = base::ReadFileToString(options.server_ca);
  if (!server_ca.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("identity.certmgr.server_ca: ", server_ca.status().message()));
  }
  RotatorOptions rotator;
  rotator.renew_at = options.renew_at;
  rotator.token_file = options.token_file;
  return std::make_unique<CertmgrIdentitySource>(
      NewGrpcCaClient(options.addresses, *std::move(server_ca), options.server_ca),
      std::move(rotator), sink, base::RealClock::Get());
}

CertmgrIdentitySource::CertmgrIdentitySource(std::unique_ptr<CaClient> client,
                                             RotatorOptions rotator, CredentialSink& sink,
                                             const base::Clock& clock)
    : client_(std::move(client)),
      rotator_(WithCounting(std::move(rotator), *this), *client_, sink, clock) {}

RotatorOptions CertmgrIdentitySource::WithCounting(RotatorOptions options,
                                                   CertmgrIdentitySource& source) {
  options.on_attempt = [&source](const absl::Status& s) {
    (s.ok() ? source.successes_ : source.failures_).fetch_add(1);
  };
  return options;
}

absl::Status CertmgrIdentitySource::Start() {
  rotator_.Start();
  return absl::OkStatus();
}

void CertmgrIdentitySource::Stop() { rotator_.Stop(); }

IdentityStatus CertmgrIdentitySource::status() const {
  const RotatorStatus rotator = rotator_.status();
  return IdentityStatus{.renewal_due = rotator.next_refresh,
                        .last_success = rotator.last_success,
                        .successes = successes_.load(),
                        .failures = failures_.load(),
                        .last_error = rotator.last_error};
}

}  // namespace meshtls::sidecar

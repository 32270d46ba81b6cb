#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace meshtls::sidecar {

// IdentityStatus is a snapshot of an identity source for /certs, /readyz and the
// meshtls_cert_* metrics. The certificate itself is not here: what is being served is the
// published TLS context, which the CredentialSink owns.
struct IdentityStatus {
  // When the next renewal attempt is due (certmgr); InfinitePast when the source does not renew
  // on a schedule (files, which are followed instead).
  absl::Time renewal_due = absl::InfinitePast();
  // The last successful renewal (certmgr) or file load (files); InfinitePast before the first.
  absl::Time last_success = absl::InfinitePast();
  // Attempts to obtain credentials by outcome: renewals (certmgr) or loads of the files, the
  // first one included.
  uint64_t successes = 0;
  uint64_t failures = 0;
  // Why the last renewal failed, cleared by the next success. Files mode leaves it empty: a
  // refused reload is logged and returned to whoever asked for it (SIGHUP, Start).
  std::string last_error;
};

// IdentitySource obtains the workload's credentials (certificate chain, key, trust bundle) and
// publishes every new bundle through the CredentialSink it was given, which builds the TLS
// context from it or refuses it. Implementations: FilesIdentitySource (files written by someone
// else, followed on disk) and CertmgrIdentitySource (CSRs to certmgr, renewal, trust bundle
// watch).
//
// Thread-safety: Start, Reload and Stop run on the main thread (Reload on SIGHUP), one at a
// time; status() on any thread (the admin server's, at scrape or request time). The source calls
// the sink from its own threads, one call at a time. The sink must outlive the source.
class IdentitySource {
 public:
  virtual ~IdentitySource() = default;

  // Start begins obtaining credentials. A source that can load them at once (files) does so
  // before returning and fails if it cannot, so a misconfigured sidecar does not start; one that
  // asks a remote CA (certmgr) returns after starting its threads and reports failures through
  // status() and the logs.
  virtual absl::Status Start() = 0;
  // Reload re-reads the source's inputs now (SIGHUP). Returns why new credentials were not
  // published; OK when nothing needed re-reading (certmgr renews on its own schedule).
  virtual absl::Status Reload() = 0;
  // Stop ends the source's threads; no Publish call runs after it returns. Idempotent.
  virtual void Stop() = 0;
  virtual IdentityStatus status() const = 0;
};

}  // namespace meshtls::sidecar

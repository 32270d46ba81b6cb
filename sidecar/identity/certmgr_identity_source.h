#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/clock.h"
#include "sidecar/identity/ca_client.h"
#include "sidecar/identity/credential_sink.h"
#include "sidecar/identity/identity_source.h"
#include "sidecar/identity/rotator.h"

namespace meshtls::sidecar {

// CertmgrIdentityOptions is identity.certmgr.
struct CertmgrIdentityOptions {
  std::vector<std::string> addresses;  // certmgr replicas, tried in order (at least one)
  std::string server_ca;               // PEM file trusted for certmgr's serving certificate
  std::string token_file;              // bootstrap token, re-read on every attempt; empty: none
  double renew_at = 0.5;               // fraction of the remaining lifetime before renewing
};

// CertmgrIdentitySource obtains the workload certificate from certmgr: it owns the CA client,
// the Rotator that renews the certificate and follows the trust bundle watch stream, and the
// renewal counters. Every certificate and every trust bundle update is published to the sink
// by the Rotator's threads.
//
// Thread-safety: as IdentitySource; the counters are updated on the Rotator's renewal thread.
class CertmgrIdentitySource final : public IdentitySource {
 public:
  // Create reads options.server_ca and connects to certmgr lazily (gRPC); InvalidArgument,
  // naming identity.certmgr.server_ca, when that file cannot be read.
  static absl::StatusOr<std::unique_ptr<CertmgrIdentitySource>> Create(
      const CertmgrIdentityOptions& options, CredentialSink& sink);
  // The source over any CaClient (tests use a fake); `rotator.on_attempt` is replaced by the
  // source's counting. `clock` must outlive the source.
  CertmgrIdentitySource(std::unique_ptr<CaClient> client, RotatorOptions rotator,
                        CredentialSink& sink, const base::Clock& clock);
  ~CertmgrIdentitySource() override { Stop(); }

  // Start runs the renewal loop and the trust bundle watch; the first certificate is requested
  // at once, and a failure is retried with backoff (see Rotator).
  absl::Status Start() override;
  // Reload has nothing to re-read: certmgr is asked on the Rotator's schedule.
  absl::Status Reload() override { return absl::OkStatus(); }
  void Stop() override;
  IdentityStatus status() const override;

 private:
  static RotatorOptions WithCounting(RotatorOptions options, CertmgrIdentitySource& source);

  std::atomic<uint64_t> successes_{0};
  std::atomic<uint64_t> failures_{0};
  // Declared before the Rotator, which uses it until it is stopped and destroyed.
  const std::unique_ptr<CaClient> client_;
  Rotator rotator_;
};

}  // namespace meshtls::sidecar

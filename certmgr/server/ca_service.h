#pragma once

// The gRPC face of certmgr: translates meshtls.ca.v1 messages to and from plain types. Only
// certmgr_server.cc includes this header (it pulls in gRPC and the generated code).

#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "certmgr/ca/signer.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/caller_authenticator.h"
#include "certmgr/server/certmgr_metrics.h"
#include "common/base/clock.h"
#include "common/base/log.h"
#include "meshtls/ca/v1/ca.grpc.pb.h"

namespace meshtls::certmgr {

// WatchLimits bound the WatchTrustBundle streams certmgr holds open.
struct WatchLimits {
  int max_total = 10000;
  int max_per_address = 16;  // per caller IP address (the port is ignored)
};

// CaService implements CertificateAuthority with gRPC's callback API: Sign runs inline (an
// ECDSA signature is tens of microseconds), WatchTrustBundle streams hold no thread while idle.
// Both calls take the same credentials (a current mesh certificate or a bootstrap token). All
// referenced objects must outlive the grpc::Server. Thread-safe.
class CaService final : public meshtls::ca::v1::CertificateAuthority::CallbackService {
 public:
  CaService(const CurrentSigner& signer, TrustBundleSource& bundle,
            CallerAuthenticator& authenticator, CertmgrMetrics& metrics, const base::Clock& clock,
            WatchLimits limits)
      : signer_(signer),
        bundle_(bundle),
        authenticator_(authenticator),
        metrics_(metrics),
        clock_(clock),
        limits_(limits) {}

  grpc::ServerUnaryReactor* Sign(grpc::CallbackServerContext* context,
                                 const meshtls::ca::v1::SignRequest* request,
                                 meshtls::ca::v1::SignResponse* response) override;

  grpc::ServerWriteReactor<meshtls::ca::v1::TrustBundle>* WatchTrustBundle(
      grpc::CallbackServerContext* context,
      const meshtls::ca::v1::WatchTrustBundleRequest* request) override;

 private:
  grpc::Status DoSign(grpc::CallbackServerContext& context,
                      const meshtls::ca::v1::SignRequest& request,
                      meshtls::ca::v1::SignResponse& response, SignResult& result);

  // MayLogRefusal rate-limits the refusal log lines, which unauthenticated callers can
  // provoke at will (10 lines/s, bursts of 20); the first line after a drop says how many.
  bool MayLogRefusal();
  // ReserveWatchSlot counts a new stream from `address` against the limits; ReleaseWatchSlot
  // gives it back when the stream ends.
  std::optional<WatchRefusal> ReserveWatchSlot(const std::string& address);
  void ReleaseWatchSlot(const std::string& address);

  const CurrentSigner& signer_;
  TrustBundleSource& bundle_;
  CallerAuthenticator& authenticator_;
  CertmgrMetrics& metrics_;
  const base::Clock& clock_;
  const WatchLimits limits_;
  absl::Mutex log_mu_;
  base::LogRateLimiter refusal_log_ ABSL_GUARDED_BY(log_mu_){10, 20,
                                                             base::LogRateLimiter::Clock::now()};
  absl::Mutex watch_mu_;
  int watchers_ ABSL_GUARDED_BY(watch_mu_) = 0;
  std::map<std::string, int> watchers_by_address_ ABSL_GUARDED_BY(watch_mu_);
};

// FillTrustBundle converts a bundle to its proto.
void FillTrustBundle(const TrustBundle& bundle, meshtls::ca::v1::TrustBundle& out);

}  // namespace meshtls::certmgr

#pragma once

// The gRPC face of certmgr: translates meshtls.ca.v1 messages to and from plain types. Only
// certmgr_server.cc includes this header (it pulls in gRPC and the generated code).

#include "certmgr/base/clock.h"
#include "certmgr/ca/signer.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/caller_authenticator.h"
#include "certmgr/server/certmgr_metrics.h"
#include "meshtls/ca/v1/ca.grpc.pb.h"

namespace meshtls::certmgr {

// CaService implements CertificateAuthority with gRPC's callback API: Sign runs inline (an
// ECDSA signature is tens of microseconds), WatchTrustBundle streams hold no thread while idle.
// All referenced objects must outlive the grpc::Server. Thread-safe.
class CaService final : public meshtls::ca::v1::CertificateAuthority::CallbackService {
 public:
  CaService(const CurrentSigner& signer, TrustBundleSource& bundle,
            CallerAuthenticator& authenticator, CertmgrMetrics& metrics, const base::Clock& clock)
      : signer_(signer),
        bundle_(bundle),
        authenticator_(authenticator),
        metrics_(metrics),
        clock_(clock) {}

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

  const CurrentSigner& signer_;
  TrustBundleSource& bundle_;
  CallerAuthenticator& authenticator_;
  CertmgrMetrics& metrics_;
  const base::Clock& clock_;
};

// FillTrustBundle converts a bundle to its proto.
void FillTrustBundle(const TrustBundle& bundle, meshtls::ca::v1::TrustBundle& out);

}  // namespace meshtls::certmgr

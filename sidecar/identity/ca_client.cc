#include "sidecar/identity/ca_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/base/check.h"
#include "common/base/file.h"
#include "common/base/log.h"
#include "meshtls/ca/v1/ca.grpc.pb.h"

namespace meshtls::sidecar {
namespace {

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

absl::StatusOr<std::vector<pki::Certificate>> FromDerList(
    const google::protobuf::RepeatedPtrField<std::string>& ders, absl::string_view what) {
  std::vector<pki::Certificate> out;
  for (const std::string& der : ders) {
    absl::StatusOr<pki::Certificate> c = pki::Certificate::FromDer(der);
    if (!c.ok()) {
      return absl::InternalError(
          absl::StrCat("certmgr sent a bad ", what, ": ", c.status().message()));
    }
    out.push_back(*std::move(c));
  }
  return out;
}

// Failover is for failures that say nothing about the request: certmgr unreachable, or not
// answering in time. Any other status is certmgr's answer, the same from every replica.
bool TryAnotherReplica(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
}

class GrpcCaClient final : public CaClient {
 public:
  GrpcCaClient(std::vector<std::string> addresses, std::string server_ca_pem,
               std::string server_ca_file)
      : addresses_(std::move(addresses)),
        server_ca_file_(std::move(server_ca_file)),
        server_ca_pem_(std::move(server_ca_pem)) {
    if (!server_ca_file_.empty()) {
      server_ca_version_ = base::StatFileVersion(server_ca_file_);
    }
  }

  // Sign tries the replica that answered last first, then the others in order, each within
  // its share of `timeout` (at least 2 s, or all of it when less), so one replica that
  // black-holes connections cannot use up the time the others need.
  absl::StatusOr<SignedCredentials> Sign(const std::string& csr_der,
                                         const CallCredentials& credentials,
                                         absl::Duration timeout) override {
    const size_t n = addresses_.size();
    const absl::Duration per_address =
        std::max(timeout / static_cast<int64_t>(n), std::min(timeout, absl::Seconds(2)));
    size_t first;
    {
      absl::MutexLock lock(&mu_);
      first = preferred_;
    }
    std::string errors;
    for (size_t i = 0; i < n; ++i) {
      const size_t index = (first + i) % n;
      absl::StatusOr<SignedCredentials> result =
          SignAt(addresses_[index], csr_der, credentials, per_address);
      if (result.ok() || !TryAnotherReplica(result.status()) || n == 1) {
        if (result.ok()) {
          absl::MutexLock lock(&mu_);
          preferred_ = index;
        }
        return result;
      }
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", addresses_[index], ": ",
                      result.status().message());
    }
    return absl::UnavailableError(absl::StrCat("no certmgr replica answered (", errors, ")"));
  }

  // WatchTrustBundle streams from one replica; each time a stream ends the next call goes to
  // the next address, so a replica that went away is left for another at the reconnect.
  absl::Status WatchTrustBundle(
      const CallCredentials& credentials,
      const std::function<void(std::vector<pki::Certificate>, uint64_t)>& on_bundle) override {
    absl::StatusOr<grpc::SslCredentialsOptions> tls = TlsOptions(credentials);
    if (!tls.ok()) {
      return tls.status();
    }
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    std::string address;
    {
      absl::MutexLock lock(&mu_);
      address = addresses_[watch_next_];
      watch_next_ = (watch_next_ + 1) % addresses_.size();
    }
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(address, grpc::SslCredentials(*tls), args);
    auto stub = meshtls::ca::v1::CertificateAuthority::NewStub(channel);
    grpc::ClientContext context;
    if (credentials.bearer_token.has_value()) {
      context.AddMetadata("authorization", absl::StrCat("Bearer ", *credentials.bearer_token));
    }
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) {
        return absl::CancelledError("watch cancelled");
      }
      watch_context_ = &context;
    }
    meshtls::ca::v1::WatchTrustBundleRequest request;
    std::unique_ptr<grpc::ClientReader<meshtls::ca::v1::TrustBundle>> reader =
        stub->WatchTrustBundle(&context, request);
    meshtls::ca::v1::TrustBundle bundle;
    absl::Status result = absl::OkStatus();
    while (reader->Read(&bundle)) {
      absl::StatusOr<std::vector<pki::Certificate>> roots =
          FromDerList(bundle.roots(), "trust bundle");
      if (!roots.ok()) {
        result = roots.status();
        context.TryCancel();
        break;
      }
      on_bundle(*std::move(roots), bundle.sequence());
    }
    grpc::Status status = reader->Finish();
    {
      absl::MutexLock lock(&mu_);
      watch_context_ = nullptr;
    }
    if (!result.ok()) {
      return result;
    }
    return status.ok()
               ? absl::UnavailableError(absl::StrCat(address, " closed the trust bundle stream"))
               : FromGrpc(status, absl::StrCat("certmgr WatchTrustBundle at ", address));
  }

  void CancelWatch() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    if (watch_context_ != nullptr) {
      watch_context_->TryCancel();
    }
  }

  void SetExtraRoots(std::vector<pki::Certificate> roots) override {
    absl::MutexLock lock(&mu_);
    extra_roots_pem_ = pki::ChainToPem(roots);
  }

 private:
  absl::StatusOr<SignedCredentials> SignAt(const std::string& address, const std::string& csr_der,
                                           const CallCredentials& credentials,
                                           absl::Duration timeout) {
    absl::StatusOr<grpc::SslCredentialsOptions> tls = TlsOptions(credentials);
    if (!tls.ok()) {
      return tls.status();
    }
    // One channel per renewal: renewals are hours apart, and a fresh channel always presents
    // the current certificate.
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(1 << 20);
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(address, grpc::SslCredentials(*tls), args);
    auto stub = meshtls::ca::v1::CertificateAuthority::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    if (credentials.bearer_token.has_value()) {
      context.AddMetadata("authorization", absl::StrCat("Bearer ", *credentials.bearer_token));
    }
    meshtls::ca::v1::SignRequest request;
    request.set_csr(csr_der);
    meshtls::ca::v1::SignResponse response;
    grpc::Status status = stub->Sign(&context, request, &response);
    if (!status.ok()) {
      return FromGrpc(status, "certmgr Sign");
    }
    SignedCredentials out;
    absl::StatusOr<std::vector<pki::Certificate>> chain =
        FromDerList(response.certificate_chain(), "certificate chain");
    if (!chain.ok()) {
      return chain.status();
    }
    if (chain->empty()) {
      return absl::InternalError("certmgr sent an empty certificate chain");
    }
    absl::StatusOr<std::vector<pki::Certificate>> roots =
        FromDerList(response.trust_bundle().roots(), "trust bundle");
    if (!roots.ok()) {
      return roots.status();
    }
    out.chain = *std::move(chain);
    out.roots = *std::move(roots);
    out.bundle_sequence = response.trust_bundle().sequence();
    out.not_after = out.chain[0].not_after();
    return out;
  }

  // TlsOptions trusts certmgr's serving roots and presents the caller's certificate, if any.
  absl::StatusOr<grpc::SslCredentialsOptions> TlsOptions(const CallCredentials& credentials) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = RootsPem();
    if (credentials.key.has_value() && !credentials.chain.empty()) {
      absl::StatusOr<std::string> key_pem = credentials.key->ToPem();
      if (!key_pem.ok()) {
        return key_pem.status();
      }
      tls.pem_private_key = *key_pem;
      tls.pem_cert_chain = pki::ChainToPem(credentials.chain);
    }
    return tls;
  }

  std::string RootsPem() {
    absl::MutexLock lock(&mu_);
    RereadServerCaLocked();
    return server_ca_pem_ + extra_roots_pem_;
  }

  // RereadServerCaLocked picks up a changed server_ca file (the operator's new bootstrap CA
  // after a CA directory was recreated); an unreadable or certificate-less version is skipped
  // and the last good one kept.
  void RereadServerCaLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (server_ca_file_.empty()) {
      return;
    }
    const base::FileVersion now = base::StatFileVersion(server_ca_file_);
    if (now == server_ca_version_) {
      return;
    }
    server_ca_version_ = now;
    absl::StatusOr<std::string> pem = base::ReadFileToString(server_ca_file_, 1 << 20);
    if (!pem.ok() || !pki::ParsePemChain(*pem).ok() || pki::ParsePemChain(*pem)->empty()) {
      base::LogWarning(
          "identity.certmgr.server_ca changed but holds no certificate; keeping "
          "the previous one",
          {{"path", server_ca_file_}});
      return;
    }
    server_ca_pem_ = *std::move(pem);
    base::LogInfo("identity.certmgr.server_ca reloaded", {{"path", server_ca_file_}});
  }

  const std::vector<std::string> addresses_;  // never empty
  const std::string server_ca_file_;          // re-read when it changes ("" when given as text)
  std::string server_ca_pem_ ABSL_GUARDED_BY(mu_);
  base::FileVersion server_ca_version_ ABSL_GUARDED_BY(mu_);
  absl::Mutex mu_;
  size_t preferred_ ABSL_GUARDED_BY(mu_) = 0;   // the replica that signed last
  size_t watch_next_ ABSL_GUARDED_BY(mu_) = 0;  // where the next trust bundle stream goes
  std::string extra_roots_pem_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* watch_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

std::unique_ptr<CaClient> NewGrpcCaClient(std::vector<std::string> addresses,
                                          std::string server_ca_pem, std::string server_ca_file) {
  MESHTLS_CHECK(!addresses.empty(), "NewGrpcCaClient needs at least one address");
  return std::make_unique<GrpcCaClient>(std::move(addresses), std::move(server_ca_pem),
                                        std::move(server_ca_file));
}

}  // namespace meshtls::sidecar

#include "certmgr/server/certmgr_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "certmgr/admin/admin_server.h"
#include "certmgr/base/host_port.h"
#include "certmgr/base/log.h"
#include "certmgr/base/status_macros.h"
#include "certmgr/ca/ca_material.h"
#include "certmgr/ca/signer.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/ca_service.h"
#include "certmgr/server/certmgr_metrics.h"
#include "certmgr/server/join_tokens.h"
#include "certmgr/server/kubernetes_authenticator.h"
#include "certmgr/server/mesh_authenticator.h"

namespace meshtls::certmgr {
namespace {

class CertmgrServerImpl final : public CertmgrServer {
 public:
  CertmgrServerImpl(CaMaterial ca, const CertmgrConfig& config, const base::Clock& clock)
      : config_(config),
        clock_(clock),
        signer_(std::move(ca), config.issuance, clock),
        bundle_(config.trust_domain, signer_.ca().roots) {}

  ~CertmgrServerImpl() override { Shutdown(); }

  absl::Status Start() {
    std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap;
    if (!config_.join_tokens_file.empty()) {
      bootstrap.push_back(
          std::make_unique<JoinTokenAuthenticator>(config_.join_tokens_file, clock_));
    }
    if (config_.kubernetes.enabled) {
      bootstrap.push_back(std::make_unique<KubernetesAuthenticator>(
          KubernetesAuthOptions{.trust_domain = config_.trust_domain,
                                .issuer = config_.kubernetes.issuer,
                                .audience = config_.kubernetes.audience,
                                .jwks_file = config_.kubernetes.jwks_file,
                                .allowed_namespaces = config_.kubernetes.allowed_namespaces,
                                .clock_skew = absl::Seconds(30)},
          clock_));
    }
    authenticator_ = std::make_unique<MeshAuthenticator>(config_.trust_domain, bundle_,
                                                         std::move(bootstrap), clock_);
    metrics_.SetCaNotAfter(signer_.ca().cert.not_after());
    service_ = std::make_unique<CaService>(signer_, bundle_, *authenticator_, metrics_, clock_);

    // certmgr's serving key lives only in memory; its certificate comes from its own CA.
    MESHTLS_ASSIGN_OR_RETURN(pki::PrivateKey serving_key, pki::PrivateKey::GenerateEcP256());
    MESHTLS_ASSIGN_OR_RETURN(
        IssuedCertificate serving,
        signer_.IssueServing(serving_key.get(), config_.server_names, config_.server_ips,
                             signer_.ca().cert.not_after() - clock_.Now()));
    MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, serving_key.ToPem());
    // Client certificates are requested but verified by MeshAuthenticator against the live
    // trust bundle (so a CA rotation needs no new TLS credentials). The TLS handshake still
    // proves the client holds the private key of the certificate it presents.
    grpc::SslServerCredentialsOptions tls(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
    tls.pem_root_certs = pki::ChainToPem(signer_.ca().roots);
    tls.pem_key_cert_pairs.push_back({key_pem, pki::ChainToPem(serving.chain)});

    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(config_.listen, grpc::SslServerCredentials(tls), &port);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(64 * 1024);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve gRPC on ", config_.listen, " (address in use?)"));
    }
    grpc_port_ = port;

    std::vector<admin::AdminRoute> routes;
    routes.push_back({"/healthz", [] { return admin::HttpResponse{.body = "ok\n"}; }});
    routes.push_back({"/readyz", [this] {
                        if (!ready_.load()) {
                          return admin::HttpResponse{.status = 503, .body = "shutting down\n"};
                        }
                        return admin::HttpResponse{.body = "ready\n"};
                      }});
    MESHTLS_ASSIGN_OR_RETURN(
        admin_,
        admin::AdminServer::Start(config_.admin_listen, std::move(routes), {metrics_.registry()}));
    ready_.store(true);
    base::LogInfo("certmgr serving",
                  {{"trust_domain", config_.trust_domain},
                   {"grpc", absl::StrCat(config_.listen, " (port ", grpc_port_, ")")},
                   {"admin_port", absl::StrCat(admin_->port())},
                   {"ca_sha256", signer_.ca().cert.Sha256Fingerprint()},
                   {"ca_not_after", absl::FormatTime(signer_.ca().cert.not_after())}});
    return absl::OkStatus();
  }

  int grpc_port() const override { return grpc_port_; }
  int admin_port() const override { return admin_ == nullptr ? 0 : admin_->port(); }

  void Shutdown() override {
    ready_.store(false);
    if (grpc_server_ != nullptr) {
      grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
      grpc_server_->Wait();
      grpc_server_.reset();
    }
    admin_.reset();
  }

 private:
  const CertmgrConfig config_;
  const base::Clock& clock_;
  CertmgrMetrics metrics_;
  Signer signer_;
  TrustBundleSource bundle_;
  std::unique_ptr<MeshAuthenticator> authenticator_;
  std::unique_ptr<CaService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<admin::AdminServer> admin_;
  int grpc_port_ = 0;
  std::atomic<bool> ready_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<CertmgrServer>> CertmgrServer::Create(const CertmgrConfig& config,
                                                                     const base::Clock& clock) {
  absl::StatusOr<CaMaterial> ca =
      config.ca_dir.empty()
          ? LoadCaFromFiles(config.ca_cert, config.ca_key, config.ca_trust_bundle,
                            config.trust_domain, clock)
          : LoadOrCreateCaInDir(config.ca_dir, config.trust_domain, config.ca_ttl, clock);
  if (!ca.ok()) {
    return absl::Status(ca.status().code(), absl::StrCat("CA: ", ca.status().message()));
  }
  auto server = std::make_unique<CertmgrServerImpl>(*std::move(ca), config, clock);
  MESHTLS_RETURN_IF_ERROR(server->Start());
  return server;
}

}  // namespace meshtls::certmgr

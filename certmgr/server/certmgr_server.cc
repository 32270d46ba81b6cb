#include "certmgr/server/certmgr_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "certmgr/ca/ca_material.h"
#include "certmgr/ca/signer.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/ca_service.h"
#include "certmgr/server/certmgr_metrics.h"
#include "certmgr/server/join_tokens.h"
#include "certmgr/server/kubernetes_authenticator.h"
#include "certmgr/server/mesh_authenticator.h"
#include "certmgr/webhook/admission.h"
#include "certmgr/webhook/webhook_server.h"
#include "common/admin/admin_server.h"
#include "common/base/bound_ports.h"
#include "common/base/file.h"
#include "common/base/file_watcher.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"

namespace meshtls::certmgr {
namespace {

class CertmgrServerImpl final : public CertmgrServer {
 public:
  CertmgrServerImpl(CaMaterial ca, const CertmgrConfig& config, const base::Clock& clock,
                    std::string config_path)
      : config_(config),
        config_path_(std::move(config_path)),
        clock_(clock),
        bundle_(config.trust_domain, ca.roots, ca.bundle_sequence),
        active_sha256_(ca.cert.Sha256Fingerprint()) {
    signer_.Set(std::make_shared<const Signer>(std::move(ca), config.issuance, clock));
  }

  ~CertmgrServerImpl() override { Shutdown(); }

  absl::Status Start(const std::string& bound_ports_file) {
    std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap;
    if (!config_.join_tokens_file.empty()) {
      auto join_tokens = std::make_unique<JoinTokenAuthenticator>(config_.join_tokens_file, clock_);
      join_tokens_ = join_tokens.get();
      bootstrap.push_back(std::move(join_tokens));
    }
    if (config_.kubernetes.enabled) {
      auto kubernetes = std::make_unique<KubernetesAuthenticator>(
          KubernetesAuthOptions{.trust_domain = config_.trust_domain,
                                .issuer = config_.kubernetes.issuer,
                                .audience = config_.kubernetes.audience,
                                .jwks_file = config_.kubernetes.jwks_file,
                                .allowed_namespaces = config_.kubernetes.allowed_namespaces,
                                .clock_skew = absl::Seconds(30),
                                .max_token_lifetime = config_.kubernetes.max_token_lifetime,
                                .require_pod_binding = config_.kubernetes.require_pod_binding},
          clock_);
      kubernetes_ = kubernetes.get();
      bootstrap.push_back(std::move(kubernetes));
    }
    authenticator_ = std::make_unique<MeshAuthenticator>(config_.trust_domain, bundle_,
                                                         std::move(bootstrap), clock_);
    authenticator_->SetDenyList(DenyMatchers(config_));
    metrics_.SetCaNotAfter(signer_.Get()->ca().cert.not_after());
    service_ = std::make_unique<CaService>(
        signer_, bundle_, *authenticator_, metrics_, clock_,
        WatchLimits{.max_total = config_.max_watchers,
                    .max_per_address = config_.max_watchers_per_address});
    if (join_tokens_ != nullptr) {
      ReloadJoinTokens();
      // A broken or unsafe token file shows in the metrics (and its alert) at once, not at
      // the next token use.
      token_watcher_ =
          std::make_unique<base::FileWatcher>(std::vector<std::string>{config_.join_tokens_file},
                                              absl::Seconds(1), [this] { ReloadJoinTokens(); });
    }
    if (!config_path_.empty()) {
      config_watcher_ = std::make_unique<base::FileWatcher>(
          std::vector<std::string>{config_path_}, absl::Seconds(1), [this] { ReloadConfig(); });
    }
    {
      absl::MutexLock lock(&grpc_mu_);
      MESHTLS_RETURN_IF_ERROR(StartGrpcLocked());
    }
    if (!config_.webhook.listen.empty()) {
      MESHTLS_RETURN_IF_ERROR(StartWebhook());
    }

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
    base::LogInfo("certmgr serving",
                  {{"trust_domain", config_.trust_domain},
                   {"grpc", absl::StrCat(config_.listen, " (port ", grpc_port_.load(), ")")},
                   {"admin_port", absl::StrCat(admin_->port())},
                   {"webhook_port", absl::StrCat(webhook_ == nullptr ? 0 : webhook_->port())},
                   {"ca_sha256", active_sha256_},
                   {"bundle_sequence", absl::StrCat(bundle_.Current()->sequence)}});
    if (!config_.ca_dir.empty()) {
      // Rotation steps (from the CLI, another replica or the schedule) change the directory;
      // the watcher applies each change live.
      const std::string& d = config_.ca_dir;
      ca_watcher_ = std::make_unique<base::FileWatcher>(
          std::vector<std::string>{d + "/ca.pem", d + "/next.pem", d + "/previous.pem",
                                   d + "/bundle.seq"},
          absl::Seconds(1), [this] { ReloadCaDir(); });
      ReloadCaDir();  // a step taken while we were starting
      if (!CaDirIsWritable(d)) {
        base::LogInfo("ca.dir is read-only: applying the rotation steps it receives, taking none",
                      {{"dir", d}});
      } else if (config_.rotation_auto) {
        rotation_thread_ = std::thread([this] { AutoRotationLoop(); });
      }
    }
    if (!bound_ports_file.empty()) {
      MESHTLS_RETURN_IF_ERROR(WriteBoundPorts(bound_ports_file));
    }
    ready_.store(true);
    return absl::OkStatus();
  }

  int admin_port() const override { return admin_ == nullptr ? 0 : admin_->port(); }

  void ReloadConfig() override {
    if (config_path_.empty()) {
      return;
    }
    absl::MutexLock lock(&config_reload_mu_);
    absl::StatusOr<std::string> text = base::ReadFileToString(config_path_);
    absl::StatusOr<CertmgrConfig> next =
        text.ok() ? ParseCertmgrConfig(*text) : absl::StatusOr<CertmgrConfig>(text.status());
    if (next.ok() && next->trust_domain != config_.trust_domain) {
      next = absl::InvalidArgumentError("trust_domain cannot change without a restart");
    }
    // Adding or removing the Kubernetes authenticator takes a restart; applying the rest of
    // such a file would turn a removed section's (empty) namespace list into "every namespace"
    // for the authenticator still running.
    if (next.ok() && next->kubernetes.enabled != config_.kubernetes.enabled) {
      next = absl::InvalidArgumentError(
          "authenticators.kubernetes cannot be added or removed without a restart");
    }
    if (!next.ok()) {
      metrics_.SetConfigReloadSuccessful(false);
      base::LogError("config reload refused; keeping the current policy",
                     {{"path", config_path_}, {"error", std::string(next.status().message())}});
      return;
    }
    authenticator_->SetDenyList(DenyMatchers(*next));
    if (kubernetes_ != nullptr) {
      kubernetes_->SetAllowedNamespaces(next->kubernetes.allowed_namespaces);
    }
    metrics_.SetConfigReloadSuccessful(true);
    base::LogInfo(
        "config reloaded: deny and authenticators.kubernetes.allowed_namespaces applied; other "
        "fields take effect at restart",
        {{"path", config_path_},
         {"deny", absl::StrCat(next->deny.size())},
         {"allowed_namespaces", absl::StrJoin(next->kubernetes.allowed_namespaces, ",")}});
  }

  void Shutdown() override {
    ready_.store(false);
    {
      absl::MutexLock lock(&stop_mu_);
      stopping_ = true;
    }
    if (rotation_thread_.joinable()) {
      rotation_thread_.join();
    }
    ca_watcher_.reset();
    config_watcher_.reset();
    token_watcher_.reset();
    {
      absl::MutexLock lock(&grpc_mu_);
      StopGrpcLocked();
    }
    webhook_.reset();
    admin_.reset();
  }

 private:
  // StartGrpcLocked serves CertificateAuthority over TLS with a serving certificate from the
  // current signer. certmgr's serving key lives only in memory.
  absl::Status StartGrpcLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(grpc_mu_) {
    std::shared_ptr<const Signer> signer = signer_.Get();
    MESHTLS_ASSIGN_OR_RETURN(pki::PrivateKey serving_key, pki::PrivateKey::GenerateEcP256());
    MESHTLS_ASSIGN_OR_RETURN(
        IssuedCertificate serving,
        signer->IssueServing(serving_key.get(), config_.server_names, config_.server_ips,
                             signer->ca().cert.not_after() - clock_.Now()));
    MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, serving_key.ToPem());
    // Client certificates are requested but verified by MeshAuthenticator against the live
    // trust bundle (so a CA rotation needs no new TLS credentials). The TLS handshake still
    // proves the client holds the private key of the certificate it presents.
    grpc::SslServerCredentialsOptions tls(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_BUT_DONT_VERIFY);
    tls.pem_root_certs = pki::ChainToPem(signer->ca().roots);
    tls.pem_key_cert_pairs.push_back({key_pem, pki::ChainToPem(serving.chain)});

    grpc::ServerBuilder builder;
    int port = 0;
    // After the first start, rebind the port actually in use (the config may say port 0).
    const std::string listen =
        grpc_port_ == 0 ? config_.listen
                        : absl::StrCat(config_.listen.substr(0, config_.listen.rfind(':')), ":",
                                       grpc_port_.load());
    builder.AddListeningPort(listen, grpc::SslServerCredentials(tls), &port);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(64 * 1024);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // A connection must finish its TLS handshake (and send its HTTP/2 settings) within 10 s,
    // not gRPC's default 120 s: a slowloris caller holds a descriptor for that long at most.
    builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
    // A sidecar needs one stream at a time per connection (a Sign or its watch); more than a
    // few on one connection is a caller piling up work.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 8);
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr || port == 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot serve gRPC on ", listen, " (address in use?)"));
    }
    grpc_port_ = port;
    return absl::OkStatus();
  }

  // WebhookCredentials issues the webhook's serving certificate (for injection.webhook.
  // server_names) from the current signer, with a key that lives only in memory.
  absl::StatusOr<std::pair<std::string, std::string>> WebhookCredentials() {
    std::shared_ptr<const Signer> signer = signer_.Get();
    MESHTLS_ASSIGN_OR_RETURN(pki::PrivateKey key, pki::PrivateKey::GenerateEcP256());
    MESHTLS_ASSIGN_OR_RETURN(IssuedCertificate serving,
                             signer->IssueServing(key.get(), config_.webhook.server_names, {},
                                                  signer->ca().cert.not_after() - clock_.Now()));
    MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, key.ToPem());
    return std::make_pair(std::move(key_pem), pki::ChainToPem(serving.chain));
  }

  // StartWebhook serves the mutating admission webhook (docs/injection.md). Main thread.
  absl::Status StartWebhook() {
    MESHTLS_ASSIGN_OR_RETURN(auto credentials, WebhookCredentials());
    webhook::WebhookOptions options{
        .listen = config_.webhook.listen,
        .max_request_bytes = config_.webhook.max_request_bytes,
        .request_timeout = config_.webhook.request_timeout,
        .max_connections = config_.webhook.max_connections,
        .max_connections_per_address = config_.webhook.max_connections_per_address};
    auto handler = [this](absl::string_view path, absl::string_view body) {
      if (path != "/inject") {
        return admin::HttpResponse{.status = 404, .body = "POST AdmissionReviews to /inject\n"};
      }
      // At most two reviews parse and copy a Pod at once: each may hold tens of MiB for a
      // moment, and a review takes about a millisecond, so the others wait very little.
      {
        absl::MutexLock lock(&review_mu_);
        review_mu_.Await(absl::Condition(
            +[](int* running) { return *running < 2; }, &reviews_running_));
        ++reviews_running_;
      }
      absl::StatusOr<webhook::Review> review =
          webhook::AdmitPod(config_.injection, body, config_.webhook.max_request_bytes);
      {
        absl::MutexLock lock(&review_mu_);
        --reviews_running_;
      }
      if (!review.ok()) {
        metrics_.RecordAdmissionReview(AdmissionResult::kMalformed);
        return admin::HttpResponse{.status = 400,
                                   .body = absl::StrCat(review.status().message(), "\n")};
      }
      switch (review->result) {
        case webhook::ReviewResult::kInjected:
          metrics_.RecordAdmissionReview(AdmissionResult::kInjected);
          break;
        case webhook::ReviewResult::kUnchanged:
          metrics_.RecordAdmissionReview(AdmissionResult::kUnchanged);
          break;
        case webhook::ReviewResult::kRefused:
          metrics_.RecordAdmissionReview(AdmissionResult::kRefused);
          base::LogWarning("admission refused", {{"reason", review->message}});
          break;
      }
      return admin::HttpResponse{.content_type = "application/json",
                                 .body = std::move(review->response_json)};
    };
    MESHTLS_ASSIGN_OR_RETURN(
        webhook_,
        webhook::WebhookServer::Start(options, credentials.first, credentials.second,
                                      std::move(handler), [this](webhook::Rejection r) {
                                        metrics_.RecordWebhookRejected(webhook::RejectionName(r));
                                      }));
    return absl::OkStatus();
  }

  // WriteBoundPorts writes the gRPC and admin addresses with the ports actually bound (the
  // config may say port 0). Main thread, after both listeners started.
  absl::Status WriteBoundPorts(const std::string& path) const {
    MESHTLS_ASSIGN_OR_RETURN(base::HostPort grpc,
                             base::ParseHostPort(config_.listen, /*allow_port_zero=*/true));
    grpc.port = static_cast<uint16_t>(grpc_port_.load());
    MESHTLS_ASSIGN_OR_RETURN(base::HostPort admin,
                             base::ParseHostPort(config_.admin_listen, /*allow_port_zero=*/true));
    admin.port = admin_->port();
    std::vector<base::BoundListener> ports = {{"grpc", grpc}, {"admin", admin}};
    if (webhook_ != nullptr) {
      MESHTLS_ASSIGN_OR_RETURN(base::HostPort webhook,
                               base::ParseHostPort(config_.webhook.listen, true));
      webhook.port = webhook_->port();
      ports.push_back({"webhook", webhook});
    }
    return base::WriteBoundPortsFile(path, ports);
  }

  void StopGrpcLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(grpc_mu_) {
    if (grpc_server_ != nullptr) {
      grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      grpc_server_->Wait();
      grpc_server_.reset();
    }
  }

  // ReloadCaDir applies the CA directory's state: new roots are streamed to every sidecar, a
  // new active root becomes the signer and gets certmgr a new serving certificate. Runs on the
  // watcher's thread.
  void ReloadCaDir() {
    absl::MutexLock reload_lock(&reload_mu_);  // Start's call vs the watcher's
    absl::StatusOr<CaMaterial> ca = LoadCaDir(config_.ca_dir, config_.trust_domain, clock_);
    if (!ca.ok()) {
      base::LogError("cannot load the CA directory; keeping the current CA",
                     {{"error", std::string(ca.status().message())}});
      return;
    }
    const std::string sha256 = ca->cert.Sha256Fingerprint();
    const uint64_t sequence = ca->bundle_sequence;
    const size_t roots = ca->roots.size();
    const absl::Time not_after = ca->cert.not_after();
    std::vector<pki::Certificate> bundle = ca->roots;
    const bool new_signer = sha256 != active_sha256_;
    if (new_signer) {
      signer_.Set(std::make_shared<const Signer>(*std::move(ca), config_.issuance, clock_));
      active_sha256_ = sha256;
      metrics_.SetCaNotAfter(not_after);
    }
    bundle_.UpdateTo(std::move(bundle), sequence);
    base::LogInfo("CA directory applied", {{"active_sha256", sha256},
                                           {"bundle_roots", absl::StrCat(roots)},
                                           {"bundle_sequence", absl::StrCat(sequence)}});
    if (new_signer) {
      // The serving certificate must come from the new signer before the old root retires.
      absl::MutexLock lock(&grpc_mu_);
      StopGrpcLocked();
      if (absl::Status s = StartGrpcLocked(); !s.ok()) {
        base::LogError("cannot restart gRPC with the new serving certificate",
                       {{"error", std::string(s.message())}});
      }
      if (webhook_ != nullptr) {
        absl::StatusOr<std::pair<std::string, std::string>> credentials = WebhookCredentials();
        absl::Status s = credentials.ok()
                             ? webhook_->SetCredentials(credentials->first, credentials->second)
                             : credentials.status();
        if (!s.ok()) {
          base::LogError("cannot give the webhook a new serving certificate",
                         {{"error", std::string(s.message())}});
        }
      }
    }
  }

  static std::vector<pki::SpiffeIdMatcher> DenyMatchers(const CertmgrConfig& config) {
    std::vector<pki::SpiffeIdMatcher> out;
    for (const std::string& pattern : config.deny) {
      out.push_back(*pki::SpiffeIdMatcher::Parse(pattern));  // validated by the config parser
    }
    return out;
  }

  // ReloadJoinTokens re-reads the join token file and exports how it loaded. Runs on the
  // token watcher's thread (and once in Start).
  void ReloadJoinTokens() {
    const JoinTokenFileState state = join_tokens_->Reload();
    metrics_.SetJoinTokenFile(state.usable, state.rejected_lines);
  }

  void AutoRotationLoop() {
    while (true) {
      {
        absl::MutexLock lock(&stop_mu_);
        stop_mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
        if (stopping_) {
          return;
        }
      }
      absl::StatusOr<CaMaterial> ca = LoadCaDir(config_.ca_dir, config_.trust_domain, clock_);
      if (!ca.ok()) {
        continue;
      }
      std::optional<CaRotationStep> step = DueRotationStep(
          *ca, clock_.Now(), config_.rotation_prepare_at, config_.rotation_activate_at);
      if (step.has_value()) {
        absl::Status s = RotateCa(config_.ca_dir, config_.trust_domain, *step, config_.ca_ttl,
                                  config_.issuance.max_ttl + config_.issuance.backdate,
                                  /*force=*/false, clock_);
        if (!s.ok() && !absl::IsFailedPrecondition(s)) {  // another replica may have done it
          base::LogError("automatic CA rotation step failed",
                         {{"error", std::string(s.message())}});
        }
      }
    }
  }

  const CertmgrConfig config_;  // as started; ReloadConfig applies the live fields elsewhere
  const std::string config_path_;
  const base::Clock& clock_;
  CertmgrMetrics metrics_;
  CurrentSigner signer_;
  TrustBundleSource bundle_;
  absl::Mutex reload_mu_;      // serializes ReloadCaDir; taken before grpc_mu_
  std::string active_sha256_;  // written under reload_mu_ (read unlocked only before the watcher)
  std::unique_ptr<MeshAuthenticator> authenticator_;
  JoinTokenAuthenticator* join_tokens_ = nullptr;  // owned by authenticator_, or null
  KubernetesAuthenticator* kubernetes_ = nullptr;  // owned by authenticator_, or null
  absl::Mutex config_reload_mu_;                   // the watcher's reload vs SIGHUP's
  std::unique_ptr<base::FileWatcher> config_watcher_;
  std::unique_ptr<base::FileWatcher> token_watcher_;
  std::unique_ptr<CaService> service_;
  absl::Mutex grpc_mu_;
  std::unique_ptr<grpc::Server> grpc_server_ ABSL_GUARDED_BY(grpc_mu_);
  std::atomic<int> grpc_port_{0};
  absl::Mutex review_mu_;
  int reviews_running_ ABSL_GUARDED_BY(review_mu_) = 0;
  std::unique_ptr<webhook::WebhookServer> webhook_;  // set in Start; its TLS replaced on rotation
  std::unique_ptr<admin::AdminServer> admin_;
  std::unique_ptr<base::FileWatcher> ca_watcher_;
  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread rotation_thread_;
  std::atomic<bool> ready_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<CertmgrServer>> CertmgrServer::Create(const CertmgrConfig& config,
                                                                     const base::Clock& clock,
                                                                     std::string config_path,
                                                                     std::string bound_ports_file) {
  absl::StatusOr<CaMaterial> ca =
      config.ca_dir.empty()
          ? LoadCaFromFiles(config.ca_cert, config.ca_key, config.ca_trust_bundle,
                            config.trust_domain, clock)
          : LoadOrCreateCaInDir(config.ca_dir, config.trust_domain, config.ca_ttl, clock);
  if (!ca.ok()) {
    return absl::Status(ca.status().code(), absl::StrCat("CA: ", ca.status().message()));
  }
  if (config.ca_dir.empty()) {
    // CA files change only with a restart: each start's bundle outranks the last one's.
    ca->bundle_sequence = NextBundleSequence(0, clock.Now());
  }
  auto server =
      std::make_unique<CertmgrServerImpl>(*std::move(ca), config, clock, std::move(config_path));
  MESHTLS_RETURN_IF_ERROR(server->Start(bound_ports_file));
  return server;
}

}  // namespace meshtls::certmgr

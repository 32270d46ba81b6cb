#include "sidecar/server/server.h"

#include <openssl/ssl.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/admin/admin_server.h"
#include "common/base/bound_ports.h"
#include "common/base/file.h"
#include "common/base/file_watcher.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/net/socket.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/identity/ca_client.h"
#include "sidecar/identity/rotator.h"
#include "sidecar/metrics/collector.h"
#include "sidecar/server/worker.h"
#include "sidecar/tls/tls_context.h"

namespace meshtls::sidecar {
namespace {

net::MonoDuration ToMono(absl::Duration d) {
  return std::chrono::duration_cast<net::MonoDuration>(absl::ToChronoNanoseconds(d));
}

double UnixSeconds(absl::Time t) {
  return t == absl::InfinitePast() ? 0 : static_cast<double>(absl::ToUnixSeconds(t));
}

std::string JsonTime(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) {
    return "null";
  }
  return absl::StrCat("\"", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone()), "\"");
}

class ServerImpl final : public Server {
 public:
  explicit ServerImpl(const SidecarConfig& config) : config_(config) {}

  ~ServerImpl() override {
    file_watcher_.reset();
    if (rotator_ != nullptr) {
      rotator_->Stop();
    }
    admin_.reset();
    for (auto& w : workers_) {
      w->Stop();
    }
  }

  absl::Status Init(const std::string& bound_ports_file) {
    settings_.allow_tls12 = config_.tls.min_version == "1.2";
    settings_.session_resumption = config_.tls.session_resumption;
    // Listener runtimes: inbound first, then outbound (this order indexes the authz counters).
    for (const auto* list : {&config_.inbound, &config_.outbound}) {
      for (const ListenerConfig& l : *list) {
        MESHTLS_ASSIGN_OR_RETURN(PeerAuthorizer authorizer, PeerAuthorizer::Create(l.peers));
        listeners_.push_back(ListenerRuntime{
            .id = listeners_.size(),
            .direction = list == &config_.inbound ? Direction::kInbound : Direction::kOutbound,
            .name = l.name,
            .target = l.target,
            .authorizer = std::move(authorizer)});
      }
    }
    const dns::ResolverOptions dns{.servers = config_.dns.servers,
                                   .max_ttl = config_.dns.max_ttl,
                                   .negative_ttl = config_.dns.negative_ttl,
                                   // A lookup never outlives the connections waiting for it.
                                   .lookup_timeout = config_.limits.connect_timeout};
    const int worker_count =
        config_.workers > 0 ? config_.workers
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    // Bind every worker's socket now, so a port conflict fails the start. A listener on port 0
    // gets its port from the first bind and the other workers share it.
    std::vector<std::vector<base::UniqueFd>> fds(worker_count);
    std::vector<std::pair<std::string, const ListenerConfig*>> configs;  // bound-ports name
    for (const ListenerConfig& l : config_.inbound) {
      configs.emplace_back("inbound." + l.name, &l);
    }
    for (const ListenerConfig& l : config_.outbound) {
      configs.emplace_back("outbound." + l.name, &l);
    }
    std::vector<base::BoundListener> bound_listeners;
    for (const auto& [bound_name, l] : configs) {
      base::HostPort bound = l->listen;
      MESHTLS_ASSIGN_OR_RETURN(net::SocketAddress address, net::ToSocketAddress(bound));
      for (int w = 0; w < worker_count; ++w) {
        absl::StatusOr<base::UniqueFd> fd = net::ListenTcp(address, /*reuse_port=*/true);
        if (!fd.ok()) {
          return absl::Status(fd.status().code(),
                              absl::StrCat("listener ", l->name, ": ", fd.status().message()));
        }
        if (w == 0 && l->listen.port == 0) {
          bound.port = net::LocalPort(fd->get());
          MESHTLS_ASSIGN_OR_RETURN(address, net::ToSocketAddress(bound));
        }
        fds[w].push_back(*std::move(fd));
      }
      bound_listeners.push_back({bound_name, bound});
      base::LogInfo("listening", {{"listener", l->name}, {"address", address.ToString()}});
    }
    const WorkerLimits limits{.handshake_timeout = ToMono(config_.limits.handshake_timeout),
                              .connect_timeout = ToMono(config_.limits.connect_timeout),
                              .idle_timeout = ToMono(config_.limits.idle_timeout),
                              .max_connections = config_.limits.max_connections,
                              .close_on_expiry = config_.tls.close_on_expiry,
                              .session_resumption = config_.tls.session_resumption};
    std::vector<const WorkerCounters*> shards;
    for (int w = 0; w < worker_count; ++w) {
      MESHTLS_ASSIGN_OR_RETURN(
          std::unique_ptr<Worker> worker,
          Worker::Create(w, listeners_, std::move(fds[w]), store_, dns, limits, open_connections_));
      shards.push_back(&worker->counters());
      workers_.push_back(std::move(worker));
    }
    std::vector<ListenerLabel> labels;
    for (const ListenerRuntime& l : listeners_) {
      labels.push_back({l.direction, l.name});
    }
    auto collector = std::make_shared<SidecarCollector>(std::move(shards), std::move(labels),
                                                        [this] { return CredentialState(); });
    std::vector<admin::AdminRoute> routes;
    routes.push_back({"/healthz", [] { return admin::HttpResponse{.body = "ok\n"}; }});
    routes.push_back({"/readyz", [this] { return Readiness(); }});
    routes.push_back({"/certs", [this] { return CertsJson(); }});
    MESHTLS_ASSIGN_OR_RETURN(
        admin_, admin::AdminServer::Start(config_.admin_listen, std::move(routes), {collector}));
    for (auto& w : workers_) {
      w->Start();
    }
    if (!bound_ports_file.empty()) {
      MESHTLS_ASSIGN_OR_RETURN(base::HostPort admin_bound,
                               base::ParseHostPort(config_.admin_listen, /*allow_port_zero=*/true));
      admin_bound.port = admin_->port();
      bound_listeners.insert(bound_listeners.begin(), {"admin", admin_bound});
      MESHTLS_RETURN_IF_ERROR(base::WriteBoundPortsFile(bound_ports_file, bound_listeners));
    }
    listeners_up_.store(true);

    if (config_.identity_mode == SidecarConfig::IdentityMode::kFiles) {
      MESHTLS_RETURN_IF_ERROR(ReloadFiles());
      file_watcher_ = std::make_unique<base::FileWatcher>(
          std::vector<std::string>{config_.files.cert, config_.files.key,
                                   config_.files.trust_bundle},
          absl::Seconds(1), [this] {
            absl::Status s = ReloadFiles();
            base::LogInfo("identity files changed",
                          {{"reload", s.ok() ? "applied" : std::string(s.message())}});
          });
    } else {
      absl::StatusOr<std::string> server_ca = base::ReadFileToString(config_.certmgr.server_ca);
      if (!server_ca.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("identity.certmgr.server_ca: ", server_ca.status().message()));
      }
      ca_client_ =
          NewGrpcCaClient(config_.certmgr.addresses, *server_ca, config_.certmgr.server_ca);
      RotatorOptions options;
      options.renew_at = config_.certmgr.renew_at;
      options.token_file = config_.certmgr.token_file;
      options.on_attempt = [this](const absl::Status& s) {
        (s.ok() ? renewals_success_ : renewals_failure_).fetch_add(1);
      };
      rotator_ = std::make_unique<Rotator>(options, *ca_client_, *this, base::RealClock::Get());
      rotator_->Start();
    }
    base::LogInfo("sidecar started", {{"workers", absl::StrCat(worker_count)},
                                      {"admin_port", absl::StrCat(admin_->port())}});
    return absl::OkStatus();
  }

  absl::Status Publish(const pki::CredentialBundle& bundle) override {
    const uint64_t generation = generation_.load() + 1;
    absl::StatusOr<std::shared_ptr<const TlsContext>> context =
        TlsContext::Create(bundle, config_.trust_domain, settings_, generation);
    if (!context.ok()) {
      base::LogError("new credentials refused; keeping the current TLS context",
                     {{"error", std::string(context.status().message())}});
      return context.status();
    }
    if (!config_.expected_identity.empty() &&
        (*context)->identity().str() != config_.expected_identity) {
      const std::string why = absl::StrCat("the certificate is for ", (*context)->identity().str(),
                                           ", but this pod is ", config_.expected_identity,
                                           " (--namespace/--service-account)");
      base::LogError("new credentials refused; keeping the current TLS context", {{"error", why}});
      return absl::PermissionDeniedError(why);
    }
    store_.Publish(*context);
    generation_.store(generation);
    {
      absl::MutexLock lock(&mu_);
      last_load_ = absl::Now();
    }
    base::LogInfo("tls context published",
                  {{"identity", (*context)->identity().str()},
                   {"generation", absl::StrCat(generation)},
                   {"not_after", absl::FormatTime((*context)->not_after())},
                   {"trust_bundle_roots", absl::StrCat(bundle.trust_bundle.size())}});
    return absl::OkStatus();
  }

  absl::Status ReloadFiles() override {
    if (config_.identity_mode != SidecarConfig::IdentityMode::kFiles) {
      return absl::OkStatus();
    }
    absl::MutexLock reload_lock(&reload_mu_);  // SIGHUP (main thread) vs the file watcher
    absl::Status s = [&]() -> absl::Status {
      MESHTLS_ASSIGN_OR_RETURN(std::string cert_pem, base::ReadFileToString(config_.files.cert));
      MESHTLS_ASSIGN_OR_RETURN(std::string key_pem, base::ReadFileToString(config_.files.key));
      MESHTLS_ASSIGN_OR_RETURN(std::string bundle_pem,
                               base::ReadFileToString(config_.files.trust_bundle));
      absl::StatusOr<std::vector<pki::Certificate>> chain = pki::ParsePemChain(cert_pem);
      if (!chain.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("identity.files.cert: ", chain.status().message()));
      }
      absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::FromPem(key_pem);
      if (!key.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("identity.files.key: ", key.status().message()));
      }
      absl::StatusOr<std::vector<pki::Certificate>> roots = pki::ParsePemChain(bundle_pem);
      if (!roots.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("identity.files.trust_bundle: ", roots.status().message()));
      }
      return Publish(pki::CredentialBundle{.chain = *std::move(chain),
                                           .key = *std::move(key),
                                           .trust_bundle = *std::move(roots),
                                           .bundle_sequence = generation_.load() + 1});
    }();
    (s.ok() ? renewals_success_ : renewals_failure_).fetch_add(1);
    return s;
  }

  void Drain() override {
    draining_.store(true);
    base::LogInfo("draining",
                  {{"open_connections", absl::StrCat(open_connections_.load())},
                   {"drain_timeout", absl::FormatDuration(config_.limits.drain_timeout)}});
    for (auto& w : workers_) {
      w->StopAccepting();
    }
    const absl::Time deadline = absl::Now() + config_.limits.drain_timeout;
    // Poll the shared connection count; draining happens once per process life.
    while (open_connections_.load() > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    base::LogInfo("drained", {{"still_open", absl::StrCat(open_connections_.load())}});
  }

  uint16_t admin_port() const override { return admin_ == nullptr ? 0 : admin_->port(); }

 private:
  CredentialGauges CredentialState() const {
    CredentialGauges g;
    std::shared_ptr<const TlsContext> context = store_.Snapshot();
    if (context != nullptr) {
      g.not_before = UnixSeconds(context->bundle().chain[0].not_before());
      g.not_after = UnixSeconds(context->not_after());
      g.trust_bundle_roots = context->bundle().trust_bundle.size();
      g.trust_bundle_sequence = context->bundle().bundle_sequence;
    }
    if (rotator_ != nullptr) {
      RotatorStatus s = rotator_->status();
      g.renewal_due = UnixSeconds(s.next_refresh);
      g.last_renewal = UnixSeconds(s.last_success);
    } else {
      absl::MutexLock lock(&mu_);
      g.last_renewal = UnixSeconds(last_load_);
    }
    g.renewals_success = renewals_success_.load();
    g.renewals_failure = renewals_failure_.load();
    g.tls_context_generation = generation_.load();
    return g;
  }

  admin::HttpResponse Readiness() const {
    auto not_ready = [](std::string why) {
      return admin::HttpResponse{.status = 503, .body = why + "\n"};
    };
    if (draining_.load()) {
      return not_ready("draining");
    }
    if (!listeners_up_.load()) {
      return not_ready("listeners not up");
    }
    std::shared_ptr<const TlsContext> context = store_.Snapshot();
    if (context == nullptr) {
      return not_ready("no certificate yet");
    }
    if (absl::Now() >= context->not_after()) {
      return not_ready(
          absl::StrCat("certificate expired at ", absl::FormatTime(context->not_after())));
    }
    return admin::HttpResponse{.body = "ready\n"};
  }

  admin::HttpResponse CertsJson() const {
    std::shared_ptr<const TlsContext> context = store_.Snapshot();
    admin::HttpResponse r;
    r.content_type = "application/json";
    if (context == nullptr) {
      r.body = "{\"identity\":null}\n";
      return r;
    }
    const pki::Certificate& leaf = context->bundle().chain[0];
    RotatorStatus rs;
    if (rotator_ != nullptr) {
      rs = rotator_->status();
    }
    std::string roots;
    for (const pki::Certificate& root : context->bundle().trust_bundle) {
      absl::StrAppend(&roots, roots.empty() ? "" : ",", "{\"subject\":\"",
                      base::JsonEscape(root.SubjectText()), "\",\"sha256\":\"",
                      root.Sha256Fingerprint(), "\",\"not_after\":", JsonTime(root.not_after()),
                      "}");
    }
    r.body = absl::StrCat(
        "{\"identity\":\"", base::JsonEscape(context->identity().str()), "\",\"serial\":\"",
        leaf.SerialHex(), "\",\"not_before\":", JsonTime(leaf.not_before()),
        ",\"not_after\":", JsonTime(leaf.not_after()),
        ",\"renewal_due\":", JsonTime(rs.next_refresh), ",\"last_renewal_error\":\"",
        base::JsonEscape(rs.last_error), "\"",
        ",\"trust_bundle\":{\"sequence\":", context->bundle().bundle_sequence, ",\"roots\":[",
        roots, "]},\"tls_context_generation\":", context->generation(), "}\n");
    return r;
  }

  const SidecarConfig config_;
  TlsSettings settings_;
  TlsContextStore store_;
  std::vector<ListenerRuntime> listeners_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<admin::AdminServer> admin_;
  std::unique_ptr<CaClient> ca_client_;
  std::unique_ptr<Rotator> rotator_;
  std::unique_ptr<base::FileWatcher> file_watcher_;
  std::atomic<int> open_connections_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> renewals_success_{0};
  std::atomic<uint64_t> renewals_failure_{0};
  std::atomic<bool> listeners_up_{false};
  std::atomic<bool> draining_{false};
  absl::Mutex reload_mu_;  // serializes ReloadFiles
  mutable absl::Mutex mu_;
  absl::Time last_load_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const SidecarConfig& config,
                                                       const std::string& bound_ports_file) {
  auto server = std::make_unique<ServerImpl>(config);
  MESHTLS_RETURN_IF_ERROR(server->Init(bound_ports_file));
  return server;
}

}  // namespace meshtls::sidecar

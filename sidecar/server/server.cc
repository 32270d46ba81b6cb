#include "sidecar/server/server.h"

#include <openssl/ssl.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/admin/admin_server.h"
#include "common/base/bound_ports.h"
#include "common/base/file.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/net/socket.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/identity/certmgr_identity_source.h"
#include "sidecar/identity/files_identity_source.h"
#include "sidecar/identity/identity_source.h"
#include "sidecar/metrics/collector.h"
#include "sidecar/server/app_prober.h"
#include "sidecar/server/certs_response.h"
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

class ServerImpl final : public Server {
 public:
  explicit ServerImpl(const SidecarConfig& config) : config_(config) {}

  ~ServerImpl() override {
    // The identity source publishes into this object: stop it first.
    if (identity_ != nullptr) {
      identity_->Stop();
    }
    admin_.reset();
    for (auto& w : workers_) {
      w->Stop();
    }
  }

  absl::Status Init(const std::string& bound_ports_file) {
    settings_.allow_tls12 = config_.tls.min_version == "1.2";
    settings_.session_resumption = config_.tls.session_resumption;
    const TransparentConfig& transparent = config_.transparent;
    if (transparent.outbound.enabled && ::geteuid() != transparent.proxy_uid) {
      return absl::FailedPreconditionError(
          absl::StrCat("transparent.proxy_uid is ", transparent.proxy_uid,
                       " but the sidecar runs as uid ", ::geteuid(),
                       ": the capture rules would send its own connections back to it. Run it as "
                       "uid ",
                       transparent.proxy_uid, " (securityContext.runAsUser)"));
    }
    if (transparent.enabled() && transparent.proxy_uid == 0) {
      base::LogWarning(
          "transparent.proxy_uid is 0: every process of the pod running as root bypasses the "
          "outbound capture; give the sidecar a user id of its own",
          {});
    }
    // Listener runtimes: inbound first, then outbound (this order indexes the authz counters),
    // then transparent mode's.
    for (const auto* list : {&config_.inbound, &config_.outbound}) {
      for (const ListenerConfig& l : *list) {
        MESHTLS_ASSIGN_OR_RETURN(PeerAuthorizer authorizer, PeerAuthorizer::Create(l.peers));
        listeners_.push_back(ListenerRuntime{
            .id = listeners_.size(),
            .direction = list == &config_.inbound ? Direction::kInbound : Direction::kOutbound,
            .name = l.name,
            .target = l.target,
            .authorizer = std::move(authorizer),
            .pooled = l.transport == Transport::kPooled});
      }
    }
    MESHTLS_RETURN_IF_ERROR(AddCaptureRuntimes());
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
    std::vector<std::vector<ListenFd>> fds(worker_count);
    struct Socket {
      std::string bound_name;  // in the bound-ports file ("" for a capture port's IPv6 socket)
      size_t listener;
      base::HostPort listen;
      bool ipv6_optional = false;  // a capture port's IPv6 socket: skipped where IPv6 is off
    };
    std::vector<Socket> sockets;
    size_t index = 0;
    for (const ListenerConfig& l : config_.inbound) {
      sockets.push_back({"inbound." + l.name, index++, l.listen});
    }
    for (const ListenerConfig& l : config_.outbound) {
      sockets.push_back({"outbound." + l.name, index++, l.listen});
    }
    // Capture ports: one socket per family, so that each accepted connection's family tells
    // which original-destination option to read. Outbound capture listens on loopback only
    // (the OUTPUT chain redirects there); inbound capture on every address (PREROUTING
    // redirects to the address the packet arrived on).
    if (outbound_capture_listener_.has_value()) {
      const uint16_t port = transparent.outbound.port;
      sockets.push_back({"transparent.outbound",
                         *outbound_capture_listener_,
                         {.host = "127.0.0.1", .port = port, .host_is_ip = true}});
      sockets.push_back({"",
                         *outbound_capture_listener_,
                         {.host = "::1", .port = port, .host_is_ip = true, .is_ipv6 = true},
                         /*ipv6_optional=*/true});
    }
    if (inbound_capture_listener_.has_value()) {
      const uint16_t port = transparent.inbound.port;
      sockets.push_back({"transparent.inbound",
                         *inbound_capture_listener_,
                         {.host = "0.0.0.0", .port = port, .host_is_ip = true}});
      sockets.push_back({"",
                         *inbound_capture_listener_,
                         {.host = "::", .port = port, .host_is_ip = true, .is_ipv6 = true},
                         /*ipv6_optional=*/true});
    }
    std::vector<base::BoundListener> bound_listeners;
    for (const Socket& socket : sockets) {
      const std::string& name = listeners_[socket.listener].name;
      base::HostPort bound = socket.listen;
      MESHTLS_ASSIGN_OR_RETURN(net::SocketAddress address, net::ToSocketAddress(bound));
      std::vector<base::UniqueFd> per_worker;
      absl::Status failed;
      for (int w = 0; w < worker_count && failed.ok(); ++w) {
        absl::StatusOr<base::UniqueFd> fd = net::ListenTcp(address, {.reuse_port = true});
        if (!fd.ok()) {
          failed = absl::Status(fd.status().code(),
                                absl::StrCat("listener ", name, ": ", fd.status().message()));
          break;
        }
        if (w == 0 && socket.listen.port == 0) {
          bound.port = net::LocalPort(fd->get());
          MESHTLS_ASSIGN_OR_RETURN(address, net::ToSocketAddress(bound));
        }
        per_worker.push_back(*std::move(fd));
      }
      if (!failed.ok()) {
        if (socket.ipv6_optional && per_worker.empty()) {
          base::LogWarning("no IPv6 capture socket; capturing IPv4 only",
                           {{"listener", name}, {"error", std::string(failed.message())}});
          continue;
        }
        return failed;
      }
      for (int w = 0; w < worker_count; ++w) {
        fds[w].push_back(ListenFd{socket.listener, std::move(per_worker[w])});
      }
      if (!socket.bound_name.empty()) {
        bound_listeners.push_back({socket.bound_name, bound});
      }
      base::LogInfo("listening", {{"listener", name}, {"address", address.ToString()}});
    }
    const WorkerLimits limits{.handshake_timeout = ToMono(config_.limits.handshake_timeout),
                              .connect_timeout = ToMono(config_.limits.connect_timeout),
                              .idle_timeout = ToMono(config_.limits.idle_timeout),
                              .max_connections = config_.limits.max_connections,
                              .close_on_expiry = config_.tls.close_on_expiry,
                              .session_resumption = config_.tls.session_resumption,
                              .pooled = {
                                  .max_streams_per_connection = static_cast<uint32_t>(
                                      config_.pooled.max_streams_per_connection),
                                  .max_connections_per_peer =
                                      static_cast<size_t>(config_.pooled.max_connections_per_peer),
                                  .idle_timeout = ToMono(config_.pooled.idle_timeout),
                                  .keepalive_interval = ToMono(config_.pooled.keepalive_interval),
                                  .keepalive_timeout = ToMono(config_.pooled.keepalive_timeout),
                              }};
    std::vector<const WorkerCounters*> shards;
    for (int w = 0; w < worker_count; ++w) {
      MESHTLS_ASSIGN_OR_RETURN(
          std::unique_ptr<Worker> worker,
          Worker::Create(w, listeners_, std::move(fds[w]), capture_decisions_.size(), store_, dns,
                         limits, open_connections_));
      shards.push_back(&worker->counters());
      workers_.push_back(std::move(worker));
    }
    // Made before the admin server starts, whose threads read its status.
    MESHTLS_ASSIGN_OR_RETURN(identity_, NewIdentitySource());
    std::vector<ListenerLabel> labels;
    for (const ListenerRuntime& l : listeners_) {
      labels.push_back(
          {l.direction, l.name, l.outbound_capture == nullptr && l.inbound_capture == nullptr});
    }
    auto collector =
        std::make_shared<SidecarCollector>(std::move(shards), std::move(labels), capture_decisions_,
                                           [this] { return CredentialState(); });
    std::vector<admin::AdminRoute> routes;
    routes.push_back({"/healthz", [] { return admin::HttpResponse{.body = "ok\n"}; }});
    routes.push_back({"/readyz", [this] { return Readiness(); }});
    routes.push_back({"/certs", [this] { return Certs(); }});
    for (const SidecarConfig::AppProbe& probe : config_.app_probes) {
      // The answer comes within the probe's timeout; a second on top for the reply's way back.
      routes.push_back(
          {.path = probe.path,
           .async_handler =
               [this, &probe](admin::Reply reply) { app_prober_.Probe(probe, std::move(reply)); },
           .async_timeout = probe.timeout + absl::Seconds(1)});
    }
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

    MESHTLS_RETURN_IF_ERROR(identity_->Start());
    base::LogInfo("sidecar started", {{"workers", absl::StrCat(worker_count)},
                                      {"admin_port", absl::StrCat(admin_->port())}});
    return absl::OkStatus();
  }

  // AddCaptureRuntimes appends transparent mode's runtimes to listeners_: each capture port's,
  // then one per destination rule and inbound port (their names label the authz counters), and
  // lists the capture decisions. listeners_ is complete afterwards, so pointers into it hold.
  absl::Status AddCaptureRuntimes() {
    const TransparentConfig& t = config_.transparent;
    // Appends a runtime without a target and returns its index (its id).
    auto add = [this](Direction direction, std::string name, PeerAuthorizer authorizer) {
      listeners_.push_back(ListenerRuntime{.id = listeners_.size(),
                                           .direction = direction,
                                           .name = std::move(name),
                                           .target = {},
                                           .authorizer = std::move(authorizer)});
      return listeners_.size() - 1;
    };
    std::vector<size_t> rule_listeners;
    if (t.outbound.enabled) {
      outbound_capture_ = std::make_unique<OutboundCapture>();
      outbound_capture_listener_ =
          add(Direction::kOutbound, "transparent-outbound", PeerAuthorizer::AnyVerified());
      listeners_.back().outbound_capture = outbound_capture_.get();
      for (const DestinationRule& rule : t.outbound.rules) {
        PeerAuthorizer authorizer = PeerAuthorizer::AnyVerified();
        if (!rule.expect.empty()) {
          MESHTLS_ASSIGN_OR_RETURN(authorizer, PeerAuthorizer::Create(rule.expect));
        }
        const CaptureAction action =
            rule.action == DestinationRule::Action::kMesh          ? CaptureAction::kMesh
            : rule.action == DestinationRule::Action::kPassthrough ? CaptureAction::kPassthrough
                                                                   : CaptureAction::kDeny;
        rule_listeners.push_back(
            add(Direction::kOutbound, "outbound-rule/" + rule.name, std::move(authorizer)));
        if (rule.transport == Transport::kPooled) {
          listeners_.back().pooled = true;
          listeners_.back().pooled_port = kPooledPort;
        }
        outbound_capture_->rules.push_back(CaptureRule{.name = rule.name,
                                                       .networks = rule.networks,
                                                       .ports = rule.ports,
                                                       .action = action,
                                                       .decision = capture_decisions_.size()});
        capture_decisions_.push_back({Direction::kOutbound, rule.name, action});
      }
      outbound_capture_->no_match_decision = capture_decisions_.size();
      capture_decisions_.push_back({Direction::kOutbound, "(none)", CaptureAction::kDeny});
    }
    std::vector<size_t> port_listeners;
    if (t.inbound.enabled) {
      inbound_capture_ = std::make_unique<InboundCapture>();
      inbound_capture_listener_ =
          add(Direction::kInbound, "transparent-inbound", PeerAuthorizer::AnyVerified());
      listeners_.back().inbound_capture = inbound_capture_.get();
      std::vector<const InboundPortPolicy*> policies = {&t.inbound.default_policy};
      for (const InboundPortPolicy& p : t.inbound.ports) {
        policies.push_back(&p);
      }
      for (const InboundPortPolicy* p : policies) {
        const std::string label = p->port == 0 ? "default" : absl::StrCat(p->port);
        MESHTLS_ASSIGN_OR_RETURN(PeerAuthorizer authorizer, PeerAuthorizer::Create(p->allow));
        port_listeners.push_back(
            add(Direction::kInbound, "inbound-port/" + label, std::move(authorizer)));
        InboundPort port{.port = p->port,
                         .permissive = p->mode == InboundMode::kPermissive,
                         .mesh_decision = capture_decisions_.size()};
        capture_decisions_.push_back({Direction::kInbound, label, CaptureAction::kMesh});
        port.plaintext_decision = capture_decisions_.size();
        capture_decisions_.push_back({Direction::kInbound, label, CaptureAction::kPlaintext});
        port.deny_decision = capture_decisions_.size();
        capture_decisions_.push_back({Direction::kInbound, label, CaptureAction::kDeny});
        (p->port == 0 ? inbound_capture_->default_port : inbound_capture_->ports.emplace_back()) =
            port;
      }
      inbound_capture_->own_ports = config_.OwnPorts();
      // The pooled port: mutual TLS with ALPN h2 from any workload of the trust domain; each
      // stream is then authorized by the port it names.
      port_listeners.push_back(
          add(Direction::kInbound, "inbound-pooled", PeerAuthorizer::AnyVerified()));
      inbound_capture_->pooled_port = kPooledPort;
      inbound_capture_->pooled = InboundPort{
          .port = kPooledPort, .permissive = false, .mesh_decision = capture_decisions_.size()};
      capture_decisions_.push_back({Direction::kInbound, "pooled", CaptureAction::kMesh});
      inbound_capture_->pooled.plaintext_decision = capture_decisions_.size();
      capture_decisions_.push_back({Direction::kInbound, "pooled", CaptureAction::kPlaintext});
      inbound_capture_->pooled.deny_decision = capture_decisions_.size();
      capture_decisions_.push_back({Direction::kInbound, "pooled", CaptureAction::kDeny});
    }
    // listeners_ is complete: point the rules and ports at their runtimes.
    for (size_t i = 0; i < rule_listeners.size(); ++i) {
      outbound_capture_->rules[i].listener = &listeners_[rule_listeners[i]];
    }
    for (size_t i = 0; i < port_listeners.size(); ++i) {
      InboundPort& port = i == 0                           ? inbound_capture_->default_port
                          : i + 1 == port_listeners.size() ? inbound_capture_->pooled
                                                           : inbound_capture_->ports[i - 1];
      port.listener = &listeners_[port_listeners[i]];
    }
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
    for (auto& w : workers_) {
      w->OnNewCredentials();  // pooled connections of the old context drain
    }
    base::LogInfo("tls context published",
                  {{"identity", (*context)->identity().str()},
                   {"generation", absl::StrCat(generation)},
                   {"not_after", absl::FormatTime((*context)->not_after())},
                   {"trust_bundle_roots", absl::StrCat(bundle.trust_bundle.size())}});
    return absl::OkStatus();
  }

  absl::Status ReloadFiles() override { return identity_->Reload(); }

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
    const IdentityStatus identity = identity_->status();
    g.renewal_due = UnixSeconds(identity.renewal_due);
    g.last_renewal = UnixSeconds(identity.last_success);
    g.renewals_success = identity.successes;
    g.renewals_failure = identity.failures;
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

  admin::HttpResponse Certs() const {
    std::shared_ptr<const TlsContext> context = store_.Snapshot();
    absl::StatusOr<std::string> json = CertsJson(context.get(), identity_->status());
    if (!json.ok()) {
      return admin::HttpResponse{.status = 500,
                                 .body = absl::StrCat(json.status().message(), "\n")};
    }
    return admin::HttpResponse{.content_type = "application/json", .body = *std::move(json)};
  }

  // NewIdentitySource makes the source identity.files or identity.certmgr configures, publishing
  // into this server. It is started once the listeners are up.
  absl::StatusOr<std::unique_ptr<IdentitySource>> NewIdentitySource() {
    if (config_.identity_mode == SidecarConfig::IdentityMode::kFiles) {
      return std::make_unique<FilesIdentitySource>(
          FilesIdentityOptions{.cert = config_.files.cert,
                               .key = config_.files.key,
                               .trust_bundle = config_.files.trust_bundle},
          *this);
    }
    return CertmgrIdentitySource::Create({.addresses = config_.certmgr.addresses,
                                          .server_ca = config_.certmgr.server_ca,
                                          .token_file = config_.certmgr.token_file,
                                          .renew_at = config_.certmgr.renew_at},
                                         *this);
  }

  const SidecarConfig config_;
  TlsSettings settings_;
  TlsContextStore store_;
  std::vector<ListenerRuntime> listeners_;
  // Transparent mode (when configured): the capture ports' policies and listener indexes, and
  // the labels of the capture decision counters. Set in Init, immutable once workers run.
  std::unique_ptr<OutboundCapture> outbound_capture_;
  std::unique_ptr<InboundCapture> inbound_capture_;
  std::optional<size_t> outbound_capture_listener_;
  std::optional<size_t> inbound_capture_listener_;
  std::vector<CaptureDecisionLabel> capture_decisions_;
  std::vector<std::unique_ptr<Worker>> workers_;
  AppProber app_prober_;  // outlives admin_, whose routes call it
  std::unique_ptr<admin::AdminServer> admin_;
  // Set once in Init, before the admin server starts; read by the admin server's threads.
  std::unique_ptr<IdentitySource> identity_;
  std::atomic<int> open_connections_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> listeners_up_{false};
  std::atomic<bool> draining_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const SidecarConfig& config,
                                                       const std::string& bound_ports_file) {
  auto server = std::make_unique<ServerImpl>(config);
  MESHTLS_RETURN_IF_ERROR(server->Init(bound_ports_file));
  return server;
}

}  // namespace meshtls::sidecar

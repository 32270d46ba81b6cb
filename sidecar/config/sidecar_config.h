#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/net/cidr.h"

namespace meshtls::sidecar {

// ListenerConfig is one inbound or outbound listener. For inbound, `target` is `forward` (the
// local app) and `peers` is `allow`; for outbound, `target` is `connect` (the remote sidecar)
// and `peers` is `expect`. Peer entries are exact SPIFFE IDs or "<id>/*" prefixes, validated.
// Transport is how an outbound listener or `mesh` rule carries app connections: kTls, one
// mutual-TLS connection each; kPooled, one HTTP/2 CONNECT stream each over a pooled mutual-TLS
// connection (sidecar/proxy/pooled.h).
enum class Transport { kTls, kPooled };

// kPooledPort is where transparent mode's pooled connections go: port 15008 of the peer pod's
// address (Istio's HBONE port), which the peer's inbound capture redirects to its capture port.
inline constexpr uint16_t kPooledPort = 15008;

struct ListenerConfig {
  std::string name;
  base::HostPort listen;
  base::HostPort target;
  std::vector<std::string> peers;
  Transport transport = Transport::kTls;  // outbound only
};

// DestinationRule is one transparent-mode outbound rule: what a captured connection to a
// matching original destination does. Empty `networks` or `ports` match any.
struct DestinationRule {
  enum class Action { kMesh, kPassthrough, kDeny };
  std::string name;
  std::vector<net::Cidr> networks;
  std::vector<uint16_t> ports;
  Action action = Action::kDeny;
  // kMesh: SPIFFE IDs the server must present; empty means any identity the mesh CA issued in
  // the trust domain (the server's inbound allow-list is then the authorization).
  std::vector<std::string> expect;
  Transport transport = Transport::kTls;  // kMesh only
};

// InboundMode: kStrict takes mutual TLS from the mesh only; kPermissive also plain TCP from
// clients outside it (told apart by the first bytes).
enum class InboundMode { kStrict, kPermissive };

// InboundPortPolicy is how transparent inbound treats connections to one app port.
struct InboundPortPolicy {
  uint16_t port = 0;  // 0: the default, for ports without their own entry
  InboundMode mode = InboundMode::kStrict;
  std::vector<std::string> allow;
};

// TransparentConfig is the `transparent` section: capture of the app's own connections by
// packet-filter rules, which `meshtls-sidecar init-network` installs from this same section.
struct TransparentConfig {
  uint32_t proxy_uid = 0;
  struct Outbound {
    bool enabled = false;
    uint16_t port = 0;
    std::vector<uint16_t> exclude_ports;
    std::vector<net::Cidr> exclude_networks;
    std::vector<DestinationRule> rules;
  } outbound;
  struct Inbound {
    bool enabled = false;
    uint16_t port = 0;
    std::vector<uint16_t> exclude_ports;  // as configured; the sidecar's own ports come on top
    InboundPortPolicy default_policy;
    std::vector<InboundPortPolicy> ports;
  } inbound;
  bool enabled() const { return outbound.enabled || inbound.enabled; }
};

// SidecarConfig is the sidecar's configuration, parsed and validated. A plain value. The
// schema, with every field's default and doc, is proto/meshtls/config/v1/sidecar.proto;
// ParseSidecarConfig fills every member, so the struct holds no defaults of its own.
struct SidecarConfig {
  std::string trust_domain;
  enum class IdentityMode { kCertmgr, kFiles };
  IdentityMode identity_mode{};
  struct Certmgr {
    // certmgr replicas, host:port each (`address:` takes one or a list); Sign fails over
    // between them in order, and a name resolving to several addresses counts as one entry.
    std::vector<std::string> addresses;
    std::string server_ca;
    std::string token_file;
    double renew_at = 0;
  } certmgr;
  struct Files {
    std::string cert;
    std::string key;
    std::string trust_bundle;
  } files;
  // The identity this pod must hold, spiffe://<trust_domain>/ns/<ns>/sa/<sa>, from the
  // --namespace and --service-account flags (in Kubernetes, the downward API). When set, a
  // certificate for any other identity is refused and the current one kept. Empty: no check.
  std::string expected_identity;
  std::vector<ListenerConfig> inbound;
  std::vector<ListenerConfig> outbound;
  std::string admin_listen;
  int workers = 0;  // 0: one per core
  struct Tls {
    std::string min_version;  // "1.3" or "1.2" (then ECDHE + AEAD only)
    bool session_resumption = false;
    bool close_on_expiry = false;  // close connections when their certificates expire
  } tls;
  struct Limits {
    absl::Duration handshake_timeout;
    absl::Duration idle_timeout;
    absl::Duration connect_timeout;
    int max_connections = 0;
    absl::Duration drain_timeout;
  } limits;
  // Dns: how names in `connect:` and `forward:` are resolved (each worker resolves and caches
  // on its own, with c-ares).
  struct Dns {
    // DNS servers to ask instead of /etc/resolv.conf's nameservers (IP literals; port 53 unless
    // given). Empty: the system's. Search domains, ndots and /etc/hosts apply either way.
    std::vector<base::HostPort> servers;
    absl::Duration max_ttl;       // the longest an answer is cached
    absl::Duration negative_ttl;  // how long NXDOMAIN or a failure is cached
  } dns;
  base::LogSettings log;
  TransparentConfig transparent;
  // Pooled: the `pooled` section (HTTP/2 CONNECT streams over pooled mutual TLS).
  struct Pooled {
    int max_streams_per_connection = 0;
    int max_connections_per_peer = 0;
    absl::Duration idle_timeout;
    absl::Duration keepalive_interval;
    absl::Duration keepalive_timeout;
  } pooled;
  // AppProbe: one kubelet probe of the app, answered at `path` on the admin endpoint by probing
  // 127.0.0.1:`port` (sidecar/server/app_prober.h).
  struct AppProbe {
    std::string path;
    uint16_t port = 0;
    std::string http_path;  // empty: a TCP connect (or gRPC)
    bool grpc = false;      // a gRPC health Check of grpc_service instead
    std::string grpc_service;
    std::vector<std::pair<std::string, std::string>> http_headers;
    absl::Duration timeout;
  };
  std::vector<AppProbe> app_probes;

  // OwnPorts are the ports the sidecar itself listens on: admin, every explicit listener's
  // (inbound and outbound: the outbound ones are on loopback, where inbound capture forwards)
  // and the capture ports (none is 0 with transparent.inbound: the config refuses that).
  // Transparent inbound never captures them and never forwards to them: a peer must not reach
  // the sidecar's own listeners through it.
  std::vector<uint16_t> OwnPorts() const;
};

// ParseSidecarConfig parses and validates YAML. With `check_files`, the files the config names
// must exist and be readable. Errors are one line naming the field (and its line).
absl::StatusOr<SidecarConfig> ParseSidecarConfig(absl::string_view yaml, bool check_files = true);

}  // namespace meshtls::sidecar

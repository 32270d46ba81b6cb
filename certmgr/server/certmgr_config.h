#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "certmgr/ca/issuance_policy.h"
#include "common/base/log.h"

namespace meshtls::certmgr {

// CertmgrConfig is certmgr's configuration file, parsed and validated. A plain value.
//
//   trust_domain: example.org
//   listen: 0.0.0.0:8443                 # gRPC over TLS
//   server_names: [localhost, certmgr.meshtls-system.svc]  # DNS SANs of the serving cert
//   server_ips: [127.0.0.1, "::1"]       # IP SANs of the serving cert
//   admin: {listen: 127.0.0.1:15010}
//   ca:
//     dir: /var/lib/meshtls/ca           # created with a new root when empty; or:
//     cert: ca.pem, key: ca.key, trust_bundle: roots.pem
//     ttl: 87600h                        # lifetime of a root created in `dir`
//     rotation: {auto: true, prepare_at: 0.6, activate_at: 0.8}
//   issuance: {default_ttl: 24h, max_ttl: 24h, backdate: 2m}
//   authenticators:
//     join_tokens: {file: /etc/meshtls/join-tokens}
//     kubernetes:                        # projected ServiceAccount tokens
//       issuer: https://kubernetes.default.svc.cluster.local
//       audience: meshtls
//       jwks_file: /etc/meshtls/k8s-jwks.json
//       allowed_namespaces: [default]    # default: every namespace (applied live)
//       max_token_lifetime: 24h          # longest exp - iat accepted
//       require_pod_binding: true        # only tokens projected into a pod
//   deny: [spiffe://example.org/ns/x/sa/y, spiffe://example.org/ns/old/*]  # applied live
//   limits: {max_watchers: 10000, max_watchers_per_address: 16}
//   log: {level: info, format: text}
struct CertmgrConfig {
  std::string trust_domain;
  std::string listen = "0.0.0.0:8443";
  std::vector<std::string> server_names = {"localhost"};
  std::vector<std::string> server_ips = {"127.0.0.1", "::1"};
  std::string admin_listen = "127.0.0.1:15010";
  std::string ca_dir;
  std::string ca_cert;
  std::string ca_key;
  std::string ca_trust_bundle;
  absl::Duration ca_ttl = absl::Hours(24 * 365 * 10);
  // Automatic CA rotation (ca.dir only), as fractions of the active root's lifetime.
  bool rotation_auto = true;
  double rotation_prepare_at = 0.6;
  double rotation_activate_at = 0.8;
  IssuancePolicy issuance;
  std::string join_tokens_file;
  struct Kubernetes {
    bool enabled = false;
    std::string issuer;
    std::string audience = "meshtls";
    std::string jwks_file;
    std::vector<std::string> allowed_namespaces;  // empty: all
    absl::Duration max_token_lifetime = absl::Hours(24);
    bool require_pod_binding = true;
  } kubernetes;
  // SPIFFE IDs (exact, or "<id>/*" for every ID below) that may neither bootstrap nor renew.
  std::vector<std::string> deny;
  // WatchTrustBundle streams: in all, and from one source address.
  int max_watchers = 10000;
  int max_watchers_per_address = 16;
  base::LogLevel log_level = base::LogLevel::kInfo;
  base::LogFormat log_format = base::LogFormat::kText;
};

// ParseCertmgrConfig parses and validates the YAML text. Errors name the field and line.
absl::StatusOr<CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml);

}  // namespace meshtls::certmgr

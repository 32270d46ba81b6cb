#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "certmgr/ca/issuance_policy.h"
#include "certmgr/inject/injector.h"
#include "common/base/log.h"

namespace meshtls::certmgr {

// CertmgrConfig is certmgr's configuration file, parsed and validated. A plain value. The
// schema, with every field's default and doc, is proto/meshtls/config/v1/certmgr.proto;
// ParseCertmgrConfig fills every member. (`issuance` is a ca::IssuancePolicy, whose own
// defaults serve callers that have no config, such as tests; the schema's are the ones in force.)
struct CertmgrConfig {
  std::string trust_domain;
  std::string listen;
  std::vector<std::string> server_names;
  std::vector<std::string> server_ips;
  std::string admin_listen;
  std::string ca_dir;
  std::string ca_cert;
  std::string ca_key;
  std::string ca_trust_bundle;
  absl::Duration ca_ttl;
  // Automatic CA rotation (ca.dir only), as fractions of the active root's lifetime.
  bool rotation_auto = false;
  double rotation_prepare_at = 0;
  double rotation_activate_at = 0;
  IssuancePolicy issuance;
  std::string join_tokens_file;
  struct Kubernetes {
    bool enabled = false;
    std::string issuer;
    std::string audience;
    std::string jwks_file;
    std::vector<std::string> allowed_namespaces;  // empty: all
    absl::Duration max_token_lifetime;
    bool require_pod_binding = false;
  } kubernetes;
  // SPIFFE IDs (exact, or "<id>/*" for every ID below) that may neither bootstrap nor renew.
  std::vector<std::string> deny;
  // WatchTrustBundle streams: in all, and from one source address.
  int max_watchers = 0;
  int max_watchers_per_address = 0;
  base::LogSettings log;
  // The `injection` section with the trust domain and the token audience: the mesh-wide inputs
  // of the sidecar injector.
  inject::MeshSettings injection;
  // injection.webhook: the admission webhook's listener (off when `listen` is empty).
  struct Webhook {
    std::string listen;
    std::vector<std::string> server_names;
    size_t max_request_bytes = 0;
    absl::Duration request_timeout;
    int max_connections = 0;
    int max_connections_per_address = 0;
  } webhook;
};

// ParseCertmgrConfig parses and validates the YAML text. Errors name the field and line.
absl::StatusOr<CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml);

}  // namespace meshtls::certmgr

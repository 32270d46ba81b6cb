#include "certmgr/server/certmgr_config.h"

#include <arpa/inet.h>

#include "absl/strings/str_cat.h"
#include "common/base/host_port.h"
#include "common/base/status_macros.h"
#include "common/config/duration.h"
#include "common/config/yaml_loader.h"
#include "common/net/cidr.h"
#include "common/pki/spiffe_id.h"
#include "meshtls/config/v1/certmgr.pb.h"

namespace meshtls::certmgr {
namespace {

using config::LoadedFields;
using config::ToDuration;
using Schema = config::v1::Certmgr;

// ListenAddress reads a listen address (config::ReadListenAddress) in its canonical spelling.
absl::StatusOr<std::string> ListenAddress(const LoadedFields& fields, absl::string_view path,
                                          absl::string_view text) {
  MESHTLS_ASSIGN_OR_RETURN(base::HostPort hp, config::ReadListenAddress(fields, path, text));
  return hp.ToString();
}

absl::Status ReadCa(const Schema& s, const LoadedFields& fields, CertmgrConfig& c) {
  if (!fields.Has("ca")) {
    return absl::InvalidArgumentError("ca: required (ca.dir, or ca.cert and ca.key)");
  }
  const Schema::Ca& ca = s.ca();
  c.ca_dir = ca.dir();
  c.ca_cert = ca.cert();
  c.ca_key = ca.key();
  c.ca_trust_bundle = ca.trust_bundle();
  c.ca_ttl = ToDuration(ca.ttl());
  c.rotation_auto = ca.rotation().auto_();
  c.rotation_prepare_at = ca.rotation().prepare_at();
  c.rotation_activate_at = ca.rotation().activate_at();
  if (fields.Has("ca.rotation") &&
      !(c.rotation_prepare_at > 0 && c.rotation_prepare_at < c.rotation_activate_at &&
        c.rotation_activate_at < 1)) {
    return fields.Error("ca.rotation",
                        "need 0 < prepare_at < activate_at < 1 (fractions of the root's life)");
  }
  const bool files = !c.ca_cert.empty() || !c.ca_key.empty();
  if (c.ca_dir.empty() == !files) {
    return fields.Error("ca", "set exactly one of ca.dir or ca.cert + ca.key");
  }
  if (files && (c.ca_cert.empty() || c.ca_key.empty())) {
    return fields.Error("ca", "ca.cert and ca.key go together");
  }
  return absl::OkStatus();
}

absl::Status ReadAuthenticators(const Schema& s, const LoadedFields& fields, CertmgrConfig& c) {
  const Schema::Authenticators& auth = s.authenticators();
  c.join_tokens_file = auth.join_tokens().file();
  if (!fields.Has("authenticators.kubernetes")) {
    return absl::OkStatus();
  }
  const Schema::Kubernetes& k = auth.kubernetes();
  c.kubernetes.enabled = true;
  c.kubernetes.issuer = k.issuer();
  c.kubernetes.audience = k.audience();
  c.kubernetes.jwks_file = k.jwks_file();
  c.kubernetes.allowed_namespaces.assign(k.allowed_namespaces().begin(),
                                         k.allowed_namespaces().end());
  c.kubernetes.max_token_lifetime = ToDuration(k.max_token_lifetime());
  c.kubernetes.require_pod_binding = k.require_pod_binding();
  if (c.kubernetes.issuer.empty() || c.kubernetes.audience.empty()) {
    return fields.Error("authenticators.kubernetes", "issuer and audience must not be empty");
  }
  return absl::OkStatus();
}

absl::Status ReadInjection(const Schema& s, const LoadedFields& fields, CertmgrConfig& c) {
  const Schema::Injection& in = s.injection();
  inject::MeshSettings& m = c.injection;
  m.trust_domain = c.trust_domain;
  m.image = in.image();
  m.image_pull_policy = in.image_pull_policy();
  if (m.image.empty() ||
      !(m.image_pull_policy == "Always" || m.image_pull_policy == "IfNotPresent" ||
        m.image_pull_policy == "Never")) {
    return fields.Error("injection",
                        "image must be set, image_pull_policy one of Always, "
                        "IfNotPresent, Never");
  }
  m.certmgr_address = in.certmgr_address();
  if (absl::StatusOr<base::HostPort> hp = base::ParseHostPort(m.certmgr_address); !hp.ok()) {
    return fields.Error("injection.certmgr_address", hp.status().message());
  }
  m.ca_bundle_config_map = in.ca_bundle_config_map();
  m.token_audience = c.kubernetes.enabled ? c.kubernetes.audience : "meshtls";
  m.proxy_uid = in.proxy_uid();
  m.inbound_mode = in.inbound_mode();
  if (m.inbound_mode != "strict" && m.inbound_mode != "permissive") {
    return fields.Error("injection.inbound_mode", "must be strict or permissive");
  }
  m.inbound_allow.assign(in.inbound_allow().begin(), in.inbound_allow().end());
  for (const std::string& pattern : m.inbound_allow) {
    absl::StatusOr<pki::SpiffeIdMatcher> matcher = pki::SpiffeIdMatcher::Parse(pattern);
    if (!matcher.ok()) {
      return fields.Error("injection.inbound_allow", matcher.status().message());
    }
  }
  for (absl::string_view list : {"mesh_networks", "exclude_outbound_networks"}) {
    const auto& networks =
        list == "mesh_networks" ? in.mesh_networks() : in.exclude_outbound_networks();
    for (const std::string& n : networks) {
      if (absl::StatusOr<net::Cidr> cidr = net::Cidr::Parse(n); !cidr.ok()) {
        return fields.Error(absl::StrCat("injection.", list), cidr.status().message());
      }
    }
  }
  m.mesh_networks.assign(in.mesh_networks().begin(), in.mesh_networks().end());
  m.exclude_outbound_networks.assign(in.exclude_outbound_networks().begin(),
                                     in.exclude_outbound_networks().end());
  m.other_destinations = in.other_destinations();
  if (m.other_destinations != "passthrough" && m.other_destinations != "deny") {
    return fields.Error("injection.other_destinations", "must be passthrough or deny");
  }
  m.exclude_outbound_ports.clear();
  for (int32_t port : in.exclude_outbound_ports()) {
    if (port < 1 || port > 65535) {
      return fields.Error("injection.exclude_outbound_ports",
                          absl::StrCat(port, " is not a port number"));
    }
    m.exclude_outbound_ports.push_back(port);
  }
  const Schema::Webhook& w = in.webhook();
  if (!w.listen().empty()) {
    MESHTLS_ASSIGN_OR_RETURN(c.webhook.listen,
                             ListenAddress(fields, "injection.webhook.listen", w.listen()));
  }
  c.webhook.server_names.assign(w.server_names().begin(), w.server_names().end());
  if (c.webhook.server_names.empty()) {
    return fields.Error("injection.webhook.server_names", "must name the webhook's Service");
  }
  c.webhook.max_request_bytes = static_cast<size_t>(w.max_request_bytes());
  c.webhook.request_timeout = ToDuration(w.request_timeout());
  c.webhook.max_connections = w.max_connections();
  c.webhook.max_connections_per_address = w.max_connections_per_address();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml) {
  Schema s;
  MESHTLS_ASSIGN_OR_RETURN(LoadedFields fields, config::LoadYaml(yaml, s));
  CertmgrConfig c;
  c.trust_domain = s.trust_domain();
  if (absl::Status st = pki::SpiffeId::ValidateTrustDomain(c.trust_domain); !st.ok()) {
    return fields.Error("trust_domain", st.message());
  }
  MESHTLS_ASSIGN_OR_RETURN(c.listen, ListenAddress(fields, "listen", s.listen()));
  c.server_names.assign(s.server_names().begin(), s.server_names().end());
  c.server_ips.assign(s.server_ips().begin(), s.server_ips().end());
  for (const std::string& ip : c.server_ips) {
    unsigned char buf[16];
    if (inet_pton(AF_INET, ip.c_str(), buf) != 1 && inet_pton(AF_INET6, ip.c_str(), buf) != 1) {
      return fields.Error("server_ips", absl::StrCat("\"", ip, "\" is not an IP address"));
    }
  }
  MESHTLS_ASSIGN_OR_RETURN(c.admin_listen,
                           ListenAddress(fields, "admin.listen", s.admin().listen()));
  MESHTLS_RETURN_IF_ERROR(ReadCa(s, fields, c));

  c.issuance.default_ttl = ToDuration(s.issuance().default_ttl());
  c.issuance.max_ttl = ToDuration(s.issuance().max_ttl());
  c.issuance.min_ttl = ToDuration(s.issuance().min_ttl());
  c.issuance.backdate = ToDuration(s.issuance().backdate());
  if (c.issuance.default_ttl > c.issuance.max_ttl && !fields.Has("issuance.max_ttl")) {
    c.issuance.max_ttl = c.issuance.default_ttl;  // raising the default alone raises the cap
  }
  MESHTLS_RETURN_IF_ERROR(c.issuance.Validate());

  MESHTLS_RETURN_IF_ERROR(ReadAuthenticators(s, fields, c));
  MESHTLS_RETURN_IF_ERROR(ReadInjection(s, fields, c));
  c.deny.assign(s.deny().begin(), s.deny().end());
  for (const std::string& pattern : c.deny) {
    absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(pattern);
    if (!m.ok()) {
      return fields.Error("deny", m.status().message());
    }
    if (m->trust_domain() != c.trust_domain) {
      return fields.Error("deny",
                          absl::StrCat(pattern, " is not in trust domain ", c.trust_domain));
    }
  }
  c.max_watchers = s.limits().max_watchers();
  c.max_watchers_per_address = s.limits().max_watchers_per_address();

  MESHTLS_ASSIGN_OR_RETURN(c.log,
                           config::ReadLogSettings(fields, s.log().level(), s.log().format()));
  return c;
}

}  // namespace meshtls::certmgr

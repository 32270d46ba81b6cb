#include "certmgr/server/certmgr_config.h"

#include <arpa/inet.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/base/yaml.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::certmgr {
namespace {

using base::ConfigMap;
using base::YamlNode;

absl::Status ReadAddress(ConfigMap& map, absl::string_view key, std::string& out) {
  if (const YamlNode* n = map.Take(key)) {
    MESHTLS_ASSIGN_OR_RETURN(out, base::ReadListenAddress(*n, map.FieldPath(key)));
  }
  return absl::OkStatus();
}

absl::Status ReadOptionalString(ConfigMap& map, absl::string_view key, std::string& out) {
  if (const YamlNode* n = map.Take(key)) {
    MESHTLS_ASSIGN_OR_RETURN(out, base::ReadString(*n, map.FieldPath(key)));
  }
  return absl::OkStatus();
}

absl::Status ReadOptionalDuration(ConfigMap& map, absl::string_view key, absl::Duration& out) {
  if (const YamlNode* n = map.Take(key)) {
    MESHTLS_ASSIGN_OR_RETURN(out, base::ReadDuration(*n, map.FieldPath(key)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml) {
  MESHTLS_ASSIGN_OR_RETURN(YamlNode root, base::ParseYaml(yaml));
  MESHTLS_ASSIGN_OR_RETURN(ConfigMap top, ConfigMap::Of(root, ""));
  CertmgrConfig c;
  MESHTLS_ASSIGN_OR_RETURN(c.trust_domain, pki::ReadTrustDomain(top));
  MESHTLS_RETURN_IF_ERROR(ReadAddress(top, "listen", c.listen));
  if (const YamlNode* n = top.Take("server_names")) {
    MESHTLS_ASSIGN_OR_RETURN(c.server_names, base::ReadStringList(*n, "server_names"));
  }
  if (const YamlNode* n = top.Take("server_ips")) {
    MESHTLS_ASSIGN_OR_RETURN(c.server_ips, base::ReadStringList(*n, "server_ips"));
    for (const std::string& ip : c.server_ips) {
      unsigned char buf[16];
      if (inet_pton(AF_INET, ip.c_str(), buf) != 1 && inet_pton(AF_INET6, ip.c_str(), buf) != 1) {
        return base::FieldError("server_ips", *n,
                                absl::StrCat("\"", ip, "\" is not an IP address"));
      }
    }
  }
  if (const YamlNode* n = top.Take("admin")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap admin, ConfigMap::Of(*n, "admin"));
    MESHTLS_RETURN_IF_ERROR(ReadAddress(admin, "listen", c.admin_listen));
    MESHTLS_RETURN_IF_ERROR(admin.Finish());
  }
  const YamlNode* ca_node = top.Take("ca");
  if (ca_node == nullptr) {
    return absl::InvalidArgumentError("ca: required (ca.dir, or ca.cert and ca.key)");
  }
  MESHTLS_ASSIGN_OR_RETURN(ConfigMap ca, ConfigMap::Of(*ca_node, "ca"));
  MESHTLS_RETURN_IF_ERROR(ReadOptionalString(ca, "dir", c.ca_dir));
  MESHTLS_RETURN_IF_ERROR(ReadOptionalString(ca, "cert", c.ca_cert));
  MESHTLS_RETURN_IF_ERROR(ReadOptionalString(ca, "key", c.ca_key));
  MESHTLS_RETURN_IF_ERROR(ReadOptionalString(ca, "trust_bundle", c.ca_trust_bundle));
  MESHTLS_RETURN_IF_ERROR(ReadOptionalDuration(ca, "ttl", c.ca_ttl));
  if (const YamlNode* r = ca.Take("rotation")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap rotation, ConfigMap::Of(*r, "ca.rotation"));
    if (const YamlNode* v = rotation.Take("auto")) {
      MESHTLS_ASSIGN_OR_RETURN(c.rotation_auto, base::ReadBool(*v, "ca.rotation.auto"));
    }
    if (const YamlNode* v = rotation.Take("prepare_at")) {
      MESHTLS_ASSIGN_OR_RETURN(c.rotation_prepare_at,
                               base::ReadNumber(*v, "ca.rotation.prepare_at"));
    }
    if (const YamlNode* v = rotation.Take("activate_at")) {
      MESHTLS_ASSIGN_OR_RETURN(c.rotation_activate_at,
                               base::ReadNumber(*v, "ca.rotation.activate_at"));
    }
    MESHTLS_RETURN_IF_ERROR(rotation.Finish());
    if (!(c.rotation_prepare_at > 0 && c.rotation_prepare_at < c.rotation_activate_at &&
          c.rotation_activate_at < 1)) {
      return base::FieldError(
          "ca.rotation", *r,
          "need 0 < prepare_at < activate_at < 1 (fractions of the root's life)");
    }
  }
  MESHTLS_RETURN_IF_ERROR(ca.Finish());
  const bool files = !c.ca_cert.empty() || !c.ca_key.empty();
  if (c.ca_dir.empty() == !files) {
    return base::FieldError("ca", *ca_node, "set exactly one of ca.dir or ca.cert + ca.key");
  }
  if (files && (c.ca_cert.empty() || c.ca_key.empty())) {
    return base::FieldError("ca", *ca_node, "ca.cert and ca.key go together");
  }
  if (c.ca_ttl < absl::Hours(1)) {
    return base::FieldError("ca.ttl", *ca_node, "must be at least 1h");
  }
  if (const YamlNode* n = top.Take("issuance")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap is, ConfigMap::Of(*n, "issuance"));
    MESHTLS_RETURN_IF_ERROR(ReadOptionalDuration(is, "default_ttl", c.issuance.default_ttl));
    MESHTLS_RETURN_IF_ERROR(ReadOptionalDuration(is, "max_ttl", c.issuance.max_ttl));
    MESHTLS_RETURN_IF_ERROR(ReadOptionalDuration(is, "min_ttl", c.issuance.min_ttl));
    if (const YamlNode* b = is.Take("backdate")) {
      absl::Duration d;
      if (b->kind == YamlNode::Kind::kScalar && b->scalar == "0") {
        d = absl::ZeroDuration();
      } else {
        MESHTLS_ASSIGN_OR_RETURN(d, base::ReadDuration(*b, "issuance.backdate"));
      }
      c.issuance.backdate = d;
    }
    MESHTLS_RETURN_IF_ERROR(is.Finish());
    if (c.issuance.default_ttl > c.issuance.max_ttl && n->Find("max_ttl") == nullptr) {
      c.issuance.max_ttl = c.issuance.default_ttl;  // raising the default alone raises the cap
    }
  }
  if (absl::Status s = c.issuance.Validate(); !s.ok()) {
    return s;
  }
  if (const YamlNode* n = top.Take("authenticators")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap auth, ConfigMap::Of(*n, "authenticators"));
    if (const YamlNode* jt = auth.Take("join_tokens")) {
      MESHTLS_ASSIGN_OR_RETURN(ConfigMap j, ConfigMap::Of(*jt, "authenticators.join_tokens"));
      const YamlNode* file = j.Take("file");
      if (file == nullptr) {
        return base::FieldError("authenticators.join_tokens.file", *jt, "required");
      }
      MESHTLS_ASSIGN_OR_RETURN(c.join_tokens_file,
                               base::ReadString(*file, "authenticators.join_tokens.file"));
      MESHTLS_RETURN_IF_ERROR(j.Finish());
    }
    if (const YamlNode* k8s = auth.Take("kubernetes")) {
      const std::string path = "authenticators.kubernetes";
      MESHTLS_ASSIGN_OR_RETURN(ConfigMap k, ConfigMap::Of(*k8s, path));
      c.kubernetes.enabled = true;
      const YamlNode* issuer = k.Take("issuer");
      const YamlNode* jwks = k.Take("jwks_file");
      if (issuer == nullptr || jwks == nullptr) {
        return base::FieldError(issuer == nullptr ? path + ".issuer" : path + ".jwks_file", *k8s,
                                "required");
      }
      MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.issuer, base::ReadString(*issuer, path + ".issuer"));
      MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.jwks_file,
                               base::ReadString(*jwks, path + ".jwks_file"));
      if (const YamlNode* a = k.Take("audience")) {
        MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.audience, base::ReadString(*a, path + ".audience"));
      }
      if (const YamlNode* n = k.Take("allowed_namespaces")) {
        MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.allowed_namespaces,
                                 base::ReadStringList(*n, path + ".allowed_namespaces"));
      }
      if (const YamlNode* n = k.Take("max_token_lifetime")) {
        MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.max_token_lifetime,
                                 base::ReadDuration(*n, path + ".max_token_lifetime"));
        if (c.kubernetes.max_token_lifetime < absl::Minutes(10) ||
            c.kubernetes.max_token_lifetime > absl::Hours(24 * 7)) {
          return base::FieldError(path + ".max_token_lifetime", *n, "must be between 10m and 168h");
        }
      }
      if (const YamlNode* n = k.Take("require_pod_binding")) {
        MESHTLS_ASSIGN_OR_RETURN(c.kubernetes.require_pod_binding,
                                 base::ReadBool(*n, path + ".require_pod_binding"));
      }
      MESHTLS_RETURN_IF_ERROR(k.Finish());
      if (c.kubernetes.issuer.empty() || c.kubernetes.audience.empty()) {
        return base::FieldError(path, *k8s, "issuer and audience must not be empty");
      }
    }
    MESHTLS_RETURN_IF_ERROR(auth.Finish());
  }
  if (const YamlNode* n = top.Take("deny")) {
    MESHTLS_ASSIGN_OR_RETURN(c.deny, base::ReadStringList(*n, "deny"));
    for (const std::string& pattern : c.deny) {
      absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(pattern);
      if (!m.ok()) {
        return base::FieldError("deny", *n, m.status().message());
      }
      if (m->trust_domain() != c.trust_domain) {
        return base::FieldError("deny", *n,
                                absl::StrCat(pattern, " is not in trust domain ", c.trust_domain));
      }
    }
  }
  if (const YamlNode* n = top.Take("limits")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap limits, ConfigMap::Of(*n, "limits"));
    for (auto [key, out] : {std::pair<const char*, int*>{"max_watchers", &c.max_watchers},
                            {"max_watchers_per_address", &c.max_watchers_per_address}}) {
      if (const YamlNode* v = limits.Take(key)) {
        const std::string field = absl::StrCat("limits.", key);
        MESHTLS_ASSIGN_OR_RETURN(double d, base::ReadNumber(*v, field));
        if (d < 1 || d > 1'000'000 || d != static_cast<int>(d)) {
          return base::FieldError(field, *v, "must be a whole number from 1 to 1000000");
        }
        *out = static_cast<int>(d);
      }
    }
    MESHTLS_RETURN_IF_ERROR(limits.Finish());
  }
  if (const YamlNode* n = top.Take("log")) {
    MESHTLS_RETURN_IF_ERROR(base::ReadLogSection(*n, "log", c.log_level, c.log_format));
  }
  MESHTLS_RETURN_IF_ERROR(top.Finish());
  return c;
}

}  // namespace meshtls::certmgr

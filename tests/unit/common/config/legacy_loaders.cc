// The pre-schema loaders, verbatim but for their namespace (see legacy_loaders.h).
#include "tests/unit/common/config/legacy_loaders.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/base/yaml.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::legacy {
namespace {
absl::StatusOr<std::string> ReadTrustDomain(base::ConfigMap& top) {
  const base::YamlNode* node = top.Take("trust_domain");
  if (node == nullptr) {
    return absl::InvalidArgumentError("trust_domain: required");
  }
  absl::StatusOr<std::string> trust_domain = base::ReadString(*node, "trust_domain");
  if (!trust_domain.ok()) {
    return trust_domain.status();
  }
  if (absl::Status s = pki::SpiffeId::ValidateTrustDomain(*trust_domain); !s.ok()) {
    return base::FieldError("trust_domain", *node, s.message());
  }
  return trust_domain;
}
}  // namespace
namespace sidecar_impl {
using namespace ::meshtls::sidecar;  // NOLINT(google-build-using-namespace): a verbatim copy
namespace {

using base::ConfigMap;
using base::YamlNode;

absl::Status ReadFilePath(ConfigMap& map, absl::string_view key, bool required, bool check_files,
                          const YamlNode& parent, std::string& out) {
  const YamlNode* n = map.Take(key);
  if (n == nullptr) {
    if (required) {
      return base::FieldError(map.FieldPath(key), parent, "required");
    }
    return absl::OkStatus();
  }
  MESHTLS_ASSIGN_OR_RETURN(out, base::ReadString(*n, map.FieldPath(key)));
  if (out.empty()) {
    return base::FieldError(map.FieldPath(key), *n, "must not be empty");
  }
  if (check_files && ::access(out.c_str(), R_OK) != 0) {
    return base::FieldError(map.FieldPath(key), *n,
                            absl::StrCat("file ", out, " does not exist or is not readable"));
  }
  return absl::OkStatus();
}

absl::StatusOr<base::HostPort> ReadHostPort(ConfigMap& map, absl::string_view key,
                                            const YamlNode& parent, bool listen) {
  const YamlNode* n = map.Take(key);
  if (n == nullptr) {
    return base::FieldError(map.FieldPath(key), parent, "required");
  }
  MESHTLS_ASSIGN_OR_RETURN(std::string text, base::ReadString(*n, map.FieldPath(key)));
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(text, /*allow_port_zero=*/listen);
  if (!hp.ok()) {
    return base::FieldError(map.FieldPath(key), *n, hp.status().message());
  }
  if (listen && !hp->host_is_ip) {
    return base::ReadListenAddress(*n, map.FieldPath(key)).status();  // names the problem
  }
  return *hp;
}

absl::StatusOr<std::vector<ListenerConfig>> ReadListeners(const YamlNode& node,
                                                          absl::string_view section,
                                                          absl::string_view target_key,
                                                          absl::string_view peers_key,
                                                          const std::string& trust_domain) {
  std::vector<ListenerConfig> out;
  if (node.kind == YamlNode::Kind::kNull) {
    return out;
  }
  if (node.kind != YamlNode::Kind::kSequence) {
    return base::FieldError(section, node, "must be a list of listeners");
  }
  for (size_t i = 0; i < node.items.size(); ++i) {
    const YamlNode& item = node.items[i];
    const std::string path = absl::StrCat(section, "[", i, "]");
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap map, ConfigMap::Of(item, path));
    ListenerConfig l;
    const YamlNode* name = map.Take("name");
    if (name == nullptr) {
      return base::FieldError(map.FieldPath("name"), item, "required");
    }
    MESHTLS_ASSIGN_OR_RETURN(l.name, base::ReadString(*name, map.FieldPath("name")));
    if (l.name.empty() || l.name.size() > 64 ||
        l.name.find_first_not_of(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") !=
            std::string::npos) {
      return base::FieldError(map.FieldPath("name"), *name,
                              "must be 1-64 characters of A-Z a-z 0-9 _ - .");
    }
    MESHTLS_ASSIGN_OR_RETURN(l.listen, ReadHostPort(map, "listen", item, /*listen=*/true));
    MESHTLS_ASSIGN_OR_RETURN(l.target, ReadHostPort(map, target_key, item, /*listen=*/false));
    const YamlNode* peers = map.Take(peers_key);
    if (peers == nullptr) {
      return base::FieldError(map.FieldPath(peers_key), item,
                              "required: the SPIFFE IDs (or prefixes ending in /*) to accept");
    }
    MESHTLS_ASSIGN_OR_RETURN(l.peers, base::ReadStringList(*peers, map.FieldPath(peers_key)));
    if (l.peers.empty()) {
      return base::FieldError(map.FieldPath(peers_key), *peers, "must list at least one SPIFFE ID");
    }
    for (const std::string& p : l.peers) {
      absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(p);
      if (!m.ok()) {
        return base::FieldError(map.FieldPath(peers_key), *peers, m.status().message());
      }
      if (m->trust_domain() != trust_domain) {
        return base::FieldError(map.FieldPath(peers_key), *peers,
                                absl::StrCat("\"", p, "\" is not in trust domain ", trust_domain));
      }
    }
    MESHTLS_RETURN_IF_ERROR(map.Finish());
    out.push_back(std::move(l));
  }
  return out;
}

// ParseDnsServer accepts an IP literal with an optional port: 10.96.0.10, 10.96.0.10:5353,
// fd00::10, [fd00::10]:5353.
absl::StatusOr<base::HostPort> ParseDnsServer(const std::string& text) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(text);
  if (!hp.ok()) {
    const bool bare_ipv6 = text.find(':') != std::string::npos && text.front() != '[';
    hp = base::ParseHostPort(bare_ipv6 ? absl::StrCat("[", text, "]:53")
                                       : absl::StrCat(text, ":53"));
  }
  if (!hp.ok() || !hp->host_is_ip) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", text, "\" is not an IP address with an optional port (10.96.0.10, [fd00::10]:53)"));
  }
  return *hp;
}

absl::Status ReadDurationField(ConfigMap& map, absl::string_view key, absl::Duration& out) {
  if (const YamlNode* n = map.Take(key)) {
    MESHTLS_ASSIGN_OR_RETURN(out, base::ReadDuration(*n, map.FieldPath(key)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SidecarConfig> ParseSidecarConfig(absl::string_view yaml, bool check_files) {
  MESHTLS_ASSIGN_OR_RETURN(YamlNode root, base::ParseYaml(yaml));
  if (root.kind == YamlNode::Kind::kNull) {
    return absl::InvalidArgumentError("the configuration is empty");
  }
  MESHTLS_ASSIGN_OR_RETURN(ConfigMap top, ConfigMap::Of(root, ""));
  SidecarConfig c;

  MESHTLS_ASSIGN_OR_RETURN(c.trust_domain, ReadTrustDomain(top));

  const YamlNode* identity = top.Take("identity");
  if (identity == nullptr) {
    return absl::InvalidArgumentError("identity: required (identity.certmgr or identity.files)");
  }
  MESHTLS_ASSIGN_OR_RETURN(ConfigMap id, ConfigMap::Of(*identity, "identity"));
  const YamlNode* cm = id.Take("certmgr");
  const YamlNode* files = id.Take("files");
  MESHTLS_RETURN_IF_ERROR(id.Finish());
  if ((cm == nullptr) == (files == nullptr)) {
    return base::FieldError("identity", *identity, "set exactly one of certmgr or files");
  }
  if (cm != nullptr) {
    c.identity_mode = SidecarConfig::IdentityMode::kCertmgr;
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap m, ConfigMap::Of(*cm, "identity.certmgr"));
    const YamlNode* address = m.Take("address");
    if (address == nullptr) {
      return base::FieldError("identity.certmgr.address", *cm, "required");
    }
    MESHTLS_ASSIGN_OR_RETURN(c.certmgr.addresses,
                             base::ReadStringList(*address, "identity.certmgr.address"));
    if (c.certmgr.addresses.empty()) {
      return base::FieldError("identity.certmgr.address", *address,
                              "must name at least one host:port");
    }
    std::set<std::string> seen;
    for (const std::string& a : c.certmgr.addresses) {
      if (absl::StatusOr<base::HostPort> hp = base::ParseHostPort(a); !hp.ok()) {
        return base::FieldError("identity.certmgr.address", *address,
                                absl::StrCat("\"", a, "\": ", hp.status().message()));
      }
      if (!seen.insert(a).second) {
        return base::FieldError("identity.certmgr.address", *address,
                                absl::StrCat("\"", a, "\" is listed twice"));
      }
    }
    MESHTLS_RETURN_IF_ERROR(
        ReadFilePath(m, "server_ca", /*required=*/true, check_files, *cm, c.certmgr.server_ca));
    MESHTLS_RETURN_IF_ERROR(
        ReadFilePath(m, "token_file", /*required=*/false, check_files, *cm, c.certmgr.token_file));
    if (const YamlNode* r = m.Take("renew_at")) {
      MESHTLS_ASSIGN_OR_RETURN(c.certmgr.renew_at,
                               base::ReadNumber(*r, "identity.certmgr.renew_at"));
      if (c.certmgr.renew_at < 0.1 || c.certmgr.renew_at > 0.9) {
        return base::FieldError("identity.certmgr.renew_at", *r, "must be between 0.1 and 0.9");
      }
    }
    MESHTLS_RETURN_IF_ERROR(m.Finish());
  } else {
    c.identity_mode = SidecarConfig::IdentityMode::kFiles;
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap m, ConfigMap::Of(*files, "identity.files"));
    MESHTLS_RETURN_IF_ERROR(ReadFilePath(m, "cert", true, check_files, *files, c.files.cert));
    MESHTLS_RETURN_IF_ERROR(ReadFilePath(m, "key", true, check_files, *files, c.files.key));
    MESHTLS_RETURN_IF_ERROR(
        ReadFilePath(m, "trust_bundle", true, check_files, *files, c.files.trust_bundle));
    MESHTLS_RETURN_IF_ERROR(m.Finish());
  }

  if (const YamlNode* n = top.Take("inbound")) {
    MESHTLS_ASSIGN_OR_RETURN(c.inbound,
                             ReadListeners(*n, "inbound", "forward", "allow", c.trust_domain));
  }
  if (const YamlNode* n = top.Take("outbound")) {
    MESHTLS_ASSIGN_OR_RETURN(c.outbound,
                             ReadListeners(*n, "outbound", "connect", "expect", c.trust_domain));
  }
  if (c.inbound.empty() && c.outbound.empty()) {
    return absl::InvalidArgumentError("inbound, outbound: configure at least one listener");
  }
  std::set<std::string> names;
  std::set<std::string> addresses;
  for (const auto* list : {&c.inbound, &c.outbound}) {
    for (const ListenerConfig& l : *list) {
      if (!names.insert(l.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("listener name \"", l.name, "\" is used twice; names must be unique"));
      }
      if (l.listen.port != 0 && !addresses.insert(l.listen.ToString()).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("listen address ", l.listen.ToString(), " is used by two listeners"));
      }
    }
  }

  if (const YamlNode* n = top.Take("admin")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap admin, ConfigMap::Of(*n, "admin"));
    if (const YamlNode* l = admin.Take("listen")) {
      MESHTLS_ASSIGN_OR_RETURN(c.admin_listen, base::ReadListenAddress(*l, "admin.listen"));
    }
    MESHTLS_RETURN_IF_ERROR(admin.Finish());
  }
  if (const YamlNode* n = top.Take("workers")) {
    MESHTLS_ASSIGN_OR_RETURN(int64_t w, base::ReadInt(*n, "workers", 0, 256));
    c.workers = static_cast<int>(w);
  }
  if (const YamlNode* n = top.Take("tls")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap tls, ConfigMap::Of(*n, "tls"));
    if (const YamlNode* v = tls.Take("min_version")) {
      MESHTLS_ASSIGN_OR_RETURN(c.tls.min_version, base::ReadString(*v, "tls.min_version"));
      if (c.tls.min_version != "1.3" && c.tls.min_version != "1.2") {
        return base::FieldError("tls.min_version", *v, "must be \"1.3\" or \"1.2\"");
      }
    }
    if (const YamlNode* v = tls.Take("close_on_expiry")) {
      MESHTLS_ASSIGN_OR_RETURN(c.tls.close_on_expiry, base::ReadBool(*v, "tls.close_on_expiry"));
    }
    if (const YamlNode* v = tls.Take("session_resumption")) {
      MESHTLS_ASSIGN_OR_RETURN(c.tls.session_resumption,
                               base::ReadBool(*v, "tls.session_resumption"));
    }
    MESHTLS_RETURN_IF_ERROR(tls.Finish());
  }
  if (const YamlNode* n = top.Take("limits")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap limits, ConfigMap::Of(*n, "limits"));
    MESHTLS_RETURN_IF_ERROR(
        ReadDurationField(limits, "handshake_timeout", c.limits.handshake_timeout));
    MESHTLS_RETURN_IF_ERROR(ReadDurationField(limits, "idle_timeout", c.limits.idle_timeout));
    MESHTLS_RETURN_IF_ERROR(ReadDurationField(limits, "connect_timeout", c.limits.connect_timeout));
    MESHTLS_RETURN_IF_ERROR(ReadDurationField(limits, "drain_timeout", c.limits.drain_timeout));
    if (const YamlNode* v = limits.Take("max_connections")) {
      MESHTLS_ASSIGN_OR_RETURN(int64_t m,
                               base::ReadInt(*v, "limits.max_connections", 1, 10'000'000));
      c.limits.max_connections = static_cast<int>(m);
    }
    MESHTLS_RETURN_IF_ERROR(limits.Finish());
  }
  if (const YamlNode* n = top.Take("dns")) {
    MESHTLS_ASSIGN_OR_RETURN(ConfigMap dns, ConfigMap::Of(*n, "dns"));
    if (const YamlNode* v = dns.Take("servers")) {
      MESHTLS_ASSIGN_OR_RETURN(std::vector<std::string> servers,
                               base::ReadStringList(*v, "dns.servers"));
      if (servers.empty() || servers.size() > 8) {
        return base::FieldError("dns.servers", *v,
                                "must list 1 to 8 servers (leave it out to use /etc/resolv.conf)");
      }
      for (const std::string& text : servers) {
        absl::StatusOr<base::HostPort> server = ParseDnsServer(text);
        if (!server.ok()) {
          return base::FieldError("dns.servers", *v, server.status().message());
        }
        c.dns.servers.push_back(*server);
      }
    }
    if (const YamlNode* v = dns.Take("max_ttl")) {
      MESHTLS_ASSIGN_OR_RETURN(c.dns.max_ttl, base::ReadDuration(*v, "dns.max_ttl"));
      if (c.dns.max_ttl < absl::Seconds(1) || c.dns.max_ttl > absl::Hours(24)) {
        return base::FieldError("dns.max_ttl", *v, "must be between 1s and 24h");
      }
    }
    if (const YamlNode* v = dns.Take("negative_ttl")) {
      MESHTLS_ASSIGN_OR_RETURN(c.dns.negative_ttl, base::ReadDuration(*v, "dns.negative_ttl"));
      if (c.dns.negative_ttl < absl::Milliseconds(1) || c.dns.negative_ttl > absl::Hours(1)) {
        return base::FieldError("dns.negative_ttl", *v, "must be between 1ms and 1h");
      }
    }
    MESHTLS_RETURN_IF_ERROR(dns.Finish());
  }
  if (const YamlNode* n = top.Take("log")) {
    MESHTLS_RETURN_IF_ERROR(base::ReadLogSection(*n, "log", c.log.level, c.log.format));
  }
  MESHTLS_RETURN_IF_ERROR(top.Finish());
  return c;
}

}  // namespace sidecar_impl
namespace certmgr_impl {
using namespace ::meshtls::certmgr;  // NOLINT(google-build-using-namespace): a verbatim copy
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
  MESHTLS_ASSIGN_OR_RETURN(c.trust_domain, ReadTrustDomain(top));
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

}  // namespace certmgr_impl

absl::StatusOr<sidecar::SidecarConfig> ParseSidecarConfig(absl::string_view yaml,
                                                          bool check_files) {
  return sidecar_impl::ParseSidecarConfig(yaml, check_files);
}
absl::StatusOr<certmgr::CertmgrConfig> ParseCertmgrConfig(absl::string_view yaml) {
  return certmgr_impl::ParseCertmgrConfig(yaml);
}

}  // namespace meshtls::legacy

#include "sidecar/config/sidecar_config.h"

#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/base/yaml.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::sidecar {
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

  MESHTLS_ASSIGN_OR_RETURN(c.trust_domain, pki::ReadTrustDomain(top));

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

}  // namespace meshtls::sidecar

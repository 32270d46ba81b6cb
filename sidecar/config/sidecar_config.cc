#include "sidecar/config/sidecar_config.h"

#include <unistd.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/config/duration.h"
#include "common/config/yaml_loader.h"
#include "common/pki/spiffe_id.h"
#include "meshtls/config/v1/sidecar.pb.h"

namespace meshtls::sidecar {
namespace {

using config::LoadedFields;
using Schema = config::v1::Sidecar;

absl::Status CheckFilePath(const LoadedFields& fields, const std::string& path,
                           const std::string& file, bool check_files) {
  if (!fields.Has(path)) {
    return absl::OkStatus();
  }
  if (file.empty()) {
    return fields.Error(path, "must not be empty");
  }
  if (check_files && ::access(file.c_str(), R_OK) != 0) {
    return fields.Error(path, absl::StrCat("file ", file, " does not exist or is not readable"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ListenerConfig> ReadListener(
    const LoadedFields& fields, const std::string& path, const std::string& name,
    const std::string& listen, absl::string_view target_key, const std::string& target,
    absl::string_view peers_key, const google::protobuf::RepeatedPtrField<std::string>& peers,
    const std::string& trust_domain) {
  ListenerConfig l;
  l.name = name;
  if (l.name.empty() || l.name.size() > 64 ||
      l.name.find_first_not_of(
          "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") !=
          std::string::npos) {
    return fields.Error(absl::StrCat(path, ".name"),
                        "must be 1-64 characters of A-Z a-z 0-9 _ - .");
  }
  MESHTLS_ASSIGN_OR_RETURN(
      l.listen, config::ReadListenAddress(fields, absl::StrCat(path, ".listen"), listen));
  const std::string target_path = absl::StrCat(path, ".", target_key);
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(target);
  if (!hp.ok()) {
    return fields.Error(target_path, hp.status().message());
  }
  l.target = *hp;
  const std::string peers_path = absl::StrCat(path, ".", peers_key);
  l.peers.assign(peers.begin(), peers.end());
  if (l.peers.empty()) {
    return fields.Error(peers_path, "must list at least one SPIFFE ID");
  }
  for (const std::string& p : l.peers) {
    absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(p);
    if (!m.ok()) {
      return fields.Error(peers_path, m.status().message());
    }
    if (m->trust_domain() != trust_domain) {
      return fields.Error(peers_path,
                          absl::StrCat("\"", p, "\" is not in trust domain ", trust_domain));
    }
  }
  return l;
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

absl::Status ReadIdentity(const Schema& s, const LoadedFields& fields, bool check_files,
                          SidecarConfig& c) {
  if (!fields.Has("identity")) {
    return absl::InvalidArgumentError("identity: required (identity.certmgr or identity.files)");
  }
  if (s.identity().has_certmgr()) {
    const Schema::Certmgr& m = s.identity().certmgr();
    c.identity_mode = SidecarConfig::IdentityMode::kCertmgr;
    c.certmgr.addresses.assign(m.address().begin(), m.address().end());
    if (c.certmgr.addresses.empty()) {
      return fields.Error("identity.certmgr.address", "must name at least one host:port");
    }
    std::set<std::string> seen;
    for (const std::string& a : c.certmgr.addresses) {
      if (absl::StatusOr<base::HostPort> hp = base::ParseHostPort(a); !hp.ok()) {
        return fields.Error("identity.certmgr.address",
                            absl::StrCat("\"", a, "\": ", hp.status().message()));
      }
      if (!seen.insert(a).second) {
        return fields.Error("identity.certmgr.address",
                            absl::StrCat("\"", a, "\" is listed twice"));
      }
    }
    c.certmgr.server_ca = m.server_ca();
    c.certmgr.token_file = m.token_file();
    MESHTLS_RETURN_IF_ERROR(
        CheckFilePath(fields, "identity.certmgr.server_ca", c.certmgr.server_ca, check_files));
    MESHTLS_RETURN_IF_ERROR(
        CheckFilePath(fields, "identity.certmgr.token_file", c.certmgr.token_file, check_files));
    c.certmgr.renew_at = m.renew_at();
    return absl::OkStatus();
  }
  if (s.identity().has_files()) {
    const Schema::Files& f = s.identity().files();
    c.identity_mode = SidecarConfig::IdentityMode::kFiles;
    c.files = {f.cert(), f.key(), f.trust_bundle()};
    MESHTLS_RETURN_IF_ERROR(
        CheckFilePath(fields, "identity.files.cert", c.files.cert, check_files));
    MESHTLS_RETURN_IF_ERROR(CheckFilePath(fields, "identity.files.key", c.files.key, check_files));
    return CheckFilePath(fields, "identity.files.trust_bundle", c.files.trust_bundle, check_files);
  }
  return fields.Error("identity", "set exactly one of certmgr or files");
}

absl::Status ReadListeners(const Schema& s, const LoadedFields& fields, SidecarConfig& c) {
  for (int i = 0; i < s.inbound_size(); ++i) {
    const Schema::InboundListener& l = s.inbound(i);
    MESHTLS_ASSIGN_OR_RETURN(
        ListenerConfig parsed,
        ReadListener(fields, absl::StrCat("inbound[", i, "]"), l.name(), l.listen(), "forward",
                     l.forward(), "allow", l.allow(), c.trust_domain));
    c.inbound.push_back(std::move(parsed));
  }
  for (int i = 0; i < s.outbound_size(); ++i) {
    const Schema::OutboundListener& l = s.outbound(i);
    MESHTLS_ASSIGN_OR_RETURN(
        ListenerConfig parsed,
        ReadListener(fields, absl::StrCat("outbound[", i, "]"), l.name(), l.listen(), "connect",
                     l.connect(), "expect", l.expect(), c.trust_domain));
    c.outbound.push_back(std::move(parsed));
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
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SidecarConfig> ParseSidecarConfig(absl::string_view yaml, bool check_files) {
  Schema s;
  MESHTLS_ASSIGN_OR_RETURN(LoadedFields fields, config::LoadYaml(yaml, s));
  SidecarConfig c;
  c.trust_domain = s.trust_domain();
  if (absl::Status st = pki::SpiffeId::ValidateTrustDomain(c.trust_domain); !st.ok()) {
    return fields.Error("trust_domain", st.message());
  }
  MESHTLS_RETURN_IF_ERROR(ReadIdentity(s, fields, check_files, c));
  MESHTLS_RETURN_IF_ERROR(ReadListeners(s, fields, c));

  MESHTLS_ASSIGN_OR_RETURN(base::HostPort admin,
                           config::ReadListenAddress(fields, "admin.listen", s.admin().listen()));
  c.admin_listen = admin.ToString();
  c.workers = s.workers();

  c.tls.min_version = s.tls().min_version();
  if (c.tls.min_version != "1.3" && c.tls.min_version != "1.2") {
    return fields.Error("tls.min_version", "must be \"1.3\" or \"1.2\"");
  }
  c.tls.session_resumption = s.tls().session_resumption();
  c.tls.close_on_expiry = s.tls().close_on_expiry();

  c.limits.handshake_timeout = config::ToDuration(s.limits().handshake_timeout());
  c.limits.idle_timeout = config::ToDuration(s.limits().idle_timeout());
  c.limits.connect_timeout = config::ToDuration(s.limits().connect_timeout());
  c.limits.drain_timeout = config::ToDuration(s.limits().drain_timeout());
  c.limits.max_connections = s.limits().max_connections();

  if (fields.Has("dns.servers")) {
    if (s.dns().servers_size() == 0 || s.dns().servers_size() > 8) {
      return fields.Error("dns.servers",
                          "must list 1 to 8 servers (leave it out to use /etc/resolv.conf)");
    }
    for (const std::string& text : s.dns().servers()) {
      absl::StatusOr<base::HostPort> server = ParseDnsServer(text);
      if (!server.ok()) {
        return fields.Error("dns.servers", server.status().message());
      }
      c.dns.servers.push_back(*server);
    }
  }
  c.dns.max_ttl = config::ToDuration(s.dns().max_ttl());
  c.dns.negative_ttl = config::ToDuration(s.dns().negative_ttl());

  MESHTLS_ASSIGN_OR_RETURN(c.log,
                           config::ReadLogSettings(fields, s.log().level(), s.log().format()));
  return c;
}

}  // namespace meshtls::sidecar

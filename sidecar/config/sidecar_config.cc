#include "sidecar/config/sidecar_config.h"

#include <unistd.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
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

absl::Status CheckName(const LoadedFields& fields, const std::string& path,
                       const std::string& name) {
  if (name.empty() || name.size() > 64 ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") !=
          std::string::npos) {
    return fields.Error(path, "must be 1-64 characters of A-Z a-z 0-9 _ - .");
  }
  return absl::OkStatus();
}

// CheckPeers validates an allow-list (`allow`, `expect`): SPIFFE IDs or "<id>/*" prefixes, all
// in the trust domain.
absl::Status CheckPeers(const LoadedFields& fields, const std::string& path,
                        const std::vector<std::string>& peers, const std::string& trust_domain) {
  for (const std::string& p : peers) {
    absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(p);
    if (!m.ok()) {
      return fields.Error(path, m.status().message());
    }
    if (m->trust_domain() != trust_domain) {
      return fields.Error(path, absl::StrCat("\"", p, "\" is not in trust domain ", trust_domain));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Transport> ReadTransport(const LoadedFields& fields, const std::string& path,
                                        const std::string& text) {
  if (text == "tls") {
    return Transport::kTls;
  }
  if (text == "pooled") {
    return Transport::kPooled;
  }
  return fields.Error(path, absl::StrCat("\"", text, "\" is not a transport: tls or pooled"));
}

absl::StatusOr<ListenerConfig> ReadListener(
    const LoadedFields& fields, const std::string& path, const std::string& name,
    const std::string& listen, absl::string_view target_key, const std::string& target,
    absl::string_view peers_key, const google::protobuf::RepeatedPtrField<std::string>& peers,
    const std::string& trust_domain) {
  ListenerConfig l;
  l.name = name;
  MESHTLS_RETURN_IF_ERROR(CheckName(fields, absl::StrCat(path, ".name"), l.name));
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
  MESHTLS_RETURN_IF_ERROR(CheckPeers(fields, peers_path, l.peers, trust_domain));
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

// ReadPorts copies a list of ports (the schema bounds each to 1..65535), refusing duplicates.
absl::StatusOr<std::vector<uint16_t>> ReadPorts(
    const LoadedFields& fields, const std::string& path,
    const google::protobuf::RepeatedField<int32_t>& in) {
  std::vector<uint16_t> ports;
  for (int32_t p : in) {
    if (std::find(ports.begin(), ports.end(), p) != ports.end()) {
      return fields.Error(path, absl::StrCat("port ", p, " is listed twice"));
    }
    ports.push_back(static_cast<uint16_t>(p));
  }
  return ports;
}

// ReadNetworks parses a list of networks, refusing two that overlap (one of them would be
// redundant, or the list does not say what it seems to).
absl::StatusOr<std::vector<net::Cidr>> ReadNetworks(
    const LoadedFields& fields, const std::string& path,
    const google::protobuf::RepeatedPtrField<std::string>& in) {
  std::vector<net::Cidr> networks;
  for (const std::string& text : in) {
    absl::StatusOr<net::Cidr> n = net::Cidr::Parse(text);
    if (!n.ok()) {
      return fields.Error(path, n.status().message());
    }
    for (const net::Cidr& earlier : networks) {
      if (earlier.Overlaps(*n)) {
        return fields.Error(path, absl::StrCat(earlier.ToString(), " and ", n->ToString(),
                                               " overlap; list each address once"));
      }
    }
    networks.push_back(*n);
  }
  return networks;
}

bool Contains(const std::vector<uint16_t>& ports, uint16_t port) {
  return std::find(ports.begin(), ports.end(), port) != ports.end();
}

// Covers: every destination `later` matches is matched by `earlier` too (empty lists match
// everything), so `later` can never decide.
bool Covers(const DestinationRule& earlier, const DestinationRule& later) {
  if (!earlier.ports.empty()) {
    if (later.ports.empty()) {
      return false;
    }
    for (uint16_t p : later.ports) {
      if (!Contains(earlier.ports, p)) {
        return false;
      }
    }
  }
  if (earlier.networks.empty()) {
    return true;
  }
  if (later.networks.empty()) {
    return false;
  }
  for (const net::Cidr& n : later.networks) {
    bool inside = false;
    for (const net::Cidr& e : earlier.networks) {
      inside = inside || e.Contains(n);
    }
    if (!inside) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<InboundMode> ReadInboundMode(const LoadedFields& fields, const std::string& path,
                                            const std::string& text) {
  if (text == "strict") {
    return InboundMode::kStrict;
  }
  if (text == "permissive") {
    return InboundMode::kPermissive;
  }
  return fields.Error(path, absl::StrCat("\"", text, "\" is not a mode: strict or permissive"));
}

absl::Status ReadCaptureOutbound(const Schema::CaptureOutbound& s, const LoadedFields& fields,
                                 const std::string& trust_domain,
                                 TransparentConfig::Outbound& out) {
  const std::string path = "transparent.outbound";
  out.enabled = true;
  out.port = static_cast<uint16_t>(s.port());
  MESHTLS_ASSIGN_OR_RETURN(out.exclude_ports,
                           ReadPorts(fields, path + ".exclude_ports", s.exclude_ports()));
  MESHTLS_ASSIGN_OR_RETURN(out.exclude_networks,
                           ReadNetworks(fields, path + ".exclude_networks", s.exclude_networks()));
  if (s.rules_size() == 0) {
    return fields.Error(path + ".rules",
                        "must list at least one rule (a connection no rule matches is denied)");
  }
  std::set<std::string> names;
  for (int i = 0; i < s.rules_size(); ++i) {
    const Schema::DestinationRule& r = s.rules(i);
    const std::string rule_path = absl::StrCat(path, ".rules[", i, "]");
    DestinationRule rule;
    rule.name = r.name();
    MESHTLS_RETURN_IF_ERROR(CheckName(fields, rule_path + ".name", rule.name));
    if (!names.insert(rule.name).second) {
      return fields.Error(
          rule_path + ".name",
          absl::StrCat("\"", rule.name, "\" names two rules; names must be unique"));
    }
    MESHTLS_ASSIGN_OR_RETURN(rule.networks,
                             ReadNetworks(fields, rule_path + ".networks", r.networks()));
    MESHTLS_ASSIGN_OR_RETURN(rule.ports, ReadPorts(fields, rule_path + ".ports", r.ports()));
    if (r.action() == "mesh") {
      rule.action = DestinationRule::Action::kMesh;
    } else if (r.action() == "passthrough") {
      rule.action = DestinationRule::Action::kPassthrough;
    } else if (r.action() == "deny") {
      rule.action = DestinationRule::Action::kDeny;
    } else {
      return fields.Error(
          rule_path + ".action",
          absl::StrCat("\"", r.action(), "\" is not an action: mesh, passthrough or deny"));
    }
    MESHTLS_ASSIGN_OR_RETURN(rule.transport,
                             ReadTransport(fields, rule_path + ".transport", r.transport()));
    if (rule.transport == Transport::kPooled && rule.action != DestinationRule::Action::kMesh) {
      return fields.Error(rule_path + ".transport", "applies to action: mesh only");
    }
    rule.expect.assign(r.expect().begin(), r.expect().end());
    if (!rule.expect.empty() && rule.action != DestinationRule::Action::kMesh) {
      return fields.Error(rule_path + ".expect", "applies to action: mesh only");
    }
    MESHTLS_RETURN_IF_ERROR(CheckPeers(fields, rule_path + ".expect", rule.expect, trust_domain));
    // Unreachable rules are mistakes: an exclusion or an earlier rule takes all they match.
    for (const net::Cidr& n : rule.networks) {
      for (const net::Cidr& excluded : out.exclude_networks) {
        if (excluded.Contains(n)) {
          return fields.Error(rule_path + ".networks",
                              absl::StrCat(n.ToString(), " is never captured: it is inside ",
                                           excluded.ToString(), " of exclude_networks"));
        }
      }
    }
    if (!rule.ports.empty() && std::all_of(rule.ports.begin(), rule.ports.end(), [&](uint16_t p) {
          return Contains(out.exclude_ports, p);
        })) {
      return fields.Error(rule_path + ".ports",
                          "every port of the rule is in exclude_ports: it is never captured");
    }
    for (size_t j = 0; j < out.rules.size(); ++j) {
      if (Covers(out.rules[j], rule)) {
        return fields.Error(
            rule_path,
            absl::StrCat("rule \"", rule.name, "\" is unreachable: rule \"", out.rules[j].name,
                         "\" (rules[", j, "]) before it matches every destination it does"));
      }
    }
    out.rules.push_back(std::move(rule));
  }
  return absl::OkStatus();
}

absl::Status ReadCaptureInbound(const Schema::CaptureInbound& s, const LoadedFields& fields,
                                const std::string& trust_domain,
                                const std::vector<uint16_t>& own_ports,
                                TransparentConfig::Inbound& in) {
  const std::string path = "transparent.inbound";
  in.enabled = true;
  in.port = static_cast<uint16_t>(s.port());
  MESHTLS_ASSIGN_OR_RETURN(in.exclude_ports,
                           ReadPorts(fields, path + ".exclude_ports", s.exclude_ports()));
  MESHTLS_ASSIGN_OR_RETURN(in.default_policy.mode,
                           ReadInboundMode(fields, path + ".mode", s.mode()));
  in.default_policy.allow.assign(s.allow().begin(), s.allow().end());
  if (in.default_policy.allow.empty()) {
    return fields.Error(path + ".allow", "must list at least one SPIFFE ID");
  }
  MESHTLS_RETURN_IF_ERROR(
      CheckPeers(fields, path + ".allow", in.default_policy.allow, trust_domain));
  for (int i = 0; i < s.ports_size(); ++i) {
    const Schema::InboundPort& p = s.ports(i);
    const std::string port_path = absl::StrCat(path, ".ports[", i, "]");
    InboundPortPolicy policy;
    policy.port = static_cast<uint16_t>(p.port());
    for (const InboundPortPolicy& earlier : in.ports) {
      if (earlier.port == policy.port) {
        return fields.Error(port_path + ".port",
                            absl::StrCat("port ", policy.port, " has two entries"));
      }
    }
    if (Contains(in.exclude_ports, policy.port)) {
      return fields.Error(
          port_path + ".port",
          absl::StrCat("port ", policy.port, " is in exclude_ports: it is never captured"));
    }
    if (policy.port == kPooledPort) {
      return fields.Error(port_path + ".port",
                          absl::StrCat("port ", kPooledPort,
                                       " is where pooled connections arrive (HBONE's port); an "
                                       "app cannot serve on it"));
    }
    if (Contains(own_ports, policy.port) || policy.port == in.port) {
      return fields.Error(port_path + ".port",
                          absl::StrCat("port ", policy.port, " is one of the sidecar's own"));
    }
    policy.mode = in.default_policy.mode;
    if (fields.Has(port_path + ".mode")) {
      MESHTLS_ASSIGN_OR_RETURN(policy.mode, ReadInboundMode(fields, port_path + ".mode", p.mode()));
    }
    policy.allow = in.default_policy.allow;
    if (fields.Has(port_path + ".allow")) {
      policy.allow.assign(p.allow().begin(), p.allow().end());
      if (policy.allow.empty()) {
        return fields.Error(port_path + ".allow",
                            "must list at least one SPIFFE ID (leave it out for the default)");
      }
      MESHTLS_RETURN_IF_ERROR(CheckPeers(fields, port_path + ".allow", policy.allow, trust_domain));
    }
    in.ports.push_back(std::move(policy));
  }
  return absl::OkStatus();
}

// ReadTransparent reads the `transparent` section; the explicit listeners and the admin address
// are read already (the capture ports must not collide with them).
absl::Status ReadTransparent(const Schema& s, const LoadedFields& fields, SidecarConfig& c) {
  if (!fields.Has("transparent")) {
    return absl::OkStatus();
  }
  TransparentConfig& t = c.transparent;
  t.proxy_uid = static_cast<uint32_t>(s.transparent().proxy_uid());
  if (fields.Has("transparent.outbound")) {
    MESHTLS_RETURN_IF_ERROR(
        ReadCaptureOutbound(s.transparent().outbound(), fields, c.trust_domain, t.outbound));
  }
  const std::vector<uint16_t> own_ports = c.OwnPorts();  // the inbound capture port aside
  if (fields.Has("transparent.inbound")) {
    MESHTLS_RETURN_IF_ERROR(ReadCaptureInbound(s.transparent().inbound(), fields, c.trust_domain,
                                               own_ports, t.inbound));
  }
  if (!t.enabled()) {
    return fields.Error("transparent", "set outbound, inbound or both");
  }
  if (t.inbound.enabled) {
    // The capture rules must name every port of the sidecar's own; one the kernel picks at
    // start cannot be named, and would be captured.
    if (absl::StatusOr<base::HostPort> admin = base::ParseHostPort(c.admin_listen, true);
        admin.ok() && admin->port == 0) {
      return fields.Error("admin.listen",
                          "port 0 cannot go with transparent.inbound: the capture rules must "
                          "exclude the admin port, so it needs a fixed one");
    }
    for (const auto* list : {&c.inbound, &c.outbound}) {
      for (const ListenerConfig& l : *list) {
        if (l.listen.port == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("listener ", l.name,
                           ": port 0 cannot go with transparent.inbound: "
                           "the capture rules must exclude its port"));
        }
      }
    }
  }
  // Capture ports: apart from each other and from every port the sidecar itself listens on.
  std::vector<std::pair<std::string, uint16_t>> taken;
  if (absl::StatusOr<base::HostPort> admin = base::ParseHostPort(c.admin_listen, true);
      admin.ok() && admin->port != 0) {
    taken.emplace_back("admin.listen", admin->port);
  }
  for (const auto* list : {&c.inbound, &c.outbound}) {
    for (const ListenerConfig& l : *list) {
      if (l.listen.port != 0) {
        taken.emplace_back(absl::StrCat("listener ", l.name), l.listen.port);
      }
    }
  }
  for (const auto& [name, enabled, port] :
       {std::tuple<std::string, bool, uint16_t>{"transparent.outbound.port", t.outbound.enabled,
                                                t.outbound.port},
        std::tuple<std::string, bool, uint16_t>{"transparent.inbound.port", t.inbound.enabled,
                                                t.inbound.port}}) {
    if (!enabled) {
      continue;
    }
    for (const auto& [other, other_port] : taken) {
      if (other_port == port) {
        return fields.Error(name, absl::StrCat("port ", port, " is taken by ", other));
      }
    }
    taken.emplace_back(name, port);
  }
  return absl::OkStatus();
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
    MESHTLS_ASSIGN_OR_RETURN(
        parsed.transport,
        ReadTransport(fields, absl::StrCat("outbound[", i, "].transport"), l.transport()));
    c.outbound.push_back(std::move(parsed));
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

std::vector<uint16_t> SidecarConfig::OwnPorts() const {
  std::vector<uint16_t> ports;
  auto add = [&ports](uint16_t port) {
    if (port != 0 && !Contains(ports, port)) {
      ports.push_back(port);
    }
  };
  if (absl::StatusOr<base::HostPort> admin = base::ParseHostPort(admin_listen, true); admin.ok()) {
    add(admin->port);
  }
  for (const auto* list : {&inbound, &outbound}) {
    for (const ListenerConfig& l : *list) {
      add(l.listen.port);
    }
  }
  if (transparent.outbound.enabled) {
    add(transparent.outbound.port);
  }
  if (transparent.inbound.enabled) {
    add(transparent.inbound.port);
  }
  return ports;
}

// HttpToken: an HTTP header name (RFC 9110 token characters).
bool IsHttpToken(absl::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char ch) {
    return absl::ascii_isalnum(static_cast<unsigned char>(ch)) ||
           absl::StrContains("!#$%&'*+-.^_`|~", ch);
  });
}

// OnOneLine: printable, no line breaks, so it cannot split the request it goes into.
bool OnOneLine(absl::string_view text) {
  return std::all_of(
             text.begin(), text.end(),
             [](char ch) { return ch == '\t' || static_cast<unsigned char>(ch) >= 0x20; }) &&
         !absl::StrContains(text, '\x7f');
}

absl::Status ReadAppProbes(const Schema& s, const LoadedFields& fields, SidecarConfig& c) {
  for (int i = 0; i < s.app_probes_size(); ++i) {
    const Schema::AppProbe& p = s.app_probes(i);
    const std::string at = absl::StrCat("app_probes[", i, "]");
    SidecarConfig::AppProbe probe;
    probe.path = p.path();
    if (probe.path.size() < 2 || probe.path[0] != '/' || !OnOneLine(probe.path) ||
        absl::StrContains(probe.path, ' ') || absl::StrContains(probe.path, '?')) {
      return fields.Error(
          absl::StrCat(at, ".path"),
          "must be an absolute path without spaces or query (/app-health/app/livez)");
    }
    for (absl::string_view taken : {"/metrics", "/healthz", "/readyz", "/certs"}) {
      if (probe.path == taken) {
        return fields.Error(absl::StrCat(at, ".path"),
                            absl::StrCat(taken, " is the sidecar's own"));
      }
    }
    for (const SidecarConfig::AppProbe& earlier : c.app_probes) {
      if (earlier.path == probe.path) {
        return fields.Error(absl::StrCat(at, ".path"), absl::StrCat("repeats ", probe.path));
      }
    }
    probe.port = static_cast<uint16_t>(p.port());
    probe.http_path = p.http_path();
    if (!probe.http_path.empty() && (probe.http_path[0] != '/' || !OnOneLine(probe.http_path) ||
                                     absl::StrContains(probe.http_path, ' '))) {
      return fields.Error(absl::StrCat(at, ".http_path"),
                          "must be an absolute path (with its query), without spaces");
    }
    for (const auto& h : p.http_headers()) {
      if (probe.http_path.empty()) {
        return fields.Error(absl::StrCat(at, ".http_headers"), "need http_path (an HTTP probe)");
      }
      if (!IsHttpToken(h.name()) || !OnOneLine(h.value())) {
        return fields.Error(absl::StrCat(at, ".http_headers"),
                            absl::StrCat("\"", h.name(),
                                         "\" is not a header name, or its value "
                                         "holds a line break"));
      }
      probe.http_headers.emplace_back(h.name(), h.value());
    }
    probe.timeout = config::ToDuration(p.timeout());
    probe.grpc = p.grpc();
    probe.grpc_service = p.grpc_service();
    if (probe.grpc && !probe.http_path.empty()) {
      return fields.Error(absl::StrCat(at, ".grpc"), "a probe is gRPC or HTTP, not both");
    }
    if (!probe.grpc && !probe.grpc_service.empty()) {
      return fields.Error(absl::StrCat(at, ".grpc_service"), "needs grpc: true");
    }
    c.app_probes.push_back(std::move(probe));
  }
  return absl::OkStatus();
}

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

  c.pooled.max_streams_per_connection = s.pooled().max_streams_per_connection();
  c.pooled.max_connections_per_peer = s.pooled().max_connections_per_peer();
  c.pooled.idle_timeout = config::ToDuration(s.pooled().idle_timeout());
  c.pooled.keepalive_interval = config::ToDuration(s.pooled().keepalive_interval());
  c.pooled.keepalive_timeout = config::ToDuration(s.pooled().keepalive_timeout());

  MESHTLS_ASSIGN_OR_RETURN(c.log,
                           config::ReadLogSettings(fields, s.log().level(), s.log().format()));
  MESHTLS_RETURN_IF_ERROR(ReadTransparent(s, fields, c));
  MESHTLS_RETURN_IF_ERROR(ReadAppProbes(s, fields, c));
  if (c.inbound.empty() && c.outbound.empty() && !c.transparent.enabled()) {
    return absl::InvalidArgumentError(
        "inbound, outbound, transparent: configure at least one listener");
  }
  return c;
}

}  // namespace meshtls::sidecar

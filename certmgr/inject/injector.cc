#include "certmgr/inject/injector.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/base/status_macros.h"
#include "common/net/cidr.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::inject {
namespace {

using config::YamlEntry;
using config::YamlNode;
using Kind = YamlNode::Kind;

// Paths inside the sidecar and init containers. The config comes from the pod's own
// meshtls.io/sidecar-config annotation through a downward-API volume, so the webhook, which may
// change only the Pod, needs no ConfigMap per workload.
constexpr absl::string_view kConfigDir = "/etc/meshtls/config";
constexpr absl::string_view kConfigPath = "/etc/meshtls/config/sidecar.yaml";
constexpr absl::string_view kBootstrapDir = "/etc/meshtls/bootstrap";
constexpr absl::string_view kTokenDir = "/var/run/secrets/meshtls";
constexpr absl::string_view kConfigVolume = "meshtls-config";
constexpr absl::string_view kBootstrapVolume = "meshtls-bootstrap-ca";
constexpr absl::string_view kTokenVolume = "meshtls-token";
constexpr absl::string_view kSidecarLabel = "meshtls.io/sidecar";

// The annotations a user writes (docs/injection.md).
constexpr absl::string_view kModeAnnotation = "meshtls.io/mode";
constexpr absl::string_view kInboundAllowAnnotation = "meshtls.io/inbound-allow";
constexpr absl::string_view kExcludeInboundPortsAnnotation = "meshtls.io/exclude-inbound-ports";
constexpr absl::string_view kExcludeOutboundPortsAnnotation = "meshtls.io/exclude-outbound-ports";
constexpr absl::string_view kExcludeOutboundNetworksAnnotation =
    "meshtls.io/exclude-outbound-networks";
constexpr absl::string_view kOutboundRulesAnnotation = "meshtls.io/outbound-rules";

// ---- Building and reading trees ----

YamlNode Text(std::string text) { return config::StringNode(std::move(text)); }

YamlNode Number(int64_t value) {
  YamlNode n;
  n.kind = Kind::kScalar;
  n.scalar = absl::StrCat(value);
  return n;
}

YamlNode Bool(bool value) {
  YamlNode n;
  n.kind = Kind::kScalar;
  n.scalar = value ? "true" : "false";
  return n;
}

YamlNode Map(std::vector<std::pair<std::string, YamlNode>> entries) {
  YamlNode n;
  n.kind = Kind::kMapping;
  for (auto& [key, value] : entries) {
    n.entries.push_back(YamlEntry{.key = std::move(key), .value = std::move(value)});
  }
  return n;
}

YamlNode Seq(std::vector<YamlNode> items) {
  YamlNode n;
  n.kind = Kind::kSequence;
  n.items = std::move(items);
  return n;
}

YamlNode TextSeq(const std::vector<std::string>& texts) {
  std::vector<YamlNode> items;
  for (const std::string& t : texts) {
    items.push_back(Text(t));
  }
  return Seq(std::move(items));
}

YamlNode NumberSeq(const std::vector<int>& values) {
  std::vector<YamlNode> items;
  for (int v : values) {
    items.push_back(Number(v));
  }
  return Seq(std::move(items));
}

// Lookups in trees of unknown shape (config::FindKey, config::ScalarAt), by reference.
const YamlNode* Find(const YamlNode& map, absl::string_view key) {
  return config::FindKey(&map, key);
}

YamlNode* FindMutable(YamlNode& map, absl::string_view key) { return config::FindKey(&map, key); }

using config::ScalarAt;

// Child returns map[key], added at the end as an empty node of `kind` when absent or null.
YamlNode& Child(YamlNode& map, absl::string_view key, Kind kind) {
  if (map.kind == Kind::kNull) {
    map.kind = Kind::kMapping;
  }
  if (YamlNode* existing = FindMutable(map, key)) {
    if (existing->kind == Kind::kNull) {
      existing->kind = kind;
    }
    return *existing;
  }
  map.entries.push_back(YamlEntry{.key = std::string(key), .key_line = 0, .value = {}});
  map.entries.back().value.kind = kind;
  return map.entries.back().value;
}

void Set(YamlNode& map, absl::string_view key, YamlNode value) {
  Child(map, key, value.kind) = std::move(value);
}

absl::Status ExpectKind(const YamlNode* node, Kind kind, absl::string_view where) {
  if (node != nullptr && node->kind != Kind::kNull && node->kind != kind) {
    return absl::InvalidArgumentError(absl::StrCat(where, " must be ", config::KindName(kind),
                                                   ", not ", config::KindName(node->kind)));
  }
  return absl::OkStatus();
}

// ---- Annotations ----

// PodSettings are the per-pod inputs, read from the template's annotations and checked.
struct PodSettings {
  std::string inbound_mode;
  std::vector<std::string> inbound_allow;
  std::set<int> exclude_inbound_ports;
  std::vector<int> exclude_outbound_ports;
  std::vector<std::string> exclude_outbound_networks;
  std::vector<YamlNode> outbound_rules;  // the annotation's, checked, before the mesh-wide ones
};

absl::StatusOr<int> ParsePort(absl::string_view text, absl::string_view where) {
  int port = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", text, "\" is not a port number (1-65535)"));
  }
  return port;
}

// SplitList splits a comma-separated annotation value, dropping blanks around items.
std::vector<std::string> SplitList(absl::string_view value) {
  std::vector<std::string> items;
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (!item.empty()) {
      items.emplace_back(item);
    }
  }
  return items;
}

absl::StatusOr<std::vector<int>> PortList(absl::string_view value, absl::string_view where) {
  std::vector<int> ports;
  for (const std::string& item : SplitList(value)) {
    MESHTLS_ASSIGN_OR_RETURN(int port, ParsePort(item, where));
    if (std::find(ports.begin(), ports.end(), port) == ports.end()) {
      ports.push_back(port);
    }
  }
  return ports;
}

absl::Status CheckNetworks(const std::vector<std::string>& networks, absl::string_view where) {
  for (const std::string& n : networks) {
    if (absl::StatusOr<net::Cidr> cidr = net::Cidr::Parse(n); !cidr.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", cidr.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSpiffePatterns(const std::vector<std::string>& patterns,
                                 absl::string_view where) {
  for (const std::string& p : patterns) {
    if (absl::StatusOr<pki::SpiffeIdMatcher> m = pki::SpiffeIdMatcher::Parse(p); !m.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", m.status().message()));
    }
  }
  return absl::OkStatus();
}

// ReadOutboundRules checks the meshtls.io/outbound-rules annotation: a YAML (or JSON) list of
// destination rules with the fields of transparent.outbound.rules. The sidecar checks the rules
// against each other when it starts; this catches what one rule alone gets wrong, at admission.
absl::StatusOr<std::vector<YamlNode>> ReadOutboundRules(absl::string_view text) {
  const std::string where(kOutboundRulesAnnotation);
  absl::StatusOr<YamlNode> parsed = config::ParseYamlTree(text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", parsed.status().message()));
  }
  if (parsed->kind == Kind::kNull) {
    return std::vector<YamlNode>{};
  }
  MESHTLS_RETURN_IF_ERROR(ExpectKind(&*parsed, Kind::kSequence, where));
  std::set<std::string> names;
  for (size_t i = 0; i < parsed->items.size(); ++i) {
    const YamlNode& rule = parsed->items[i];
    const std::string at = absl::StrCat(where, "[", i, "]");
    if (rule.kind != Kind::kMapping) {
      return absl::InvalidArgumentError(absl::StrCat(at, " must be a mapping"));
    }
    for (const YamlEntry& e : rule.entries) {
      static const std::set<std::string> kFields = {"name",   "networks", "ports",
                                                    "action", "expect",   "transport"};
      if (!kFields.contains(e.key)) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": unknown field \"", e.key,
                         "\" (name, networks, ports, action, expect, transport)"));
      }
    }
    std::optional<std::string> name = ScalarAt(&rule, "name");
    if (!name || name->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": name is required"));
    }
    if (*name == "mesh" || *name == "other" || !names.insert(*name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": the name \"", *name,
                       "\" is taken (by another rule or the mesh-wide \"mesh\" "
                       "and \"other\")"));
    }
    std::optional<std::string> action = ScalarAt(&rule, "action");
    if (!action) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": action is required (mesh, passthrough or deny)"));
    }
    if (*action != "mesh" && *action != "passthrough" && *action != "deny") {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": action \"", *action, "\" is not mesh, passthrough or deny"));
    }
    for (absl::string_view list : {"networks", "ports", "expect"}) {
      const YamlNode* items = Find(rule, list);
      MESHTLS_RETURN_IF_ERROR(ExpectKind(items, Kind::kSequence, absl::StrCat(at, ".", list)));
      if (items == nullptr) {
        continue;
      }
      for (const YamlNode& item : items->items) {
        const std::string item_at = absl::StrCat(at, ".", list);
        if (item.kind != Kind::kScalar) {
          return absl::InvalidArgumentError(absl::StrCat(item_at, ": items must be scalars"));
        }
        if (list == "networks") {
          MESHTLS_RETURN_IF_ERROR(CheckNetworks({item.scalar}, item_at));
        } else if (list == "ports") {
          if (item.quoted) {
            return absl::InvalidArgumentError(
                absl::StrCat(item_at, ": \"", item.scalar, "\" must be a number, not a string"));
          }
          MESHTLS_RETURN_IF_ERROR(ParsePort(item.scalar, item_at).status());
        } else {
          MESHTLS_RETURN_IF_ERROR(CheckSpiffePatterns({item.scalar}, item_at));
        }
      }
    }
    if (Find(rule, "expect") != nullptr && *action != "mesh") {
      return absl::InvalidArgumentError(absl::StrCat(at, ": expect is for mesh rules only"));
    }
    if (std::optional<std::string> transport = ScalarAt(&rule, "transport")) {
      if (*transport != "tls" && *transport != "pooled") {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": transport \"", *transport, "\" is not tls or pooled"));
      }
      if (*action != "mesh") {
        return absl::InvalidArgumentError(absl::StrCat(at, ": transport is for mesh rules only"));
      }
    }
  }
  return std::move(parsed->items);
}

absl::StatusOr<PodSettings> ReadPodSettings(const MeshSettings& mesh, const YamlNode* annotations) {
  PodSettings s;
  s.inbound_mode = ScalarAt(annotations, kModeAnnotation).value_or(mesh.inbound_mode);
  if (s.inbound_mode != "strict" && s.inbound_mode != "permissive") {
    return absl::InvalidArgumentError(
        absl::StrCat(kModeAnnotation, ": \"", s.inbound_mode, "\" is not strict or permissive"));
  }
  if (std::optional<std::string> allow = ScalarAt(annotations, kInboundAllowAnnotation)) {
    s.inbound_allow = SplitList(*allow);
    if (s.inbound_allow.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kInboundAllowAnnotation, ": empty (list SPIFFE IDs, comma-separated)"));
    }
    MESHTLS_RETURN_IF_ERROR(CheckSpiffePatterns(s.inbound_allow, kInboundAllowAnnotation));
  } else if (!mesh.inbound_allow.empty()) {
    s.inbound_allow = mesh.inbound_allow;
  } else {
    s.inbound_allow = {absl::StrCat("spiffe://", mesh.trust_domain, "/ns/*")};
  }
  if (std::optional<std::string> v = ScalarAt(annotations, kExcludeInboundPortsAnnotation)) {
    MESHTLS_ASSIGN_OR_RETURN(std::vector<int> ports, PortList(*v, kExcludeInboundPortsAnnotation));
    s.exclude_inbound_ports.insert(ports.begin(), ports.end());
  }
  s.exclude_outbound_ports = mesh.exclude_outbound_ports;
  if (std::optional<std::string> v = ScalarAt(annotations, kExcludeOutboundPortsAnnotation)) {
    MESHTLS_ASSIGN_OR_RETURN(std::vector<int> ports, PortList(*v, kExcludeOutboundPortsAnnotation));
    for (int p : ports) {
      if (std::find(s.exclude_outbound_ports.begin(), s.exclude_outbound_ports.end(), p) ==
          s.exclude_outbound_ports.end()) {
        s.exclude_outbound_ports.push_back(p);
      }
    }
  }
  s.exclude_outbound_networks = mesh.exclude_outbound_networks;
  if (std::optional<std::string> v = ScalarAt(annotations, kExcludeOutboundNetworksAnnotation)) {
    std::vector<std::string> networks = SplitList(*v);
    MESHTLS_RETURN_IF_ERROR(CheckNetworks(networks, kExcludeOutboundNetworksAnnotation));
    for (std::string& n : networks) {
      if (std::find(s.exclude_outbound_networks.begin(), s.exclude_outbound_networks.end(), n) ==
          s.exclude_outbound_networks.end()) {
        s.exclude_outbound_networks.push_back(std::move(n));
      }
    }
  }
  if (std::optional<std::string> v = ScalarAt(annotations, kOutboundRulesAnnotation)) {
    MESHTLS_ASSIGN_OR_RETURN(s.outbound_rules, ReadOutboundRules(*v));
  }
  return s;
}

// ---- The pod ----

// AppPorts are the TCP ports the pod's own containers declare, by container, in order.
struct DeclaredPort {
  std::string container;
  std::string name;  // may be empty
  int port = 0;
};

absl::StatusOr<std::vector<DeclaredPort>> DeclaredPorts(const YamlNode& spec) {
  std::vector<DeclaredPort> ports;
  for (absl::string_view list : {"initContainers", "containers"}) {
    const YamlNode* containers = Find(spec, list);
    MESHTLS_RETURN_IF_ERROR(ExpectKind(containers, Kind::kSequence, absl::StrCat("spec.", list)));
    if (containers == nullptr) {
      continue;
    }
    for (const YamlNode& c : containers->items) {
      const std::string name = ScalarAt(&c, "name").value_or("");
      const YamlNode* declared = Find(c, "ports");
      if (declared == nullptr || declared->kind != Kind::kSequence) {
        continue;
      }
      for (const YamlNode& p : declared->items) {
        if (ScalarAt(&p, "protocol").value_or("TCP") != "TCP") {
          continue;
        }
        std::optional<std::string> number = ScalarAt(&p, "containerPort");
        if (!number) {
          return absl::InvalidArgumentError(
              absl::StrCat("container ", name, ": a port without containerPort"));
        }
        MESHTLS_ASSIGN_OR_RETURN(int port,
                                 ParsePort(*number, absl::StrCat("container ", name, " port")));
        ports.push_back({name, ScalarAt(&p, "name").value_or(""), port});
      }
    }
  }
  return ports;
}

// ProbeTarget is where one of an app container's probes goes, once moved to the sidecar.
struct ProbeTarget {
  std::string path;       // the admin path the kubelet now probes
  int port = 0;           // on 127.0.0.1 in the pod
  std::string http_path;  // empty: a TCP connect (or gRPC)
  bool grpc = false;
  std::string grpc_service;
  std::vector<std::pair<std::string, std::string>> headers;
  int timeout_seconds = 1;
};

constexpr std::pair<absl::string_view, absl::string_view> kProbeKinds[] = {
    {"livenessProbe", "livez"}, {"readinessProbe", "readyz"}, {"startupProbe", "startupz"}};

// ResolvePort turns a probe's port (a number, or the name of one of `container`'s ports) into
// a number.
absl::StatusOr<int> ResolvePort(const YamlNode& container, const YamlNode& port,
                                absl::string_view where) {
  if (port.kind != Kind::kScalar) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": port must be a number or a name"));
  }
  int number = 0;
  if (absl::SimpleAtoi(port.scalar, &number)) {
    return ParsePort(port.scalar, where);
  }
  if (const YamlNode* declared = Find(container, "ports")) {
    for (const YamlNode& p : declared->items) {
      if (ScalarAt(&p, "name") == port.scalar) {
        if (std::optional<std::string> n = ScalarAt(&p, "containerPort")) {
          return ParsePort(*n, where);
        }
      }
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": the container declares no port named \"", port.scalar, "\""));
}

// MoveProbes rewrites the httpGet, tcpSocket and grpc probes of one app container that reach a
// captured port so that the kubelet asks the sidecar's admin port instead, and returns the
// targets the sidecar then probes on loopback. A kubelet probe comes from the node in plain
// text: a strict port would refuse it, a permissive or excluded one would open the app to
// every client outside the mesh. Probes to an excluded port are left as they are.
absl::Status MoveProbes(YamlNode& container, const std::set<int>& excluded,
                        std::vector<ProbeTarget>& targets) {
  const std::string name = ScalarAt(&container, "name").value_or("");
  for (const auto& [field, suffix] : kProbeKinds) {
    YamlNode* probe = FindMutable(container, field);
    if (probe == nullptr || probe->kind != Kind::kMapping) {
      continue;
    }
    const std::string where = absl::StrCat("container ", name, " ", field);
    ProbeTarget target;
    target.path = absl::StrCat("/app-health/", name, "/", suffix);
    if (std::optional<std::string> t = ScalarAt(probe, "timeoutSeconds")) {
      // The sidecar's app_probes[].timeout takes 10ms to 60s.
      if (!absl::SimpleAtoi(*t, &target.timeout_seconds) || target.timeout_seconds < 1 ||
          target.timeout_seconds > 60) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": timeoutSeconds \"", *t, "\" is not 1 to 60 (the sidecar's probe timeout)"));
      }
    }
    YamlNode* http = FindMutable(*probe, "httpGet");
    YamlNode* tcp = FindMutable(*probe, "tcpSocket");
    YamlNode* grpc = FindMutable(*probe, "grpc");
    YamlNode* action = http != nullptr ? http : tcp != nullptr ? tcp : grpc;
    if (action == nullptr) {
      continue;  // exec probes run inside the container
    }
    const YamlNode* port_node = Find(*action, "port");
    if (port_node == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": no port"));
    }
    MESHTLS_ASSIGN_OR_RETURN(target.port, ResolvePort(container, *port_node, where));
    if (excluded.contains(target.port) || ScalarAt(action, "host").has_value()) {
      continue;  // not captured, or not this pod
    }
    if (action == grpc) {
      target.grpc = true;
      target.grpc_service = ScalarAt(grpc, "service").value_or("");
    }
    if (action == http) {
      if (absl::AsciiStrToUpper(ScalarAt(http, "scheme").value_or("HTTP")) != "HTTP") {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": an HTTPS probe of captured port ", target.port,
            " cannot work: the port's TLS would be taken for the mesh's; exclude the port (",
            kExcludeInboundPortsAnnotation, ")"));
      }
      target.http_path = ScalarAt(http, "path").value_or("/");
      if (target.http_path.empty() || target.http_path[0] != '/') {
        target.http_path.insert(0, "/");
      }
      for (char c : target.http_path) {
        if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": the path holds a space or a control character"));
        }
      }
      if (const YamlNode* headers = Find(*http, "httpHeaders")) {
        for (const YamlNode& h : headers->items) {
          target.headers.emplace_back(ScalarAt(&h, "name").value_or(""),
                                      ScalarAt(&h, "value").value_or(""));
        }
      }
    }
    // Keep the kubelet's timing and thresholds; replace only where it connects.
    std::vector<YamlEntry> kept;
    for (YamlEntry& e : probe->entries) {
      if (e.key != "httpGet" && e.key != "tcpSocket" && e.key != "grpc") {
        kept.push_back(std::move(e));
      }
    }
    probe->entries.clear();
    probe->entries.push_back(
        YamlEntry{.key = "httpGet",
                  .value = Map({{"path", Text(target.path)}, {"port", Number(kAdminPort)}})});
    for (YamlEntry& e : kept) {
      probe->entries.push_back(std::move(e));
    }
    targets.push_back(std::move(target));
  }
  return absl::OkStatus();
}

YamlNode SidecarConfig(const MeshSettings& mesh, const PodSettings& pod,
                       const std::vector<DeclaredPort>& declared,
                       const std::vector<ProbeTarget>& probes) {
  std::vector<YamlNode> rules = pod.outbound_rules;
  if (mesh.mesh_networks.empty()) {
    rules.push_back(Map({{"name", Text("mesh")}, {"action", Text("mesh")}}));
  } else {
    rules.push_back(Map({{"name", Text("mesh")},
                         {"networks", TextSeq(mesh.mesh_networks)},
                         {"action", Text("mesh")}}));
    rules.push_back(Map({{"name", Text("other")}, {"action", Text(mesh.other_destinations)}}));
  }
  YamlNode outbound = Map({{"port", Number(kOutboundCapturePort)}});
  if (!pod.exclude_outbound_ports.empty()) {
    Set(outbound, "exclude_ports", NumberSeq(pod.exclude_outbound_ports));
  }
  if (!pod.exclude_outbound_networks.empty()) {
    Set(outbound, "exclude_networks", TextSeq(pod.exclude_outbound_networks));
  }
  Set(outbound, "rules", Seq(std::move(rules)));

  YamlNode inbound = Map({{"port", Number(kInboundCapturePort)}});
  if (!pod.exclude_inbound_ports.empty()) {
    Set(inbound, "exclude_ports",
        NumberSeq(
            std::vector<int>(pod.exclude_inbound_ports.begin(), pod.exclude_inbound_ports.end())));
  }
  Set(inbound, "mode", Text(pod.inbound_mode));
  Set(inbound, "allow", TextSeq(pod.inbound_allow));
  // One entry per declared port: the same policy, but its own metric series and a place to
  // start when a port needs its own.
  std::vector<YamlNode> ports;
  std::set<int> seen;
  for (const DeclaredPort& p : declared) {
    if (!pod.exclude_inbound_ports.contains(p.port) && seen.insert(p.port).second) {
      ports.push_back(Map({{"port", Number(p.port)}}));
    }
  }
  if (!ports.empty()) {
    Set(inbound, "ports", Seq(std::move(ports)));
  }

  YamlNode config = Map({
      {"trust_domain", Text(mesh.trust_domain)},
      {"identity",
       Map({{"certmgr", Map({{"address", Text(mesh.certmgr_address)},
                             {"server_ca", Text(absl::StrCat(kBootstrapDir, "/ca.pem"))},
                             {"token_file", Text(absl::StrCat(kTokenDir, "/token"))}})}})},
      {"admin", Map({{"listen", Text(absl::StrCat("0.0.0.0:", kAdminPort))}})},
      {"transparent", Map({{"proxy_uid", Number(mesh.proxy_uid)},
                           {"outbound", std::move(outbound)},
                           {"inbound", std::move(inbound)}})},
      {"log", Map({{"level", Text("info")}, {"format", Text("json")}})},
  });
  if (!probes.empty()) {
    std::vector<YamlNode> items;
    for (const ProbeTarget& p : probes) {
      YamlNode item = Map({{"path", Text(p.path)}, {"port", Number(p.port)}});
      if (!p.http_path.empty()) {
        Set(item, "http_path", Text(p.http_path));
      }
      if (p.grpc) {
        Set(item, "grpc", Bool(true));
        if (!p.grpc_service.empty()) {
          Set(item, "grpc_service", Text(p.grpc_service));
        }
      }
      if (!p.headers.empty()) {
        std::vector<YamlNode> headers;
        for (const auto& [name, value] : p.headers) {
          headers.push_back(Map({{"name", Text(name)}, {"value", Text(value)}}));
        }
        Set(item, "http_headers", Seq(std::move(headers)));
      }
      Set(item, "timeout", Text(absl::StrCat(p.timeout_seconds, "s")));
      items.push_back(std::move(item));
    }
    Set(config, "app_probes", Seq(std::move(items)));
  }
  return config;
}

YamlNode HardenedSecurityContext(int uid) {
  return Map({{"allowPrivilegeEscalation", Bool(false)},
              {"readOnlyRootFilesystem", Bool(true)},
              {"runAsNonRoot", Bool(true)},
              {"runAsUser", Number(uid)},
              {"runAsGroup", Number(uid)},
              {"capabilities", Map({{"drop", TextSeq({"ALL"})}})},
              {"seccompProfile", Map({{"type", Text("RuntimeDefault")}})}});
}

YamlNode Mount(absl::string_view volume, absl::string_view path) {
  return Map({{"name", Text(std::string(volume))},
              {"mountPath", Text(std::string(path))},
              {"readOnly", Bool(true)}});
}

YamlNode InitContainer(const MeshSettings& mesh) {
  // Root with NET_ADMIN and NET_RAW only, for iptables in the pod's network namespace; the only
  // container of the pod with them. It runs once, before every other container.
  return Map({
      {"name", Text(std::string(kInitName))},
      {"image", Text(mesh.image)},
      {"imagePullPolicy", Text(mesh.image_pull_policy)},
      {"args", TextSeq({"init-network", absl::StrCat("--config=", kConfigPath)})},
      {"resources", Map({{"requests", Map({{"cpu", Text("10m")}, {"memory", Text("16Mi")}})},
                         {"limits", Map({{"cpu", Text("100m")}, {"memory", Text("64Mi")}})}})},
      {"securityContext", Map({{"allowPrivilegeEscalation", Bool(false)},
                               {"readOnlyRootFilesystem", Bool(true)},
                               {"runAsNonRoot", Bool(false)},
                               {"runAsUser", Number(0)},
                               {"runAsGroup", Number(0)},
                               {"capabilities", Map({{"drop", TextSeq({"ALL"})},
                                                     {"add", TextSeq({"NET_ADMIN", "NET_RAW"})}})},
                               {"seccompProfile", Map({{"type", Text("RuntimeDefault")}})}})},
      {"volumeMounts", Seq({Mount(kConfigVolume, kConfigDir)})},
  });
}

YamlNode AdminProbe(absl::string_view path, int period, std::optional<int> failures) {
  YamlNode probe =
      Map({{"httpGet", Map({{"path", Text(std::string(path))}, {"port", Text("meshtls-admin")}})},
           {"periodSeconds", Number(period)}});
  if (failures) {
    Set(probe, "failureThreshold", Number(*failures));
  }
  return probe;
}

YamlNode SidecarContainer(const MeshSettings& mesh) {
  return Map({
      {"name", Text(std::string(kSidecarName))},
      {"image", Text(mesh.image)},
      {"imagePullPolicy", Text(mesh.image_pull_policy)},
      // A native sidecar (Kubernetes 1.29+): started and ready before the app containers,
      // stopped after them.
      {"restartPolicy", Text("Always")},
      {"args", TextSeq({absl::StrCat("--config=", kConfigPath), "--namespace=$(POD_NAMESPACE)",
                        "--service-account=$(POD_SERVICE_ACCOUNT)"})},
      {"env",
       Seq({Map({{"name", Text("POD_NAMESPACE")},
                 {"valueFrom",
                  Map({{"fieldRef", Map({{"fieldPath", Text("metadata.namespace")}})}})}}),
            Map({{"name", Text("POD_SERVICE_ACCOUNT")},
                 {"valueFrom",
                  Map({{"fieldRef", Map({{"fieldPath", Text("spec.serviceAccountName")}})}})}})})},
      {"ports", Seq({Map({{"name", Text("meshtls-admin")},
                          {"containerPort", Number(kAdminPort)},
                          {"protocol", Text("TCP")}})})},
      {"startupProbe", AdminProbe("/readyz", 1, 60)},
      {"readinessProbe", AdminProbe("/readyz", 5, std::nullopt)},
      {"livenessProbe", AdminProbe("/healthz", 10, std::nullopt)},
      {"resources", Map({{"requests", Map({{"cpu", Text("50m")}, {"memory", Text("32Mi")}})},
                         {"limits", Map({{"cpu", Text("1")}, {"memory", Text("128Mi")}})}})},
      {"securityContext", HardenedSecurityContext(mesh.proxy_uid)},
      {"volumeMounts",
       Seq({Mount(kConfigVolume, kConfigDir), Mount(kBootstrapVolume, kBootstrapDir),
            Mount(kTokenVolume, kTokenDir)})},
  });
}

std::vector<YamlNode> Volumes(const MeshSettings& mesh) {
  const std::string annotation_ref =
      absl::StrCat("metadata.annotations['", kConfigAnnotation, "']");
  return {
      Map({{"name", Text(std::string(kConfigVolume))},
           {"downwardAPI",
            Map({{"items",
                  Seq({Map({{"path", Text("sidecar.yaml")},
                            {"fieldRef", Map({{"fieldPath", Text(annotation_ref)}})}})})}})}}),
      Map({{"name", Text(std::string(kBootstrapVolume))},
           {"configMap", Map({{"name", Text(mesh.ca_bundle_config_map)}})}}),
      // The bootstrap credential: a ServiceAccount token for certmgr's audience, rotated by the
      // kubelet and bound to the pod.
      Map({{"name", Text(std::string(kTokenVolume))},
           {"projected", Map({{"sources", Seq({Map({{"serviceAccountToken",
                                                     Map({{"audience", Text(mesh.token_audience)},
                                                          {"expirationSeconds", Number(3600)},
                                                          {"path", Text("token")}})}})})}})}}),
  };
}

bool OptedOut(const YamlNode* metadata) {
  for (absl::string_view where : {"labels", "annotations"}) {
    const YamlNode* map = metadata == nullptr ? nullptr : Find(*metadata, where);
    if (ScalarAt(map, kInjectKey) == "disabled") {
      return true;
    }
  }
  return false;
}

bool HasContainerNamed(const YamlNode& spec, absl::string_view name) {
  for (absl::string_view list : {"initContainers", "containers"}) {
    if (const YamlNode* containers = Find(spec, list)) {
      for (const YamlNode& c : containers->items) {
        if (ScalarAt(&c, "name") == name) {
          return true;
        }
      }
    }
  }
  return false;
}

absl::Status CheckUid(const YamlNode* security_context, int proxy_uid, absl::string_view where) {
  if (std::optional<std::string> uid = ScalarAt(security_context, "runAsUser")) {
    if (*uid == absl::StrCat(proxy_uid)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " runs as uid ", proxy_uid,
          ", the sidecar's: its connections would bypass the capture; pick another uid"));
    }
  }
  return absl::OkStatus();
}

// Check refuses what cannot be meshed, and moves nothing yet.
absl::Status Check(const MeshSettings& mesh, const YamlNode& pod) {
  const YamlNode* spec = Find(pod, "spec");
  if (spec == nullptr || spec->kind != Kind::kMapping) {
    return absl::InvalidArgumentError("the pod template has no spec");
  }
  if (const YamlNode* host = Find(*spec, "hostNetwork");
      host != nullptr && config::EmitJson(*host) == "true") {  // true, True, yes...: YAML 1.1
    return absl::InvalidArgumentError(
        "hostNetwork pods cannot be meshed: the capture rules would change the node's own "
        "network; opt the pod out with the label meshtls.io/inject: disabled");
  }
  MESHTLS_RETURN_IF_ERROR(CheckUid(Find(*spec, "securityContext"), mesh.proxy_uid, "the pod"));
  for (absl::string_view list : {"initContainers", "containers"}) {
    if (const YamlNode* containers = Find(*spec, list)) {
      for (const YamlNode& c : containers->items) {
        MESHTLS_RETURN_IF_ERROR(
            CheckUid(Find(c, "securityContext"), mesh.proxy_uid,
                     absl::StrCat("container ", ScalarAt(&c, "name").value_or(""))));
      }
    }
  }
  if (HasContainerNamed(*spec, kInitName)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a container is already named ", kInitName, ", the injector's"));
  }
  if (const YamlNode* volumes = Find(*spec, "volumes")) {
    for (const YamlNode& v : volumes->items) {
      const std::string name = ScalarAt(&v, "name").value_or("");
      if (name == kConfigVolume || name == kBootstrapVolume || name == kTokenVolume) {
        return absl::InvalidArgumentError(
            absl::StrCat("a volume is already named ", name, ", the injector's"));
      }
    }
  }
  MESHTLS_ASSIGN_OR_RETURN(std::vector<DeclaredPort> declared, DeclaredPorts(*spec));
  for (const DeclaredPort& p : declared) {
    if (p.port == kAdminPort || p.port == kOutboundCapturePort || p.port == kInboundCapturePort) {
      return absl::InvalidArgumentError(
          absl::StrCat("container ", p.container, " declares port ", p.port,
                       ", which the sidecar uses (admin 15000, capture 15001 and 15006)"));
    }
    if (p.name == "meshtls-admin") {
      return absl::InvalidArgumentError(absl::StrCat(
          "container ", p.container, " declares a port named meshtls-admin, the sidecar's"));
    }
  }
  return absl::OkStatus();
}

// Build computes the injected template's parts on a copy of the pod, so an error leaves the
// caller's tree untouched.
absl::StatusOr<YamlNode> Build(const MeshSettings& mesh, const YamlNode& original) {
  MESHTLS_RETURN_IF_ERROR(Check(mesh, original));
  YamlNode pod = original;
  YamlNode& metadata = Child(pod, "metadata", Kind::kMapping);
  MESHTLS_RETURN_IF_ERROR(ExpectKind(&metadata, Kind::kMapping, "metadata"));
  const YamlNode* annotations = Find(metadata, "annotations");
  MESHTLS_RETURN_IF_ERROR(ExpectKind(annotations, Kind::kMapping, "metadata.annotations"));
  MESHTLS_ASSIGN_OR_RETURN(PodSettings settings, ReadPodSettings(mesh, annotations));

  YamlNode& spec = *FindMutable(pod, "spec");
  MESHTLS_ASSIGN_OR_RETURN(std::vector<DeclaredPort> declared, DeclaredPorts(spec));
  for (const DeclaredPort& p : declared) {
    if (settings.exclude_inbound_ports.contains(p.port)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "container ", p.container, " declares port ", p.port, ", which ",
          kExcludeInboundPortsAnnotation,
          " excludes: it would be reachable around the sidecar; mesh it or stop declaring it"));
    }
  }
  // The app containers' probes, and those of the pod's own native sidecars (init containers
  // that keep running, whose ports are captured too).
  std::vector<ProbeTarget> probes;
  if (YamlNode* init = FindMutable(spec, "initContainers")) {
    for (YamlNode& c : init->items) {
      if (ScalarAt(&c, "restartPolicy") == "Always") {
        MESHTLS_RETURN_IF_ERROR(MoveProbes(c, settings.exclude_inbound_ports, probes));
      }
    }
  }
  if (YamlNode* containers = FindMutable(spec, "containers")) {
    for (YamlNode& c : containers->items) {
      MESHTLS_RETURN_IF_ERROR(MoveProbes(c, settings.exclude_inbound_ports, probes));
    }
  }
  MESHTLS_ASSIGN_OR_RETURN(const std::string config_text,
                           config::EmitYaml({SidecarConfig(mesh, settings, declared, probes)}));

  YamlNode& labels = Child(metadata, "labels", Kind::kMapping);
  MESHTLS_RETURN_IF_ERROR(ExpectKind(&labels, Kind::kMapping, "metadata.labels"));
  Set(labels, kSidecarLabel, Text("true"));  // lets it reach certmgr (base/networkpolicy.yaml)
  YamlNode& written = Child(metadata, "annotations", Kind::kMapping);
  YamlNode config_node = Text(config_text);
  config_node.quoted = true;  // multi-line: a literal block
  Set(written, kConfigAnnotation, std::move(config_node));
  // Prometheus annotations point at the sidecar unless the app already uses them for its own.
  const std::optional<std::string> scrape_port = ScalarAt(&written, "prometheus.io/port");
  if (!scrape_port || *scrape_port == absl::StrCat(kAdminPort)) {
    Set(written, "prometheus.io/scrape", Text("true"));
    Set(written, "prometheus.io/port", Text(absl::StrCat(kAdminPort)));
    Set(written, "prometheus.io/path", Text("/metrics"));
  }

  // The init step and the sidecar go first, so that init containers of the pod's own already
  // run with the mesh (the capture rules apply to them too).
  YamlNode& init = Child(spec, "initContainers", Kind::kSequence);
  init.items.insert(init.items.begin(), {InitContainer(mesh), SidecarContainer(mesh)});
  YamlNode& volumes = Child(spec, "volumes", Kind::kSequence);
  MESHTLS_RETURN_IF_ERROR(ExpectKind(&volumes, Kind::kSequence, "spec.volumes"));
  for (YamlNode& v : Volumes(mesh)) {
    volumes.items.push_back(std::move(v));
  }
  return pod;
}

// ---- Manifests ----

YamlNode* Path(YamlNode& node, std::initializer_list<absl::string_view> keys) {
  YamlNode* at = &node;
  for (absl::string_view key : keys) {
    at = FindMutable(*at, key);
    if (at == nullptr) {
      return nullptr;
    }
  }
  return at;
}

absl::Status InjectObject(const MeshSettings& mesh, YamlNode& object, ManifestResult& result) {
  const std::string kind = ScalarAt(&object, "kind").value_or("");
  if (kind == "List") {
    if (YamlNode* items = FindMutable(object, "items"); items != nullptr) {
      for (size_t i = 0; i < items->items.size(); ++i) {
        if (absl::Status s = InjectObject(mesh, items->items[i], result); !s.ok()) {
          return absl::Status(s.code(), absl::StrCat("items[", i, "]: ", s.message()));
        }
      }
    }
    return absl::OkStatus();
  }
  YamlNode* pod = PodTemplateOf(object);
  if (pod == nullptr) {
    ++result.other;
    return absl::OkStatus();
  }
  const std::string name = ScalarAt(Find(object, "metadata"), "name").value_or("(no name)");
  absl::StatusOr<Outcome> outcome = InjectPodTemplate(mesh, *pod);
  if (!outcome.ok()) {
    return absl::Status(outcome.status().code(),
                        absl::StrCat(kind, " ", name, ": ", outcome.status().message()));
  }
  switch (*outcome) {
    case Outcome::kInjected:
      ++result.injected;
      break;
    case Outcome::kAlreadyInjected:
      ++result.already_injected;
      break;
    case Outcome::kOptedOut:
      ++result.opted_out;
      break;
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kInjected:
      return "injected";
    case Outcome::kAlreadyInjected:
      return "already injected";
    case Outcome::kOptedOut:
      return "opted out";
  }
  return "?";
}

absl::StatusOr<Outcome> InjectPodTemplate(const MeshSettings& mesh, YamlNode& pod) {
  if (pod.kind != Kind::kMapping) {
    return absl::InvalidArgumentError("the pod template is not a mapping");
  }
  if (OptedOut(Find(pod, "metadata"))) {
    return Outcome::kOptedOut;
  }
  if (const YamlNode* spec = Find(pod, "spec");
      spec != nullptr && HasContainerNamed(*spec, kSidecarName)) {
    return Outcome::kAlreadyInjected;
  }
  MESHTLS_ASSIGN_OR_RETURN(YamlNode injected, Build(mesh, pod));
  pod = std::move(injected);
  return Outcome::kInjected;
}

YamlNode* PodTemplateOf(YamlNode& object) {
  const std::optional<std::string> kind = ScalarAt(&object, "kind");
  if (!kind) {
    return nullptr;
  }
  if (*kind == "Pod") {
    return &object;
  }
  if (*kind == "Deployment" || *kind == "StatefulSet" || *kind == "DaemonSet" ||
      *kind == "ReplicaSet" || *kind == "Job" || *kind == "ReplicationController") {
    return Path(object, {"spec", "template"});
  }
  if (*kind == "CronJob") {
    return Path(object, {"spec", "jobTemplate", "spec", "template"});
  }
  return nullptr;
}

absl::StatusOr<ManifestResult> InjectManifests(const MeshSettings& mesh,
                                               std::vector<YamlNode>& documents) {
  ManifestResult result;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (documents[i].kind == Kind::kNull) {
      continue;
    }
    if (documents[i].kind != Kind::kMapping) {
      return absl::InvalidArgumentError(
          absl::StrCat("document ", i + 1, " (line ", documents[i].line,
                       "): not a Kubernetes object (", config::KindName(documents[i].kind), ")"));
    }
    if (absl::Status s = InjectObject(mesh, documents[i], result); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("document ", i + 1, " (line ", documents[i].line,
                                                 "): ", s.message()));
    }
  }
  return result;
}

}  // namespace meshtls::inject

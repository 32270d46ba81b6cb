#include "certmgr/inject/injector.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/config/yaml_tree.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::inject {
namespace {

using config::YamlNode;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

YamlNode Parse(absl::string_view yaml) {
  absl::StatusOr<YamlNode> node = config::ParseYamlTree(yaml);
  EXPECT_TRUE(node.ok()) << node.status();
  return node.ok() ? *node : YamlNode{};
}

// At follows "a.b[2].c" through mappings and lists; nullptr when absent.
const YamlNode* At(const YamlNode& root, absl::string_view path) {
  const YamlNode* node = &root;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    size_t bracket = part.find('[');
    absl::string_view key = part.substr(0, bracket);
    const YamlNode* next = config::FindKey(node, key);
    if (next == nullptr) {
      return nullptr;
    }
    node = next;
    while (bracket != absl::string_view::npos) {
      const size_t close = part.find(']', bracket);
      const size_t index = std::stoul(std::string(part.substr(bracket + 1, close - bracket - 1)));
      if (index >= node->items.size()) {
        return nullptr;
      }
      node = &node->items[index];
      bracket = part.find('[', close);
    }
  }
  return node;
}

std::string ScalarAt(const YamlNode& root, absl::string_view path) {
  const YamlNode* node = At(root, path);
  return node == nullptr ? "<absent>" : node->scalar;
}

std::vector<std::string> Names(const YamlNode& root, absl::string_view path) {
  std::vector<std::string> names;
  if (const YamlNode* list = At(root, path)) {
    for (const YamlNode& item : list->items) {
      names.push_back(ScalarAt(item, "name"));
    }
  }
  return names;
}

// A web app: one port, an HTTP liveness probe by port name, a TCP readiness probe, an exec
// startup probe, and an init container of its own.
constexpr absl::string_view kWeb = R"(
metadata:
  labels: {app: web}
spec:
  serviceAccountName: web
  initContainers:
    - name: migrate
      image: migrate
  containers:
    - name: app
      image: nginx
      ports: [{name: http, containerPort: 8080}]
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
          httpHeaders: [{name: X-Probe, value: "1"}]
        periodSeconds: 7
        timeoutSeconds: 3
      readinessProbe:
        tcpSocket: {port: 8080}
      startupProbe:
        exec: {command: [cat, /tmp/ready]}
    - name: metrics
      image: exporter
      ports: [{containerPort: 9100}, {containerPort: 9101, protocol: UDP}]
  volumes:
    - name: data
      emptyDir: {}
)";

// Annotation is the pod's annotation `key` (the keys hold dots, which At's paths cannot).
std::optional<std::string> Annotation(const YamlNode& pod, absl::string_view key) {
  return config::ScalarAt(At(pod, "metadata.annotations"), key);
}

absl::StatusOr<sidecar::SidecarConfig> GeneratedConfig(const YamlNode& pod) {
  std::optional<std::string> text = Annotation(pod, kConfigAnnotation);
  if (!text) {
    return absl::NotFoundError("no sidecar-config annotation");
  }
  return sidecar::ParseSidecarConfig(*text, /*check_files=*/false);
}

TEST(InjectorTest, AddsInitStepSidecarVolumesAndConfig) {
  YamlNode pod = Parse(kWeb);
  const YamlNode original = pod;
  absl::StatusOr<Outcome> outcome = InjectPodTemplate(MeshSettings{}, pod);
  ASSERT_TRUE(outcome.ok()) << outcome.status();
  EXPECT_EQ(*outcome, Outcome::kInjected);

  // Ours first, so the pod's own init containers already have the mesh.
  EXPECT_THAT(Names(pod, "spec.initContainers"),
              ElementsAre("meshtls-init", "meshtls-sidecar", "migrate"));
  EXPECT_THAT(Names(pod, "spec.volumes"),
              ElementsAre("data", "meshtls-config", "meshtls-bootstrap-ca", "meshtls-token"));
  EXPECT_EQ(ScalarAt(pod, "metadata.labels.app"), "web");

  // The init step alone holds NET_ADMIN and NET_RAW, as root.
  const YamlNode& init = *At(pod, "spec.initContainers[0]");
  EXPECT_EQ(ScalarAt(init, "securityContext.runAsUser"), "0");
  EXPECT_EQ(ScalarAt(init, "securityContext.capabilities.drop[0]"), "ALL");
  EXPECT_EQ(ScalarAt(init, "securityContext.capabilities.add[0]"), "NET_ADMIN");
  EXPECT_EQ(ScalarAt(init, "securityContext.capabilities.add[1]"), "NET_RAW");
  EXPECT_EQ(ScalarAt(init, "args[0]"), "init-network");

  // The sidecar: native, as the uid the rules exempt, hardened, no capability.
  const YamlNode& sidecar = *At(pod, "spec.initContainers[1]");
  EXPECT_EQ(ScalarAt(sidecar, "restartPolicy"), "Always");
  EXPECT_EQ(ScalarAt(sidecar, "securityContext.runAsUser"), "1337");
  EXPECT_EQ(ScalarAt(sidecar, "securityContext.runAsNonRoot"), "true");
  EXPECT_EQ(ScalarAt(sidecar, "securityContext.readOnlyRootFilesystem"), "true");
  EXPECT_EQ(ScalarAt(sidecar, "securityContext.allowPrivilegeEscalation"), "false");
  EXPECT_EQ(ScalarAt(sidecar, "securityContext.capabilities.drop[0]"), "ALL");
  EXPECT_EQ(At(sidecar, "securityContext.capabilities.add"), nullptr);
  EXPECT_EQ(ScalarAt(sidecar, "env[1].valueFrom.fieldRef.fieldPath"), "spec.serviceAccountName");
  EXPECT_EQ(ScalarAt(pod, "spec.volumes[3].projected.sources[0].serviceAccountToken.audience"),
            "meshtls");

  EXPECT_EQ(config::ScalarAt(At(pod, "metadata.labels"), "meshtls.io/sidecar"), "true");

  // The generated config is one the sidecar takes: transparent both ways, the declared TCP
  // ports listed, the UDP one not, and the probes moved.
  absl::StatusOr<sidecar::SidecarConfig> config = GeneratedConfig(pod);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->trust_domain, "cluster.local");
  EXPECT_EQ(config->admin_listen, "0.0.0.0:15000");
  EXPECT_TRUE(config->transparent.outbound.enabled);
  EXPECT_TRUE(config->transparent.inbound.enabled);
  EXPECT_EQ(config->transparent.proxy_uid, 1337u);
  ASSERT_EQ(config->transparent.inbound.ports.size(), 2u);
  EXPECT_EQ(config->transparent.inbound.ports[0].port, 8080);
  EXPECT_EQ(config->transparent.inbound.ports[1].port, 9100);
  ASSERT_EQ(config->app_probes.size(), 2u);
  EXPECT_EQ(config->app_probes[0].path, "/app-health/app/livez");
  EXPECT_EQ(config->app_probes[0].port, 8080);
  EXPECT_EQ(config->app_probes[0].http_path, "/healthz");
  EXPECT_EQ(config->app_probes[0].timeout, absl::Seconds(3));
  ASSERT_EQ(config->app_probes[0].http_headers.size(), 1u);
  EXPECT_EQ(config->app_probes[0].http_headers[0].first, "X-Probe");
  EXPECT_EQ(config->app_probes[1].path, "/app-health/app/readyz");
  EXPECT_EQ(config->app_probes[1].http_path, "");

  // The app container: only the moved probes differ, their timing kept; exec untouched.
  const YamlNode& app = *At(pod, "spec.containers[0]");
  EXPECT_EQ(ScalarAt(app, "livenessProbe.httpGet.path"), "/app-health/app/livez");
  EXPECT_EQ(ScalarAt(app, "livenessProbe.httpGet.port"), "15000");
  EXPECT_EQ(At(app, "livenessProbe.httpGet.httpHeaders"), nullptr);
  EXPECT_EQ(ScalarAt(app, "livenessProbe.periodSeconds"), "7");
  EXPECT_EQ(ScalarAt(app, "livenessProbe.timeoutSeconds"), "3");
  EXPECT_EQ(ScalarAt(app, "readinessProbe.httpGet.path"), "/app-health/app/readyz");
  EXPECT_EQ(At(app, "readinessProbe.tcpSocket"), nullptr);
  EXPECT_EQ(config::EmitJson(*At(app, "startupProbe")),
            config::EmitJson(*At(original, "spec.containers[0].startupProbe")));
  YamlNode app_without_probes = app;
  YamlNode original_without_probes = *At(original, "spec.containers[0]");
  for (YamlNode* c : {&app_without_probes, &original_without_probes}) {
    std::erase_if(c->entries, [](const config::YamlEntry& e) {
      return e.key == "livenessProbe" || e.key == "readinessProbe";
    });
  }
  EXPECT_EQ(config::EmitJson(app_without_probes), config::EmitJson(original_without_probes));
  EXPECT_EQ(config::EmitJson(*At(pod, "spec.containers[1]")),
            config::EmitJson(*At(original, "spec.containers[1]")));
}

TEST(InjectorTest, InjectingTwiceChangesNothing) {
  YamlNode pod = Parse(kWeb);
  ASSERT_EQ(*InjectPodTemplate(MeshSettings{}, pod), Outcome::kInjected);
  const std::string once = config::EmitJson(pod);
  absl::StatusOr<Outcome> again = InjectPodTemplate(MeshSettings{}, pod);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, Outcome::kAlreadyInjected);
  EXPECT_EQ(config::EmitJson(pod), once);
}

TEST(InjectorTest, OptOutByLabelOrAnnotationChangesNothing) {
  for (absl::string_view where : {"labels", "annotations"}) {
    YamlNode pod = Parse(absl::StrCat("metadata: {", where,
                                      ": {meshtls.io/inject: disabled}}\n"
                                      "spec: {hostNetwork: true, containers: [{name: a}]}\n"));
    const std::string before = config::EmitJson(pod);
    absl::StatusOr<Outcome> outcome = InjectPodTemplate(MeshSettings{}, pod);
    ASSERT_TRUE(outcome.ok()) << outcome.status();
    EXPECT_EQ(*outcome, Outcome::kOptedOut) << where;
    EXPECT_EQ(config::EmitJson(pod), before);
  }
}

TEST(InjectorTest, MeshSettingsShapeTheConfig) {
  MeshSettings mesh;
  mesh.trust_domain = "prod.example";
  mesh.image = "registry.example/meshtls:1.2";
  mesh.certmgr_address = "certmgr.mesh.svc:9443";
  mesh.proxy_uid = 4242;
  mesh.mesh_networks = {"10.244.0.0/16", "10.96.0.0/12"};
  mesh.other_destinations = "deny";
  mesh.exclude_outbound_networks = {"169.254.169.254/32"};
  YamlNode pod = Parse("spec: {containers: [{name: a, ports: [{containerPort: 80}]}]}");
  ASSERT_TRUE(InjectPodTemplate(mesh, pod).ok());
  EXPECT_EQ(ScalarAt(pod, "spec.initContainers[1].image"), "registry.example/meshtls:1.2");
  EXPECT_EQ(ScalarAt(pod, "spec.initContainers[1].securityContext.runAsUser"), "4242");
  absl::StatusOr<sidecar::SidecarConfig> config = GeneratedConfig(pod);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->trust_domain, "prod.example");
  EXPECT_THAT(config->certmgr.addresses, ElementsAre("certmgr.mesh.svc:9443"));
  EXPECT_EQ(config->transparent.proxy_uid, 4242u);
  const auto& rules = config->transparent.outbound.rules;
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_EQ(rules[0].name, "mesh");
  EXPECT_EQ(rules[0].networks.size(), 2u);
  EXPECT_EQ(rules[1].name, "other");
  EXPECT_EQ(rules[1].action, sidecar::DestinationRule::Action::kDeny);
  EXPECT_EQ(config->transparent.outbound.exclude_networks.size(), 1u);
  EXPECT_THAT(config->transparent.inbound.default_policy.allow,
              ElementsAre("spiffe://prod.example/ns/*"));
}

TEST(InjectorTest, AnnotationsShapeTheConfig) {
  YamlNode pod = Parse(R"(
metadata:
  annotations:
    meshtls.io/mode: permissive
    meshtls.io/inbound-allow: "spiffe://cluster.local/ns/shop/sa/front, spiffe://cluster.local/ns/ops/*"
    meshtls.io/exclude-inbound-ports: "9999"
    meshtls.io/exclude-outbound-ports: "5432, 6379"
    meshtls.io/exclude-outbound-networks: "10.0.9.0/24"
    meshtls.io/outbound-rules: |
      - name: payments
        networks: [10.96.12.4/32]
        ports: [8443]
        action: mesh
        expect: [spiffe://cluster.local/ns/pay/sa/api]
      - {name: legacy, networks: [10.0.5.0/24], action: passthrough}
      - {name: pods, networks: [10.244.0.0/16], action: mesh, transport: pooled}
spec:
  containers:
    - name: a
      ports: [{containerPort: 8080}]
      livenessProbe: {httpGet: {port: 9999, path: /live}}
)");
  ASSERT_TRUE(InjectPodTemplate(MeshSettings{}, pod).ok());
  absl::StatusOr<sidecar::SidecarConfig> config = GeneratedConfig(pod);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto& in = config->transparent.inbound;
  EXPECT_EQ(in.default_policy.mode, sidecar::InboundMode::kPermissive);
  EXPECT_THAT(in.default_policy.allow, ElementsAre("spiffe://cluster.local/ns/shop/sa/front",
                                                   "spiffe://cluster.local/ns/ops/*"));
  EXPECT_THAT(in.exclude_ports, ElementsAre(9999));
  EXPECT_THAT(config->transparent.outbound.exclude_ports, ElementsAre(53, 5432, 6379));
  const auto& rules = config->transparent.outbound.rules;
  ASSERT_EQ(rules.size(), 4u);
  EXPECT_EQ(rules[0].name, "payments");
  EXPECT_EQ(rules[0].transport, sidecar::Transport::kTls);
  EXPECT_EQ(rules[1].name, "legacy");
  EXPECT_EQ(rules[2].name, "pods");
  EXPECT_EQ(rules[2].transport, sidecar::Transport::kPooled);
  EXPECT_EQ(rules[3].name, "mesh");
  // A probe of an excluded port reaches the app as before.
  EXPECT_EQ(ScalarAt(pod, "spec.containers[0].livenessProbe.httpGet.path"), "/live");
  EXPECT_TRUE(config->app_probes.empty());
}

TEST(InjectorTest, ProbesOfThePodsOwnNativeSidecarsAreMovedToo) {
  YamlNode pod = Parse(R"(
spec:
  initContainers:
    - {name: proxy, restartPolicy: Always, ports: [{containerPort: 9901}],
       startupProbe: {httpGet: {port: 9901, path: /ready}}}
    - {name: setup, readinessProbe: {tcpSocket: {port: 1}}}
  containers: [{name: a}]
)");
  ASSERT_TRUE(InjectPodTemplate(MeshSettings{}, pod).ok());
  EXPECT_EQ(ScalarAt(pod, "spec.initContainers[2].startupProbe.httpGet.path"),
            "/app-health/proxy/startupz");
  EXPECT_EQ(ScalarAt(pod, "spec.initContainers[3].readinessProbe.tcpSocket.port"), "1");
  absl::StatusOr<sidecar::SidecarConfig> config = GeneratedConfig(pod);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->app_probes.size(), 1u);
  EXPECT_EQ(config->app_probes[0].port, 9901);
}

TEST(InjectorTest, GrpcProbesMoveWithTheirServiceName) {
  YamlNode pod = Parse(R"(
spec:
  containers:
    - name: cart
      ports: [{name: grpc, containerPort: 9000}]
      livenessProbe: {grpc: {port: 9000, service: shop.Cart}, periodSeconds: 3}
      readinessProbe: {grpc: {port: 9000}}
)");
  ASSERT_TRUE(InjectPodTemplate(MeshSettings{}, pod).ok());
  EXPECT_EQ(ScalarAt(pod, "spec.containers[0].livenessProbe.httpGet.path"),
            "/app-health/cart/livez");
  EXPECT_EQ(At(pod, "spec.containers[0].livenessProbe.grpc"), nullptr);
  EXPECT_EQ(ScalarAt(pod, "spec.containers[0].livenessProbe.periodSeconds"), "3");
  absl::StatusOr<sidecar::SidecarConfig> config = GeneratedConfig(pod);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->app_probes.size(), 2u);
  EXPECT_TRUE(config->app_probes[0].grpc);
  EXPECT_EQ(config->app_probes[0].grpc_service, "shop.Cart");
  EXPECT_EQ(config->app_probes[0].port, 9000);
  EXPECT_TRUE(config->app_probes[1].grpc);
  EXPECT_EQ(config->app_probes[1].grpc_service, "");
}

TEST(InjectorTest, PrometheusAnnotationsOfTheAppAreKept) {
  YamlNode pod = Parse(R"(
metadata:
  annotations: {prometheus.io/scrape: "true", prometheus.io/port: "9100"}
spec: {containers: [{name: a}]}
)");
  ASSERT_TRUE(InjectPodTemplate(MeshSettings{}, pod).ok());
  EXPECT_EQ(Annotation(pod, "prometheus.io/port"), "9100");
}

struct Refusal {
  const char* name;
  const char* pod;
  const char* message;
};

class InjectorRefusalTest : public ::testing::TestWithParam<Refusal> {};

TEST_P(InjectorRefusalTest, RefusesWithAClearMessageAndChangesNothing) {
  YamlNode pod = Parse(GetParam().pod);
  const std::string before = config::EmitJson(pod);
  absl::StatusOr<Outcome> outcome = InjectPodTemplate(MeshSettings{}, pod);
  ASSERT_FALSE(outcome.ok());
  EXPECT_THAT(outcome.status().message(), HasSubstr(GetParam().message));
  EXPECT_EQ(config::EmitJson(pod), before);
}

INSTANTIATE_TEST_SUITE_P(
    Table, InjectorRefusalTest,
    ::testing::Values(
        Refusal{"HostNetwork", "spec: {hostNetwork: true, containers: [{name: a}]}",
                "hostNetwork pods cannot be meshed"},
        Refusal{"AdminPort", "spec: {containers: [{name: a, ports: [{containerPort: 15000}]}]}",
                "container a declares port 15000, which the sidecar uses"},
        Refusal{"CapturePort",
                "spec: {initContainers: [{name: i, ports: [{containerPort: 15006}]}], "
                "containers: [{name: a}]}",
                "container i declares port 15006"},
        Refusal{"AdminPortName",
                "spec: {containers: [{name: a, ports: [{name: meshtls-admin, containerPort: 1}]}]}",
                "a port named meshtls-admin"},
        Refusal{"InitName", "spec: {containers: [{name: meshtls-init}]}",
                "already named meshtls-init"},
        Refusal{"VolumeName",
                "spec: {containers: [{name: a}], volumes: [{name: meshtls-token, emptyDir: {}}]}",
                "a volume is already named meshtls-token"},
        Refusal{"ProxyUidPod",
                "spec: {securityContext: {runAsUser: 1337}, containers: [{name: a}]}",
                "the pod runs as uid 1337"},
        Refusal{"ProxyUidContainer",
                "spec: {containers: [{name: a, securityContext: {runAsUser: 1337}}]}",
                "container a runs as uid 1337"},
        Refusal{"NoSpec", "metadata: {name: x}", "no spec"},
        Refusal{"BadMode", "metadata: {annotations: {meshtls.io/mode: loose}}\nspec: {}",
                "meshtls.io/mode: \"loose\" is not strict or permissive"},
        Refusal{"BadAllow",
                "metadata: {annotations: {meshtls.io/inbound-allow: \"spiffe://x/a*\"}}\nspec: {}",
                "meshtls.io/inbound-allow: "},
        Refusal{"EmptyAllow",
                "metadata: {annotations: {meshtls.io/inbound-allow: \" , \"}}\nspec: {}",
                "meshtls.io/inbound-allow: empty"},
        Refusal{
            "BadPort",
            "metadata: {annotations: {meshtls.io/exclude-outbound-ports: \"80,http\"}}\nspec: {}",
            "meshtls.io/exclude-outbound-ports: \"http\" is not a port number"},
        Refusal{"BadNetwork",
                "metadata: {annotations: {meshtls.io/exclude-outbound-networks: \"10.0.0.1/8\"}}\n"
                "spec: {}",
                "meshtls.io/exclude-outbound-networks: "},
        Refusal{"RulesNotYaml",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a\"}}\nspec: {}",
                "meshtls.io/outbound-rules: line"},
        Refusal{"RulesNotAList",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"name: a\"}}\nspec: {}",
                "meshtls.io/outbound-rules must be a list"},
        Refusal{"RuleUnknownField",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a, action: mesh, "
                "port: 1}]\"}}\n"
                "spec: {}",
                "meshtls.io/outbound-rules[0]: unknown field \"port\""},
        Refusal{"RuleUnknownTransport",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a, action: mesh, "
                "transport: quic}]\"}}\nspec: {}",
                "meshtls.io/outbound-rules[0]: transport \"quic\" is not tls or pooled"},
        Refusal{"RuleTransportOnPassthrough",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a, action: "
                "passthrough, transport: pooled}]\"}}\nspec: {}",
                "transport is for mesh rules only"},
        Refusal{"RuleTakenName",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: mesh, action: "
                "deny}]\"}}\nspec: {}",
                "the name \"mesh\" is taken"},
        Refusal{"RuleWithoutAction",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a}]\"}}\nspec: {}",
                "meshtls.io/outbound-rules[0]: action is required"},
        Refusal{"RuleExpectOnPassthrough",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a, action: "
                "passthrough, expect: [spiffe://cluster.local/ns/a/sa/b]}]\"}}\nspec: {}",
                "expect is for mesh rules only"},
        Refusal{"RuleBadNetwork",
                "metadata: {annotations: {meshtls.io/outbound-rules: \"[{name: a, action: mesh, "
                "networks: "
                "[10.1.2.300/32]}]\"}}\nspec: {}",
                "meshtls.io/outbound-rules[0].networks: "},
        Refusal{"ExcludedDeclaredPort",
                "metadata: {annotations: {meshtls.io/exclude-inbound-ports: \"8080\"}}\n"
                "spec: {containers: [{name: a, ports: [{containerPort: 8080}]}]}",
                "declares port 8080, which meshtls.io/exclude-inbound-ports excludes"},
        Refusal{"HttpsProbe",
                "spec: {containers: [{name: a, readinessProbe: {httpGet: {port: 8443, scheme: "
                "HTTPS}}}]}",
                "an HTTPS probe of captured port 8443 cannot work"},
        Refusal{"GrpcProbeWithoutPort",
                "spec: {containers: [{name: a, livenessProbe: {grpc: {}}}]}",
                "livenessProbe: no port"},
        Refusal{"GrpcProbeNull", "spec: {containers: [{name: a, livenessProbe: {grpc: null}}]}",
                "livenessProbe: no port"},
        Refusal{"HttpProbeNotAMapping",
                "spec: {containers: [{name: a, livenessProbe: {httpGet: [1]}}]}", "no port"},
        Refusal{"ProbeTimeoutTooLong",
                "spec: {containers: [{name: a, readinessProbe: {tcpSocket: {port: 1}, "
                "timeoutSeconds: 61}}]}",
                "timeoutSeconds \"61\" is not 1 to 60"},
        Refusal{"ProbePathWithASpace",
                "spec: {containers: [{name: a, readinessProbe: {httpGet: {port: 1, path: \"/a "
                "b\"}}}]}",
                "the path holds a space or a control character"},
        Refusal{"RuleQuotedPort",
                "metadata: {annotations: {meshtls.io/outbound-rules: '[{\"name\": \"db\", "
                "\"action\": \"passthrough\", \"ports\": [\"5432\"]}]'}}\nspec: {}",
                "\"5432\" must be a number, not a string"},
        Refusal{"ContainersNotAList", "spec: {containers: {name: a}}",
                "spec.containers must be a list"},
        Refusal{"VolumesNotAList", "spec: {containers: [{name: a}], volumes: 3}",
                "spec.volumes must be a list"},
        Refusal{"AnnotationsNotAMapping", "metadata: {annotations: [1]}\nspec: {containers: []}",
                "metadata.annotations must be a mapping"},
        Refusal{"HostNetworkYes", "spec: {hostNetwork: yes, containers: [{name: a}]}",
                "hostNetwork pods cannot be meshed"},
        Refusal{"ProbeUnknownPortName",
                "spec: {containers: [{name: a, readinessProbe: {tcpSocket: {port: web}}}]}",
                "the container declares no port named \"web\""}),
    [](const ::testing::TestParamInfo<Refusal>& info) { return std::string(info.param.name); });

TEST(InjectManifestsTest, InjectsEveryKindThatHoldsAPodTemplateAndNothingElse) {
  absl::StatusOr<std::vector<YamlNode>> documents = config::ParseYamlStream(R"(
kind: Deployment
metadata: {name: d}
spec: {template: {spec: {containers: [{name: a}]}}}
---
kind: Service
metadata: {name: s}
spec: {ports: [{port: 80}]}
---
---
kind: CronJob
metadata: {name: c}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: a}]}}}}}
---
kind: List
items:
  - {kind: Pod, metadata: {name: p}, spec: {containers: [{name: a}]}}
  - {kind: StatefulSet, spec: {template: {metadata: {labels: {meshtls.io/inject: disabled}},
                                          spec: {containers: [{name: a}]}}}}
)",
                                                                            1 << 20);
  ASSERT_TRUE(documents.ok()) << documents.status();
  const std::string service = config::EmitJson((*documents)[1]);
  absl::StatusOr<ManifestResult> result = InjectManifests(MeshSettings{}, *documents);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->injected, 3);
  EXPECT_EQ(result->opted_out, 1);
  EXPECT_EQ(result->other, 1);
  EXPECT_EQ(config::EmitJson((*documents)[1]), service);
  EXPECT_EQ((*documents)[2].kind, YamlNode::Kind::kNull);
  EXPECT_THAT(Names((*documents)[0], "spec.template.spec.initContainers"),
              ElementsAre("meshtls-init", "meshtls-sidecar"));
  EXPECT_THAT(Names((*documents)[3], "spec.jobTemplate.spec.template.spec.initContainers"),
              ElementsAre("meshtls-init", "meshtls-sidecar"));
  EXPECT_THAT(Names((*documents)[4], "items[0].spec.initContainers"),
              ElementsAre("meshtls-init", "meshtls-sidecar"));

  absl::StatusOr<ManifestResult> again = InjectManifests(MeshSettings{}, *documents);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->injected, 0);
  EXPECT_EQ(again->already_injected, 3);
}

TEST(InjectManifestsTest, AnErrorNamesTheDocumentKindAndName) {
  absl::StatusOr<std::vector<YamlNode>> documents = config::ParseYamlStream(
      "kind: Service\n---\nkind: DaemonSet\nmetadata: {name: agent}\n"
      "spec: {template: {spec: {hostNetwork: true, containers: [{name: a}]}}}\n",
      1 << 20);
  ASSERT_TRUE(documents.ok());
  absl::StatusOr<ManifestResult> result = InjectManifests(MeshSettings{}, *documents);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(),
              HasSubstr("document 2 (line 3): DaemonSet agent: hostNetwork pods cannot"));
}

}  // namespace
}  // namespace meshtls::inject

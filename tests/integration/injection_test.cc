// Injected pods end to end: `meshtls-certmgr inject` meshes two Deployments, and each pod of the
// test's own network (tests/testing/netns.h) runs exactly what the injected manifest says, as a
// kubelet would: the volumes mounted at the manifest's paths (in a private mount namespace: an
// overlay over /etc and a tmpfs over /run, so the machine's own files are untouched), then the
// init container's command as root, then the sidecar's as its runAsUser with the downward-API
// variables filled in, then the app. The apps talk to each other's pod addresses transparently,
// the kubelet's moved probe is answered through the sidecar's admin port, and a meshed pod that
// the server's allow-list (an annotation) does not name is refused. With MESHTLS_TEST_IMAGE set
// (an image of scripts/image.sh), certmgr, the init step and the sidecars run from that image
// with podman, in the node's and the pods' network namespaces, the containers with the
// manifest's user, capabilities and volumes.

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/base/file.h"
#include "common/base/status_macros.h"
#include "common/config/yaml_tree.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"

namespace meshtls {
namespace {

using config::YamlNode;
using testing::CertmgrProcess;
using testing::EchoFrom;
using testing::EchoServer;
using testing::Handshakes;
using testing::IsOk;
using testing::Network;
using testing::Pod;
using testing::Subnet;

constexpr char kTd[] = "example.org";
constexpr uint16_t kAppPort = 8080;

const YamlNode* Get(const YamlNode& node, absl::string_view key) {
  return config::FindKey(&node, key);
}

// At follows keys and list indices ("spec", "template", "0", ...).
const YamlNode* At(const YamlNode& root, std::initializer_list<absl::string_view> path) {
  const YamlNode* node = &root;
  for (absl::string_view step : path) {
    if (node == nullptr) {
      return nullptr;
    }
    size_t index = 0;
    if (node->kind == YamlNode::Kind::kSequence && absl::SimpleAtoi(step, &index)) {
      node = index < node->items.size() ? &node->items[index] : nullptr;
    } else {
      node = Get(*node, step);
    }
  }
  return node;
}

std::vector<std::string> Strings(const YamlNode* list) {
  std::vector<std::string> out;
  if (list != nullptr) {
    for (const YamlNode& item : list->items) {
      out.push_back(item.scalar);
    }
  }
  return out;
}

// A Deployment as its team writes it: an app on port 8080 with a TCP readiness probe, and the
// annotations it chooses.
std::string Deployment(const std::string& name, const std::string& annotations) {
  return absl::StrCat(
      "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ", name,
      ", namespace: default}\nspec:\n  selector: {matchLabels: {app: ", name,
      "}}\n  template:\n    metadata:\n      labels: {app: ", name, "}\n      annotations: {",
      annotations, "}\n    spec:\n      serviceAccountName: ", name,
      "\n      containers:\n        - name: app\n          image: registry.example/", name,
      ":1\n          ports: [{name: http, containerPort: ", kAppPort,
      "}]\n          readinessProbe: {tcpSocket: {port: http}, periodSeconds: 5}\n");
}

class InjectionTest : public ::testing::Test {
 protected:
  // InjectedPod is one pod of an injected manifest, run as a kubelet would.
  struct InjectedPod {
    Pod* pod = nullptr;
    testing::TempDir dir;
    std::unique_ptr<testing::Subprocess> sidecar;
    std::unique_ptr<EchoServer> app;
  };

  void SetUp() override {
    MESHTLS_ASSERT_OK_AND_MOVE(network_, Network::Create());
    testing::CertmgrOptions options;
    options.netns = network_->node();
    options.listen_ip = network_->node_ipv4();
    options.image = image_;
    MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd, options));
    // The mesh-wide settings, as certmgr's config in the cluster holds them.
    injection_config_ =
        dir_.Write("injection.yaml",
                   absl::StrCat("trust_domain: ", kTd, "\nca: {dir: /nonexistent}\ninjection:\n",
                                "  certmgr_address: \"", certmgr_->address(), "\"\n",
                                "  mesh_networks: [", network_->Ipv4Cidr(Subnet::kMesh), ", \"",
                                network_->Ipv6Cidr(Subnet::kMesh), "\"]\n"));
  }

  // Inject runs `meshtls-certmgr inject` on the manifest and returns the pod template.
  absl::StatusOr<YamlNode> Inject(const std::string& manifest) {
    const std::string file = dir_.Write("manifest.yaml", manifest);
    MESHTLS_ASSIGN_OR_RETURN(std::string out,
                             testing::RunCommand({testing::BinaryPath("meshtls-certmgr"), "inject",
                                                  "--config", injection_config_, file}));
    // stderr's summary comes first in RunCommand's output: the YAML starts at apiVersion.
    const size_t start = out.find("apiVersion:");
    MESHTLS_ASSIGN_OR_RETURN(std::vector<YamlNode> documents,
                             config::ParseYamlStream(out.substr(start), 1 << 20));
    const YamlNode* pod = documents.empty() ? nullptr : At(documents[0], {"spec", "template"});
    if (pod == nullptr) {
      return absl::InternalError(absl::StrCat("inject gave no pod template:\n", out));
    }
    return *pod;
  }

  // KubeletArgv runs `command` in the pod as `uid` with the injected volumes mounted where the
  // containers expect them: the annotation's config, the bootstrap CA, the token.
  std::vector<std::string> KubeletArgv(const InjectedPod& p, std::optional<uint32_t> uid,
                                       std::vector<std::string> command) const {
    const std::string overlay = p.dir.File("etc-overlay");
    const std::string script = absl::StrCat(
        "set -e; mkdir -p ", overlay, "/upper ", overlay, "/work; ",
        "mount -t overlay overlay -o lowerdir=/etc,upperdir=", overlay, "/upper,workdir=", overlay,
        "/work /etc; mkdir -p /etc/meshtls/config /etc/meshtls/bootstrap; ", "mount --bind ",
        p.dir.File("config"), " /etc/meshtls/config; ", "mount --bind ", p.dir.File("bootstrap"),
        " /etc/meshtls/bootstrap; ", "mount -t tmpfs tmpfs /run; mkdir -p /run/secrets/meshtls; ",
        "mount --bind ", p.dir.File("token"), " /run/secrets/meshtls; exec \"$@\"");
    std::vector<std::string> argv = testing::NetnsLauncher(p.pod->name());
    argv.insert(argv.end(), {testing::FindProgram("unshare"), "--mount", "--propagation", "private",
                             "sh", "-c", script, "sh"});
    if (uid.has_value()) {
      argv.insert(argv.end(), {testing::FindProgram("setpriv"), absl::StrCat("--reuid=", *uid),
                               absl::StrCat("--regid=", *uid), "--clear-groups"});
    }
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
  }

  // ImageArgv runs `args` with the image's entrypoint (meshtls-sidecar) in a container of the
  // pod's network namespace, as a kubelet's runtime would: the volumes mounted read-only at the
  // manifest's paths, the user, the capabilities and a read-only root filesystem.
  std::vector<std::string> ImageArgv(const InjectedPod& p, uint32_t uid, bool net_admin,
                                     const std::vector<std::string>& args) const {
    std::vector<std::string> argv = testing::PodmanRun(p.pod->name());
    argv.insert(argv.end(), {"--user", absl::StrCat(uid, ":", uid), "--read-only", "--cap-drop",
                             "ALL", "-v", p.dir.File("config") + ":/etc/meshtls/config:ro", "-v",
                             p.dir.File("bootstrap") + ":/etc/meshtls/bootstrap:ro", "-v",
                             p.dir.File("token") + ":/var/run/secrets/meshtls:ro"});
    if (net_admin) {
      argv.insert(argv.end(), {"--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"});
    }
    argv.push_back(image_);
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  // Start makes a pod from the injected template: volumes, init container, sidecar (ready).
  absl::StatusOr<std::unique_ptr<InjectedPod>> Start(const std::string& name,
                                                     const YamlNode& template_node) {
    auto p = std::make_unique<InjectedPod>();
    MESHTLS_ASSIGN_OR_RETURN(p->pod, network_->AddPod(name));
    const YamlNode* init = At(template_node, {"spec", "initContainers", "0"});
    const YamlNode* sidecar = At(template_node, {"spec", "initContainers", "1"});
    const YamlNode* config = At(template_node, {"metadata", "annotations"});
    config = config == nullptr ? nullptr : Get(*config, "meshtls.io/sidecar-config");
    if (init == nullptr || sidecar == nullptr || config == nullptr) {
      return absl::InternalError("the template lacks the init step, the sidecar or its config");
    }
    // The volumes, as the kubelet fills them.
    const std::string spiffe = absl::StrCat("spiffe://", kTd, "/ns/default/sa/", name);
    for (const char* volume : {"config", "bootstrap", "token"}) {
      std::filesystem::create_directories(p->dir.File(volume));
    }
    p->dir.Write("config/sidecar.yaml", config->scalar);
    MESHTLS_ASSIGN_OR_RETURN(std::string ca, base::ReadFileToString(certmgr_->ca_pem_path()));
    p->dir.Write("bootstrap/ca.pem", ca);
    p->dir.Write("token/token", certmgr_->Token(spiffe), 0600);
    int sidecar_uid = 0;
    if (!absl::SimpleAtoi(At(*sidecar, {"securityContext", "runAsUser"})->scalar, &sidecar_uid)) {
      return absl::InternalError("the sidecar has no runAsUser");
    }
    MESHTLS_RETURN_IF_ERROR(testing::GiveToUser(p->dir.path(), sidecar_uid));

    // The init container, as root (its runAsUser is 0), to completion.
    EXPECT_EQ(At(*init, {"securityContext", "runAsUser"})->scalar, "0");
    std::vector<std::string> init_command = {testing::BinaryPath("meshtls-sidecar")};
    for (const std::string& arg : Strings(Get(*init, "args"))) {
      init_command.push_back(arg);
    }
    absl::StatusOr<std::string> installed = testing::RunCommand(
        image_.empty()
            ? KubeletArgv(*p, std::nullopt, init_command)
            : ImageArgv(*p, 0, /*net_admin=*/true, {init_command.begin() + 1, init_command.end()}),
        absl::Seconds(60));
    if (!installed.ok()) {
      return absl::Status(installed.status().code(),
                          absl::StrCat("pod ", name, ": the init container failed: ",
                                       installed.status().message()));
    }
    // The sidecar, with the downward API's variables filled in.
    std::vector<std::string> command = {testing::BinaryPath("meshtls-sidecar")};
    for (std::string arg : Strings(Get(*sidecar, "args"))) {
      command.push_back(absl::StrReplaceAll(
          arg, {{"$(POD_NAMESPACE)", "default"}, {"$(POD_SERVICE_ACCOUNT)", name}}));
    }
    MESHTLS_ASSIGN_OR_RETURN(
        p->sidecar,
        testing::Subprocess::Start(image_.empty() ? KubeletArgv(*p, sidecar_uid, command)
                                                  : ImageArgv(*p, sidecar_uid, /*net_admin=*/false,
                                                              {command.begin() + 1, command.end()}),
                                   p->dir.File("sidecar.log")));
    if (!testing::WaitFor([&] { return AdminStatus(*p, "/readyz") == 200; },
                          absl::Seconds(image_.empty() ? 20 : 60))) {
      return absl::UnavailableError(
          absl::StrCat("pod ", name, ": the sidecar is not ready:\n", p->sidecar->Log()));
    }
    return p;
  }

  // AdminStatus asks the pod's sidecar admin port, from inside the pod (as the kubelet's
  // probes reach it): the HTTP status, 0 if no answer.
  int AdminStatus(const InjectedPod& p, const std::string& path) {
    int status = 0;
    (void)testing::InNetns(p.pod->name(), [&] {
      absl::StatusOr<testing::HttpResult> r = testing::HttpGet(15000, path, absl::Seconds(3));
      status = r.ok() ? r->status : 0;
    });
    return status;
  }

  double Metric(const InjectedPod& p, const std::string& series) {
    double value = -1;
    (void)testing::InNetns(p.pod->name(), [&] { value = testing::ScrapeMetric(15000, series); });
    return value;
  }

  void AddApp(InjectedPod& p) {
    base::UniqueFd listen;
    MESHTLS_ASSERT_OK_AND_MOVE(listen, p.pod->Listen("::", kAppPort));
    p.app = std::make_unique<EchoServer>(std::move(listen));
  }

  // Members in this order: pods stop before certmgr, and all before the Network.
  std::unique_ptr<Network> network_;
  testing::TempDir dir_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::string injection_config_;
  // MESHTLS_TEST_IMAGE (an image podman has, from scripts/image.sh): the init step and the
  // sidecar run from it instead of the build's binary.
  const std::string image_ = [] {
    const char* image = std::getenv("MESHTLS_TEST_IMAGE");
    return std::string(image == nullptr ? "" : image);
  }();
};

TEST_F(InjectionTest, InjectedPodsTalkTransparentlyAndTheMovedProbeIsAnsweredThroughTheSidecar) {
  YamlNode server_template, client_template;
  MESHTLS_ASSERT_OK_AND_MOVE(
      server_template,
      Inject(Deployment("server", absl::StrCat("meshtls.io/inbound-allow: \"spiffe://", kTd,
                                               "/ns/default/sa/client\""))));
  MESHTLS_ASSERT_OK_AND_MOVE(client_template, Inject(Deployment("client", "")));
  // The kubelet's probe now asks the sidecar.
  const YamlNode* probe =
      At(server_template, {"spec", "containers", "0", "readinessProbe", "httpGet"});
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(Get(*probe, "port")->scalar, "15000");
  const std::string probe_path = Get(*probe, "path")->scalar;
  EXPECT_EQ(probe_path, "/app-health/app/readyz");

  std::unique_ptr<InjectedPod> server, client, intruder;
  MESHTLS_ASSERT_OK_AND_MOVE(server, Start("server", server_template));
  // No app yet: the probe fails through the sidecar, as the kubelet would see it.
  EXPECT_EQ(AdminStatus(*server, probe_path), 503);
  ASSERT_NO_FATAL_FAILURE(AddApp(*server));
  EXPECT_TRUE(
      testing::WaitFor([&] { return AdminStatus(*server, probe_path) == 200; }, absl::Seconds(10)));
  MESHTLS_ASSERT_OK_AND_MOVE(client, Start("client", client_template));

  // The client app dials the server pod's address, unchanged; mutual TLS in between.
  ASSERT_THAT(EchoFrom(*client->pod, server->pod->ipv4(), kAppPort, "hello from an injected pod"),
              IsOk())
      << "client sidecar:\n"
      << client->sidecar->Log() << "\nserver sidecar:\n"
      << server->sidecar->Log();
  ASSERT_THAT(EchoFrom(*client->pod, server->pod->ipv6(), kAppPort, "and over IPv6"), IsOk());
  EXPECT_TRUE(testing::WaitFor(
      [&] { return Metric(*client, Handshakes("outbound", "success")) >= 2; }, absl::Seconds(5)));
  EXPECT_GE(Metric(*server, Handshakes("inbound", "success")), 2);
  EXPECT_EQ(
      Metric(*client,
             R"(meshtls_capture_decisions_total{direction="outbound",rule="mesh",action="mesh"})"),
      2);
  EXPECT_EQ(
      Metric(*server, absl::StrCat(R"(meshtls_capture_decisions_total{direction="inbound",rule=")",
                                   kAppPort, R"(",action="mesh"})")),
      2);

  // A meshed pod the server's annotation does not allow is refused; the server app gets nothing.
  MESHTLS_ASSERT_OK_AND_MOVE(intruder, Start("intruder", client_template));
  const uint64_t before = server->app->bytes_received();
  EXPECT_THAT(testing::RefusedFrom(*intruder->pod, server->pod->ipv4(), kAppPort), IsOk());
  EXPECT_TRUE(testing::WaitFor(
      [&] { return Metric(*server, Handshakes("inbound", "identity_denied")) >= 1; },
      absl::Seconds(5)));
  EXPECT_EQ(server->app->bytes_received(), before);
}

}  // namespace
}  // namespace meshtls

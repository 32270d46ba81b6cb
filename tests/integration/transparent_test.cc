// Transparent mode end to end, in pods of the test's own (tests/testing/netns.h): each pod runs
// `meshtls-sidecar init-network` as root, then its sidecar as uid 1337 with certificates from a
// certmgr on the node, then the app. Apps dial each other's pod addresses unchanged; what
// crosses a pod's wire is checked with a packet capture.

#include <gtest/gtest.h>
#include <sys/socket.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/traffic_load.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::EchoFrom;
using testing::EchoServer;
using testing::Handshakes;
using testing::IsOk;
using testing::Network;
using testing::PacketCapture;
using testing::Pod;
using testing::RefusedFrom;
using testing::SidecarProcess;
using testing::Subnet;

constexpr char kTd[] = "example.org";
constexpr uint32_t kProxyUid = 1337;
constexpr uint16_t kStrictPort = 8080;             // the app's port under inbound.mode strict
constexpr uint16_t kPermissivePort = 8081;         // ports: [{port: 8081, mode: permissive}]
constexpr uint16_t kOutsidePort = 9090;            // the service outside the mesh
constexpr uint16_t kOthersOnlyPort = 8082;         // allows default/others alone
constexpr uint16_t kExplicitOutboundPort = 15101;  // every sidecar's explicit outbound listener

std::string Spiffe(const std::string& service_account) {
  return absl::StrCat("spiffe://", kTd, "/ns/default/sa/", service_account);
}

// Decisions is the series of meshtls_capture_decisions_total for one rule (or port) and action.
std::string Decisions(const std::string& direction, const std::string& rule,
                      const std::string& action) {
  return absl::StrCat(R"(meshtls_capture_decisions_total{direction=")", direction, R"(",rule=")",
                      rule, R"(",action=")", action, R"("})");
}

std::string PermissiveDecisions() {
  return Decisions("inbound", absl::StrCat(kPermissivePort), "plaintext");
}

// SentThenClosed connects from `pod` to ip:port, sends `message` and expects the connection to
// be refused or closed within 10 s, without the message echoed back; with `answer_allowed`,
// other bytes may come back before the close (a TLS alert to a plain client).
absl::Status SentThenClosed(const Pod& pod, const std::string& ip, uint16_t port,
                            const std::string& message, bool answer_allowed) {
  absl::StatusOr<base::UniqueFd> conn = pod.Connect(ip, port);
  if (!conn.ok()) {
    return absl::IsUnavailable(conn.status()) ? absl::OkStatus() : conn.status();
  }
  if (!testing::SendAll(conn->get(), message).ok()) {
    return absl::OkStatus();  // reset before the send: refused
  }
  absl::StatusOr<std::string> answer = testing::RecvUntilEof(conn->get(), absl::Seconds(10));
  if (absl::IsDeadlineExceeded(answer.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("to ", ip, " port ", port, ": still open after 10s"));
  }
  if (answer.ok() &&
      (absl::StrContains(*answer, message) || (!answer_allowed && !answer->empty()))) {
    return absl::FailedPreconditionError(
        absl::StrCat("to ", ip, " port ", port, ": ", answer->size(), " bytes came back"));
  }
  return absl::OkStatus();  // EOF or reset
}

// HalfCloseEchoes sends `message` from `pod` to an echo app at ip:port, then half-closes: the
// echo and then EOF must come back (a FIN crossed the relay both ways, after every byte).
absl::Status HalfCloseEchoes(const Pod& pod, const std::string& ip, uint16_t port,
                             const std::string& message) {
  MESHTLS_ASSIGN_OR_RETURN(base::UniqueFd conn, pod.Connect(ip, port));
  MESHTLS_RETURN_IF_ERROR(testing::SendAll(conn.get(), message));
  if (::shutdown(conn.get(), SHUT_WR) != 0) {
    return absl::InternalError("shutdown(SHUT_WR) failed");
  }
  MESHTLS_ASSIGN_OR_RETURN(std::string answer,
                           testing::RecvUntilEof(conn.get(), absl::Seconds(10)));
  if (answer != message) {
    return absl::FailedPreconditionError(
        absl::StrCat("to ", ip, " port ", port, ": got \"", answer, "\" before EOF"));
  }
  return absl::OkStatus();
}

class TransparentTest : public ::testing::Test {
 protected:
  // MeshPod is a pod with (or without) a sidecar, and its apps.
  struct MeshPod {
    Pod* pod = nullptr;
    testing::TempDir dir;  // the sidecar's config and identity files, owned by kProxyUid
    std::unique_ptr<SidecarProcess> sidecar;
    std::vector<std::unique_ptr<EchoServer>> apps;
  };

  void SetUp() override {
    MESHTLS_ASSERT_OK_AND_MOVE(network_, Network::Create());
    testing::CertmgrOptions options;
    options.netns = network_->node();
    options.listen_ip = network_->node_ipv4();
    options.extra_yaml = certmgr_extra_yaml_;
    options.ca_extra = certmgr_ca_extra_;
    MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd, options));
    // The service outside the mesh: a pod on the other subnet, no sidecar.
    MESHTLS_ASSERT_OK_AND_MOVE(outside_, StartPod("outside", "", Subnet::kOutside));
    ASSERT_NO_FATAL_FAILURE(AddApp(*outside_, kOutsidePort));
  }

  // SidecarYaml is every pod's sidecar config, as transparent mode's users write it.
  std::string SidecarYaml(const std::string& identity_yaml) const {
    return absl::StrCat("trust_domain: ", kTd, "\n", identity_yaml, sidecar_extra_yaml_,
                        "admin: {listen: 0.0.0.0:15000}\n",
                        // An explicit listener beside transparent mode: never reachable from
                        // outside the pod through the inbound capture.
                        "outbound:\n  - {name: explicit, listen: 127.0.0.1:", kExplicitOutboundPort,
                        ", connect: \"127.0.0.1:1\", expect: [", Spiffe("server"),
                        "]}\n"
                        "transparent:\n"
                        "  proxy_uid: ",
                        kProxyUid,
                        "\n  outbound:\n"
                        "    rules:\n"
                        "      - {name: pods, networks: [",
                        network_->Ipv4Cidr(Subnet::kMesh), ", ", network_->Ipv6Cidr(Subnet::kMesh),
                        "], action: mesh,\n"
                        "         expect: [",
                        Spiffe("server"), "]", pooled_ ? ", transport: pooled" : "",
                        "}\n"
                        "      - {name: outside, networks: [",
                        outside_->pod->ipv4(),
                        "/32], action: passthrough}\n"
                        "      - {name: blocked, networks: [",
                        Blocked(),
                        "/32], action: deny}\n"
                        "  inbound:\n"
                        "    mode: strict\n"
                        "    allow: [spiffe://",
                        kTd,
                        "/ns/default/*]\n"
                        "    ports: [{port: ",
                        kPermissivePort, ", mode: permissive}, {port: ", kOthersOnlyPort,
                        ", allow: [", Spiffe("others"), "]}]\n");
  }

  // Blocked is the destination the deny rule names (nothing is there).
  std::string Blocked() const { return network_->UnassignedIpv4(Subnet::kOutside); }

  // StartPod makes a pod; with a service account it also installs the capture rules
  // (init-network, as root in the pod) and then starts the sidecar as kProxyUid, ready.
  absl::StatusOr<std::unique_ptr<MeshPod>> StartPod(const std::string& name,
                                                    const std::string& service_account,
                                                    Subnet subnet = Subnet::kMesh) {
    auto mesh_pod = std::make_unique<MeshPod>();
    MESHTLS_ASSIGN_OR_RETURN(mesh_pod->pod, network_->AddPod(name, subnet));
    if (service_account.empty()) {
      return mesh_pod;
    }
    const Pod& pod = *mesh_pod->pod;
    MESHTLS_ASSIGN_OR_RETURN(
        std::string identity,
        certmgr_->PodIdentityYaml(mesh_pod->dir, Spiffe(service_account), kProxyUid));
    const std::string yaml = SidecarYaml(identity);
    // The same file SidecarProcess::Start writes below.
    const std::string config = mesh_pod->dir.Write("sidecar.yaml", yaml);
    // The config first, on its own: a mistake in it is not init-network's.
    absl::StatusOr<std::string> checked = testing::RunCommand(
        {testing::BinaryPath("meshtls-sidecar"), "--check", "--config", config});
    if (!checked.ok()) {
      return absl::Status(checked.status().code(), absl::StrCat("the config of pod ", name, ": ",
                                                                checked.status().message()));
    }
    std::vector<std::string> init = pod.Launcher();
    init.insert(init.end(),
                {testing::BinaryPath("meshtls-sidecar"), "init-network", "--config", config});
    absl::StatusOr<std::string> installed = testing::RunCommand(init);
    if (!installed.ok()) {
      return absl::Status(
          installed.status().code(),
          absl::StrCat("init-network in pod ", name, ": ", installed.status().message()));
    }
    // Outbound capture is on before the sidecar starts: its certificate comes through it
    // uncaptured (uid kProxyUid) or not at all.
    std::vector<std::string> save = pod.Launcher();
    save.insert(save.end(), {"iptables-save", "-t", "nat"});
    MESHTLS_ASSIGN_OR_RETURN(std::string rules, testing::RunCommand(save));
    if (!absl::StrContains(rules, "--to-ports 15001")) {
      return absl::FailedPreconditionError(absl::StrCat(
          "pod ", name, ": no REDIRECT to 15001 after init-network; nat table:\n", rules));
    }
    MESHTLS_ASSIGN_OR_RETURN(
        mesh_pod->sidecar,
        SidecarProcess::Start(mesh_pod->dir, "sidecar", yaml,
                              {"--namespace", "default", "--service-account", service_account},
                              pod.Launcher(kProxyUid), pod.name()));
    if (!mesh_pod->sidecar->WaitReady()) {
      return absl::UnavailableError(absl::StrCat("the sidecar of pod ", name,
                                                 " is not ready; its log:\n",
                                                 mesh_pod->sidecar->process().Log()));
    }
    return mesh_pod;
  }

  // AddApp starts an echo app in the pod on `port`, on every address (IPv4 and IPv6).
  void AddApp(MeshPod& mesh_pod, uint16_t port) {
    base::UniqueFd listen;
    MESHTLS_ASSERT_OK_AND_MOVE(listen, mesh_pod.pod->Listen("::", port));
    mesh_pod.apps.push_back(std::make_unique<EchoServer>(std::move(listen)));
  }

  // StartClientAndServer starts the two meshed pods of most scenarios; the server's sidecar
  // runs as `server_account` and its app listens on both inbound ports.
  void StartClientAndServer(const std::string& server_account = "server") {
    MESHTLS_ASSERT_OK_AND_MOVE(server_, StartPod("server", server_account));
    ASSERT_NO_FATAL_FAILURE(AddApp(*server_, kStrictPort));
    ASSERT_NO_FATAL_FAILURE(AddApp(*server_, kPermissivePort));
    MESHTLS_ASSERT_OK_AND_MOVE(client_, StartPod("client", "client"));
  }

  // ExpectOnlyTlsOnTheWire runs the client app's request to the server app at `server_ip`
  // while capturing the server's wire: the answer arrives, TLS crossed, the marker did not, and
  // both sidecars counted the handshake.
  void ExpectOnlyTlsOnTheWire(const std::string& server_ip) {
    std::unique_ptr<PacketCapture> capture;
    MESHTLS_ASSERT_OK_AND_MOVE(capture, PacketCapture::Start(*server_->pod));
    const std::string marker = absl::StrCat("app-plaintext-marker-to-", server_ip);
    ASSERT_THAT(EchoFrom(*client_->pod, server_ip, kStrictPort, marker), IsOk())
        << "client sidecar:\n"
        << client_->sidecar->process().Log() << "\nserver sidecar:\n"
        << server_->sidecar->process().Log();
    ASSERT_THAT(capture->Stop(), IsOk());
    EXPECT_FALSE(capture->SawPayload(marker)) << "plain text crossed the wire: " << capture->path();
    EXPECT_GT(capture->TcpPayloadBytes(kStrictPort), 2 * marker.size())
        << "no TLS on the wire to port " << kStrictPort;
    EXPECT_EQ(server_->apps[0]->bytes_received(), marker.size());
    EXPECT_TRUE(client_->sidecar->WaitForMetric(Handshakes("outbound", "success"), 1));
    EXPECT_TRUE(server_->sidecar->WaitForMetric(Handshakes("inbound", "success"), 1));
    EXPECT_EQ(client_->sidecar->Metric(Decisions("outbound", "pods", "mesh")), 1);
    EXPECT_EQ(server_->sidecar->Metric(Decisions("inbound", "default", "mesh")), 1);
  }

  // Set by a fixture's constructor, before SetUp: appended to certmgr's config, inside its
  // `ca:` mapping, and to every sidecar's config. A short handshake timeout, so that tests can
  // see it pass.
  std::string certmgr_extra_yaml_;
  std::string certmgr_ca_extra_;
  std::string sidecar_extra_yaml_ = "limits: {handshake_timeout: 3s}\n";
  bool pooled_ = false;  // the mesh rule's transport: pooled
  // Members in this order: apps and sidecars stop before certmgr, and all before the Network
  // removes the namespaces.
  std::unique_ptr<Network> network_;
  testing::TempDir dir_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::unique_ptr<MeshPod> outside_;
  std::unique_ptr<MeshPod> server_;
  std::unique_ptr<MeshPod> client_;
};

TEST_F(TransparentTest, AppsDialPodAddressesAndOnlyTlsCrossesTheWire) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  ExpectOnlyTlsOnTheWire(server_->pod->ipv4());
}

TEST_F(TransparentTest, Ipv6LikeIpv4) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  ExpectOnlyTlsOnTheWire(server_->pod->ipv6());
}

TEST_F(TransparentTest, PodWithoutSidecarIsRefusedOnStrictPortsAndServedOnPermissiveOnes) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  std::unique_ptr<MeshPod> plain;
  MESHTLS_ASSERT_OK_AND_MOVE(plain, StartPod("plain", ""));
  const Pod& server = *server_->pod;

  // Strict: the plain client speaks first and is closed (a TLS alert may come back first);
  // nothing reaches the app.
  EXPECT_THAT(SentThenClosed(*plain->pod, server.ipv4(), kStrictPort, "plain-to-strict",
                             /*answer_allowed=*/true),
              IsOk());
  EXPECT_EQ(server_->apps[0]->connections(), 0);
  EXPECT_EQ(server_->apps[0]->bytes_received(), 0u);
  EXPECT_TRUE(server_->sidecar->WaitForMetric(Decisions("inbound", "default", "deny"), 1));
  EXPECT_EQ(
      server_->sidecar->Metric(
          R"(meshtls_connections_refused_total{direction="inbound",reason="plaintext_refused"})"),
      1);

  // Permissive: served in plain text, and counted.
  ASSERT_THAT(EchoFrom(*plain->pod, server.ipv4(), kPermissivePort, "plain-to-permissive"), IsOk())
      << server_->sidecar->process().Log();
  EXPECT_EQ(server_->apps[1]->bytes_received(), std::string("plain-to-permissive").size());
  EXPECT_TRUE(server_->sidecar->WaitForMetric(PermissiveDecisions(), 1))
      << server_->sidecar->Metric(PermissiveDecisions());
  EXPECT_THAT(HalfCloseEchoes(*plain->pod, server.ipv4(), kPermissivePort, "half-close-plain"),
              IsOk());

  // The sidecar lives on past limits.handshake_timeout after that plain-text connection (a
  // timer left behind by it would fire on freed memory then; the sanitizer build sees that):
  // a client that never speaks is timed out, and a new plain-text request is still served.
  absl::StatusOr<base::UniqueFd> silent = plain->pod->Connect(server.ipv4(), kStrictPort);
  ASSERT_THAT(silent, IsOk());
  EXPECT_TRUE(server_->sidecar->WaitForMetric(Handshakes("inbound", "timeout"), 1));
  EXPECT_THAT(EchoFrom(*plain->pod, server.ipv4(), kPermissivePort, "after-the-timeout"), IsOk());

  // The server sidecar's explicit outbound listener is on loopback, where the inbound capture
  // forwards: a port of the sidecar's own is never captured, so nothing reaches it from outside,
  // not even a meshed client the port's policy would let in (the client pod's app, whose
  // sidecar makes mutual TLS to it). The capture rules leave the port alone (no capture_loop
  // refusal needed), and the connection finds nothing listening on the pod's address.
  EXPECT_THAT(RefusedFrom(*client_->pod, server.ipv4(), kExplicitOutboundPort), IsOk());
  EXPECT_TRUE(client_->sidecar->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="upstream_unavailable"})",
      1));
  EXPECT_EQ(server_->sidecar->Metric(
                R"(meshtls_connections_refused_total{direction="inbound",reason="capture_loop"})"),
            0);
  EXPECT_EQ(server_->sidecar->Metric(R"(meshtls_connections_total{direction="outbound"})"), 0);
}

TEST_F(TransparentTest, ATlsRecordHeaderSentInPiecesIsStillTls) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  std::unique_ptr<MeshPod> plain;
  MESHTLS_ASSERT_OK_AND_MOVE(plain, StartPod("plain", ""));
  const Pod& server = *server_->pod;
  SidecarProcess& s = *server_->sidecar;

  // One byte of a TLS record header, then the rest: taken for TLS (a broken handshake), not for
  // plain text on a strict port.
  absl::StatusOr<base::UniqueFd> split = plain->pod->Connect(server.ipv4(), kStrictPort);
  ASSERT_THAT(split, IsOk());
  ASSERT_THAT(testing::SendAll(split->get(), std::string("\x16", 1)), IsOk());
  ASSERT_THAT(testing::SendAll(split->get(), std::string("\x03\x01\x00\x05hello", 9)), IsOk());
  EXPECT_TRUE(s.WaitForMetric(Decisions("inbound", "default", "mesh"), 1));
  EXPECT_EQ(s.Metric(Decisions("inbound", "default", "deny")), 0);

  // One byte, then the client closes: noticed at once (not at the handshake timeout).
  absl::StatusOr<base::UniqueFd> gone = plain->pod->Connect(server.ipv4(), kStrictPort);
  ASSERT_THAT(gone, IsOk());
  ASSERT_THAT(testing::SendAll(gone->get(), std::string("\x16", 1)), IsOk());
  ASSERT_EQ(::shutdown(gone->get(), SHUT_WR), 0);
  EXPECT_TRUE(testing::WaitFor([&] { return s.Metric(Handshakes("inbound", "peer_closed")) >= 1; },
                               absl::Seconds(2)))
      << s.process().Log();
  EXPECT_EQ(s.Metric(Handshakes("inbound", "timeout")), 0);
  EXPECT_EQ(server_->apps[0]->connections(), 0);
}

TEST_F(TransparentTest, OutsideTheMeshPassesThroughInPlainTextAndDeniedIsRefused) {
  MESHTLS_ASSERT_OK_AND_MOVE(client_, StartPod("client", "client"));
  // The sidecar got its certificate from certmgr with outbound capture on (StartPod checked
  // the rules before starting it): its own connection was not captured.
  EXPECT_TRUE(
      client_->sidecar->WaitForMetric(R"(meshtls_cert_renewals_total{result="success"})", 1));

  std::unique_ptr<PacketCapture> capture;
  MESHTLS_ASSERT_OK_AND_MOVE(capture, PacketCapture::Start(*outside_->pod));
  const std::string marker = "passthrough-plaintext-marker";
  ASSERT_THAT(EchoFrom(*client_->pod, outside_->pod->ipv4(), kOutsidePort, marker), IsOk())
      << client_->sidecar->process().Log();
  ASSERT_THAT(capture->Stop(), IsOk());
  EXPECT_TRUE(capture->SawPayload(marker)) << "passthrough must be plain TCP: " << capture->path();
  EXPECT_EQ(outside_->apps[0]->bytes_received(), marker.size());

  EXPECT_EQ(client_->sidecar->Metric(Decisions("outbound", "outside", "passthrough")), 1);
  EXPECT_THAT(
      HalfCloseEchoes(*client_->pod, outside_->pod->ipv4(), kOutsidePort, "half-close-passthrough"),
      IsOk());

  // A connection made to the outbound capture port itself (loopback is not captured) is no
  // redirected one: refused, never relayed to itself.
  EXPECT_THAT(RefusedFrom(*client_->pod, "127.0.0.1", 15001), IsOk());
  EXPECT_TRUE(client_->sidecar->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="capture_loop"})", 1));

  EXPECT_THAT(RefusedFrom(*client_->pod, Blocked(), kOutsidePort), IsOk())
      << client_->sidecar->process().Log();
  EXPECT_TRUE(client_->sidecar->WaitForMetric(Decisions("outbound", "blocked", "deny"), 1));
  // No rule matches another address of the outside subnet: denied, counted under "(none)".
  EXPECT_THAT(
      RefusedFrom(*client_->pod, network_->UnassignedIpv4(Subnet::kOutside, 251), kOutsidePort),
      IsOk());
  EXPECT_TRUE(client_->sidecar->WaitForMetric(Decisions("outbound", "(none)", "deny"), 1));
  EXPECT_EQ(
      client_->sidecar->Metric(
          R"(meshtls_connections_refused_total{direction="outbound",reason="denied_by_rule"})"),
      2);
}

TEST_F(TransparentTest, WrongServerIdentityIsRefusedAndTheServerAppGetsNothing) {
  // The server pod's sidecar is default/impostor; the client's mesh rule expects default/server.
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer("impostor"));
  // The client app speaks first, as most do; its own sidecar closes it without a byte.
  EXPECT_THAT(SentThenClosed(*client_->pod, server_->pod->ipv4(), kStrictPort, "must-not-arrive",
                             /*answer_allowed=*/false),
              IsOk());
  EXPECT_TRUE(client_->sidecar->WaitForMetric(Handshakes("outbound", "identity_denied"), 1))
      << client_->sidecar->process().Log();
  EXPECT_EQ(client_->sidecar->Metric(Handshakes("outbound", "success")), 0);
  EXPECT_EQ(server_->apps[0]->connections(), 0);
  EXPECT_EQ(server_->apps[0]->bytes_received(), 0u);
}

// The pooled transport between pods: the mesh rule carries app connections as HTTP/2 CONNECT
// streams over one mutual-TLS connection to the server pod's port 15008, which the server's
// inbound capture takes; each stream is authorized by the port it names.
class TransparentPooledTest : public TransparentTest {
 protected:
  TransparentPooledTest() {
    pooled_ = true;
    sidecar_extra_yaml_ += "workers: 1\n";  // one pool per sidecar: connections are countable
  }
};

TEST_F(TransparentPooledTest, StreamsOverOneConnectionAuthorizedPerPort) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  ASSERT_NO_FATAL_FAILURE(AddApp(*server_, kOthersOnlyPort));
  std::unique_ptr<PacketCapture> capture;
  MESHTLS_ASSERT_OK_AND_MOVE(capture, PacketCapture::Start(*server_->pod));
  const std::string marker = "pooled-plaintext-marker";
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(EchoFrom(*client_->pod, server_->pod->ipv4(), kStrictPort, marker), IsOk())
        << "client sidecar:\n"
        << client_->sidecar->process().Log() << "\nserver sidecar:\n"
        << server_->sidecar->process().Log();
  }
  EXPECT_THAT(HalfCloseEchoes(*client_->pod, server_->pod->ipv6(), kStrictPort, "over ipv6"),
              IsOk());
  // The client's identity is not in port 8082's allow-list: that stream alone is refused (403),
  // and the app behind it gets nothing.
  EXPECT_THAT(SentThenClosed(*client_->pod, server_->pod->ipv4(), kOthersOnlyPort,
                             "must-not-arrive", /*answer_allowed=*/false),
              IsOk());
  ASSERT_THAT(capture->Stop(), IsOk());
  EXPECT_FALSE(capture->SawPayload(marker)) << "plain text crossed the wire: " << capture->path();
  EXPECT_GT(capture->TcpPayloadBytes(15008), 5 * marker.size()) << "nothing went to port 15008";
  const std::string streams = R"(meshtls_pooled_streams_total{direction=")";
  SidecarProcess& c = *client_->sidecar;
  SidecarProcess& s = *server_->sidecar;
  EXPECT_EQ(c.Metric(streams + R"(outbound",result="success"})"), 6);
  EXPECT_EQ(c.Metric(streams + R"(outbound",result="refused"})"), 1);
  EXPECT_EQ(s.Metric(streams + R"(inbound",result="success"})"), 6);
  EXPECT_EQ(s.Metric(streams + R"(inbound",result="identity_denied"})"), 1);
  // One connection per address family, each one handshake.
  EXPECT_EQ(c.Metric(Handshakes("outbound", "success")), 2);
  EXPECT_EQ(s.Metric(Decisions("inbound", "pooled", "mesh")), 2);
  EXPECT_EQ(server_->apps[2]->connections(), 0);
}

// Short-lived certificates and a CA rotation by the operator's steps, under transparent traffic.
class TransparentRotationTest : public TransparentTest {
 protected:
  TransparentRotationTest() {
    // 10 s certificates, renewed at half their life: each sidecar renews about every 5 s. The
    // 5 s left cover certmgr's pause of about 2 s when a new root activates and a renewal slowed
    // by this load on two cores; a certificate that expires is refused, as it must be, and the
    // test would see that as a dropped connection.
    certmgr_extra_yaml_ = "issuance: {default_ttl: 10s, min_ttl: 2s, max_ttl: 10s, backdate: 0}\n";
    certmgr_ca_extra_ = ", rotation: {auto: false}";
    // Long-lived connections outlive the certificates they started with.
    sidecar_extra_yaml_ += "tls: {close_on_expiry: false}\n";
  }
};

TEST_F(TransparentRotationTest, RenewalsAndATrustBundleChangeUnderTrafficDropNothing) {
  ASSERT_NO_FATAL_FAILURE(StartClientAndServer());
  const Pod& client = *client_->pod;
  const std::string server_ip = server_->pod->ipv4();
  SidecarProcess& c = *client_->sidecar;
  SidecarProcess& s = *server_->sidecar;
  const std::string renewed = R"(meshtls_cert_renewals_total{result="success"})";

  // Three long-lived connections doing echo round trips, and new ones one after another, from
  // the client pod's app to the server pod's address, every byte checked.
  testing::TrafficLoad load([&client, server_ip] { return client.Connect(server_ip, kStrictPort); },
                            /*long_lived=*/3);
  const double c0 = c.Metric(renewed), s0 = s.Metric(renewed);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return load.failures() > 0 || (c.Metric(renewed) >= c0 + 2 && s.Metric(renewed) >= s0 + 2);
      },
      absl::Seconds(60)))
      << "client sidecar:\n"
      << c.process().Log() << "\nserver sidecar:\n"
      << s.process().Log();

  // The trust bundle changes: a second root, then it signs, then the first is retired.
  const std::string roots = "meshtls_trust_bundle_roots";
  ASSERT_EQ(certmgr_->Run({"ca", "rotate", "prepare"}), 0);
  EXPECT_TRUE(testing::WaitFor([&] { return c.Metric(roots) == 2 && s.Metric(roots) == 2; },
                               absl::Seconds(15)));
  const double c1 = c.Metric(renewed), s1 = s.Metric(renewed);
  ASSERT_EQ(certmgr_->Run({"ca", "rotate", "activate"}), 0);
  EXPECT_TRUE(
      testing::WaitFor([&] { return c.Metric(renewed) >= c1 + 2 && s.Metric(renewed) >= s1 + 2; },
                       absl::Seconds(30)));
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return certmgr_->Run({"ca", "rotate", "retire"}) == 0;
      },
      absl::Seconds(20)));
  EXPECT_TRUE(testing::WaitFor([&] { return c.Metric(roots) == 1 && s.Metric(roots) == 1; },
                               absl::Seconds(15)));
  const int before = load.new_connections();
  EXPECT_TRUE(
      testing::WaitFor([&] { return load.new_connections() > before + 20; }, absl::Seconds(20)));
  load.Stop();
  std::printf("transparent rotation: %d new connections, %llu bytes checked, %d failures\n",
              load.new_connections(), static_cast<unsigned long long>(load.bytes_checked()),
              load.failures());
  EXPECT_EQ(load.failures(), 0) << load.first_failure() << "\nclient sidecar:\n"
                                << c.process().Log() << "\nserver sidecar:\n"
                                << s.process().Log();
  EXPECT_GT(load.new_connections(), 50);
  // Every connection, long-lived or new, was one mesh decision and one handshake on each side.
  const double connections = load.new_connections() + 3;
  EXPECT_EQ(c.Metric(Decisions("outbound", "pods", "mesh")), connections);
  EXPECT_EQ(s.Metric(Handshakes("inbound", "success")), connections);
  EXPECT_EQ(c.Metric(Handshakes("outbound", "success")), connections);
}

}  // namespace
}  // namespace meshtls

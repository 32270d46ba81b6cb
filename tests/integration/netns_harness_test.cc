// The network-namespace harness of the transparent-mode tests (tests/testing/netns.h), proved
// on its own: pods reach each other over IPv4 and IPv6, a capture on a pod's veth sees plain
// text (the check transparent mode's "nothing plain crossed" relies on), programs run as the
// uid asked for inside the pod, a sidecar in a pod gets its certificate from a certmgr on the
// node, and every namespace is gone afterwards.

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::EchoServer;
using testing::Handshakes;
using testing::IsOk;
using testing::Network;
using testing::PacketCapture;
using testing::Pod;
using testing::SidecarProcess;
using testing::StatusIs;
using testing::Subnet;

constexpr uint32_t kProxyUid = 1337;

TEST(NetnsHarnessTest, PodsReachEachOtherOverIpv4AndIpv6AndTheCaptureSeesPlainText) {
  std::unique_ptr<Network> network;
  MESHTLS_ASSERT_OK_AND_MOVE(network, Network::Create());
  Pod* client = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(client, network->AddPod("client"));
  Pod* server = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(server, network->AddPod("server"));
  Pod* outside = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(outside, network->AddPod("outside", Subnet::kOutside));
  EXPECT_NE(client->ipv4(), server->ipv4());
  EXPECT_TRUE(absl::StartsWith(outside->ipv4(), "10.124.")) << outside->ipv4();
  base::UniqueFd listen;
  MESHTLS_ASSERT_OK_AND_MOVE(listen, server->Listen("::", 8080));
  EchoServer app(std::move(listen));
  // Fixed ports are per pod: the same port in another pod is free.
  base::UniqueFd outside_listen;
  MESHTLS_ASSERT_OK_AND_MOVE(outside_listen, outside->Listen("::", 8080));
  EchoServer outside_app(std::move(outside_listen));

  std::unique_ptr<PacketCapture> capture;
  MESHTLS_ASSERT_OK_AND_MOVE(capture, PacketCapture::Start(*server));
  const std::string v4_marker = "plain-marker-over-ipv4";
  const std::string v6_marker = "plain-marker-over-ipv6";
  ASSERT_THAT(testing::EchoFrom(*client, server->ipv4(), 8080, v4_marker), IsOk());
  ASSERT_THAT(testing::EchoFrom(*client, server->ipv6(), 8080, v6_marker), IsOk());
  // Across the subnets, on the same bridge.
  ASSERT_THAT(testing::EchoFrom(*client, outside->ipv4(), 8080, "to-the-outside-subnet"), IsOk());
  ASSERT_THAT(testing::EchoFrom(*outside, server->ipv6(), 8080, "from-the-outside-subnet"), IsOk());
  ASSERT_THAT(capture->Stop(), IsOk());

  EXPECT_TRUE(capture->SawPayload(v4_marker));
  EXPECT_TRUE(capture->SawPayload(v6_marker));
  EXPECT_TRUE(capture->SawPayload("from-the-outside-subnet"));
  // The client-to-outside connection never crossed the server's veth.
  EXPECT_FALSE(capture->SawPayload("to-the-outside-subnet"));
  EXPECT_FALSE(capture->SawPayload("a-marker-nobody-sent"));
  // Both ways, three connections through the server's veth; nothing else on port 8080.
  const uint64_t expected =
      2 * (v4_marker.size() + v6_marker.size() + std::string("from-the-outside-subnet").size());
  EXPECT_EQ(capture->TcpPayloadBytes(8080), expected);
  EXPECT_EQ(capture->TcpPayloadBytes(), expected);
  EXPECT_EQ(app.connections(), 3);
}

TEST(NetnsHarnessTest, ProgramsRunAsTheGivenUserInsideThePod) {
  std::unique_ptr<Network> network;
  MESHTLS_ASSERT_OK_AND_MOVE(network, Network::Create());
  Pod* pod = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(pod, network->AddPod("app"));
  struct stat netns_file {};
  ASSERT_EQ(::stat(("/run/netns/" + pod->name()).c_str(), &netns_file), 0);
  const std::string pod_netns = absl::StrCat("net:[", netns_file.st_ino, "]");

  std::vector<std::string> argv = pod->Launcher(kProxyUid);
  argv.insert(argv.end(), {"sh", "-c", "id -u; id -g; id -G; readlink /proc/self/ns/net"});
  absl::StatusOr<std::string> ids = testing::RunCommand(argv);
  ASSERT_THAT(ids, IsOk());
  EXPECT_EQ(*ids, absl::StrCat("1337\n1337\n1337\n", pod_netns, "\n"));

  // Without a uid: root, in the pod too.
  argv = pod->Launcher();
  argv.insert(argv.end(), {"sh", "-c", "id -u; readlink /proc/self/ns/net"});
  ids = testing::RunCommand(argv);
  ASSERT_THAT(ids, IsOk());
  EXPECT_EQ(*ids, absl::StrCat("0\n", pod_netns, "\n"));

  // A long-running program's Subprocess pid is the program itself (so SIGTERM reaches it):
  // its own credentials and namespace.
  argv = pod->Launcher(kProxyUid);
  argv.insert(argv.end(), {testing::FindProgram("sleep"), "60"});
  testing::TempDir dir;
  std::unique_ptr<testing::Subprocess> sleeper;
  MESHTLS_ASSERT_OK_AND_MOVE(sleeper, testing::Subprocess::Start(argv, dir.File("sleep.log")));
  std::string status;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        status =
            base::ReadFileToString(absl::StrCat("/proc/", sleeper->pid(), "/status")).value_or("");
        return absl::StrContains(status, "Name:\tsleep");
      },
      absl::Seconds(10)))
      << status;
  EXPECT_TRUE(absl::StrContains(status, "\nUid:\t1337\t1337\t1337\t1337\n")) << status;
  EXPECT_TRUE(absl::StrContains(status, "\nGid:\t1337\t1337\t1337\t1337\n")) << status;
  const size_t groups = status.find("\nGroups:");
  ASSERT_NE(groups, std::string::npos) << status;
  EXPECT_EQ(absl::StripAsciiWhitespace(
                status.substr(groups + 8, status.find('\n', groups + 1) - groups - 8)),
            "")
      << "supplementary groups left: " << status;
  std::error_code ec;
  EXPECT_EQ(
      std::filesystem::read_symlink(absl::StrCat("/proc/", sleeper->pid(), "/ns/net"), ec).string(),
      pod_netns);
  sleeper->Signal(SIGKILL);  // sleep does not exit 0 on SIGTERM as the sidecar does
  EXPECT_EQ(sleeper->WaitForExit(absl::Seconds(10)), 128 + SIGKILL);
}

// A sidecar in each of two pods, as uid 1337, with certificates from a certmgr on the node's
// bridge address, and explicit listeners (no capture): the harness as the transparent tests
// use it, today. The mesh hop carries only TLS on the wire.
TEST(NetnsHarnessTest, SidecarsInPodsGetCertificatesFromCertmgrOnTheNode) {
  std::unique_ptr<Network> network;
  MESHTLS_ASSERT_OK_AND_MOVE(network, Network::Create());
  Pod* client = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(client, network->AddPod("client"));
  Pod* server = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(server, network->AddPod("server"));
  testing::TempDir dir;
  testing::CertmgrOptions options;
  options.netns = network->node();
  options.listen_ip = network->node_ipv4();
  std::unique_ptr<CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, CertmgrProcess::Start(dir, "example.org", options));
  EXPECT_EQ(certmgr->address(), absl::StrCat(network->node_ipv4(), ":", certmgr->grpc_port()));

  base::UniqueFd listen;
  MESHTLS_ASSERT_OK_AND_MOVE(listen, server->Listen("127.0.0.1", 8080));
  EchoServer app(std::move(listen));
  const std::string client_id = "spiffe://example.org/ns/default/sa/client";
  const std::string server_id = "spiffe://example.org/ns/default/sa/server";
  testing::TempDir server_dir;
  testing::TempDir client_dir;
  std::string server_identity;
  MESHTLS_ASSERT_OK_AND_MOVE(server_identity,
                             certmgr->PodIdentityYaml(server_dir, server_id, kProxyUid));
  std::string client_identity;
  MESHTLS_ASSERT_OK_AND_MOVE(client_identity,
                             certmgr->PodIdentityYaml(client_dir, client_id, kProxyUid));
  auto start = [&](const testing::TempDir& pod_dir, const Pod& pod, const std::string& sa,
                   const std::string& yaml) {
    return SidecarProcess::Start(
        pod_dir, "sidecar",
        absl::StrCat("trust_domain: example.org\nadmin: {listen: 0.0.0.0:15000}\n", yaml),
        {"--namespace", "default", "--service-account", sa}, pod.Launcher(kProxyUid), pod.name());
  };
  std::unique_ptr<SidecarProcess> server_sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      server_sidecar, start(server_dir, *server, "server",
                            absl::StrCat(server_identity,
                                         "inbound:\n  - name: app\n    listen: 0.0.0.0:8443\n"
                                         "    forward: 127.0.0.1:8080\n    allow: [",
                                         client_id, "]\n")));
  std::unique_ptr<SidecarProcess> client_sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      client_sidecar,
      start(client_dir, *client, "client",
            absl::StrCat(client_identity,
                         "outbound:\n  - name: server\n    listen: 127.0.0.1:9000\n"
                         "    connect: ",
                         server->ipv4(), ":8443\n    expect: [", server_id, "]\n")));
  EXPECT_EQ(server_sidecar->admin_port(), 15000);
  ASSERT_TRUE(server_sidecar->WaitReady()) << server_sidecar->process().Log();
  ASSERT_TRUE(client_sidecar->WaitReady()) << client_sidecar->process().Log();
  const std::string status =
      *base::ReadFileToString(absl::StrCat("/proc/", server_sidecar->process().pid(), "/status"));
  EXPECT_TRUE(absl::StrContains(status, "\nUid:\t1337\t1337\t1337\t1337\n")) << status;

  std::unique_ptr<PacketCapture> capture;
  MESHTLS_ASSERT_OK_AND_MOVE(capture, PacketCapture::Start(*server));
  const std::string marker = "marker-that-must-cross-encrypted";
  ASSERT_THAT(testing::EchoFrom(*client, "127.0.0.1", 9000, marker), IsOk());
  ASSERT_THAT(capture->Stop(), IsOk());
  EXPECT_FALSE(capture->SawPayload(marker));
  EXPECT_GT(capture->TcpPayloadBytes(8443), 2 * marker.size());
  EXPECT_EQ(app.bytes_received(), marker.size());
  EXPECT_TRUE(client_sidecar->WaitForMetric(Handshakes("outbound", "success"), 1));
  EXPECT_TRUE(server_sidecar->WaitForMetric(Handshakes("inbound", "success"), 1));
}

// Names of what MakeNetworkThenFail made, for the test below (EXPECT_FATAL_FAILURE takes no
// local variables).
std::vector<std::string> made_before_failing;

void MakeNetworkThenFail() {
  std::unique_ptr<Network> network;
  MESHTLS_ASSERT_OK_AND_MOVE(network, Network::Create());
  Pod* pod = nullptr;
  MESHTLS_ASSERT_OK_AND_MOVE(pod, network->AddPod("doomed"));
  made_before_failing = {network->node(), pod->name()};
  FAIL() << "an assertion fails while the network exists";
}

TEST(NetnsHarnessTest, RemovesEveryNamespaceItMadeAlsoAfterAFailedAssertion) {
  std::vector<std::string> names;
  {
    std::unique_ptr<Network> network;
    MESHTLS_ASSERT_OK_AND_MOVE(network, Network::Create());
    Pod* a = nullptr;
    MESHTLS_ASSERT_OK_AND_MOVE(a, network->AddPod("a"));
    Pod* b = nullptr;
    MESHTLS_ASSERT_OK_AND_MOVE(b, network->AddPod("b"));
    EXPECT_THAT(network->AddPod("a"), StatusIs(absl::StatusCode::kAlreadyExists));
    EXPECT_THAT(network->AddPod("Bad_Name"), StatusIs(absl::StatusCode::kInvalidArgument));
    names = {network->node(), a->name(), b->name()};
    EXPECT_EQ(testing::OurNamespaces().size(), 3u);
    // Interface names fit IFNAMSIZ.
    EXPECT_LE(a->host_veth().size(), 15u);
    EXPECT_LE(network->bridge().size(), 15u);
  }
  EXPECT_TRUE(testing::OurNamespaces().empty());
  absl::StatusOr<std::string> listed = testing::RunCommand({"ip", "netns", "list"});
  ASSERT_THAT(listed, IsOk());
  for (const std::string& name : names) {
    EXPECT_FALSE(absl::StrContains(*listed, name)) << *listed;
  }

  EXPECT_FATAL_FAILURE(MakeNetworkThenFail(), "an assertion fails while the network exists");
  ASSERT_EQ(made_before_failing.size(), 2u);
  EXPECT_TRUE(testing::OurNamespaces().empty());
  listed = testing::RunCommand({"ip", "netns", "list"});
  ASSERT_THAT(listed, IsOk());
  for (const std::string& name : made_before_failing) {
    EXPECT_FALSE(absl::StrContains(*listed, name)) << *listed;
  }
}

// Without root, Create says what is missing (the test using it then fails, never skips). The
// thread drops its own credentials only (the raw syscall, not glibc's process-wide setresuid),
// and the `ip` it spawns inherits them.
TEST(NetnsHarnessTest, WithoutRootCreateSaysSo) {
  absl::StatusOr<std::unique_ptr<Network>> network = absl::UnknownError("not run");
  std::thread unprivileged([&] {
    if (::syscall(SYS_setresgid, kProxyUid, kProxyUid, kProxyUid) != 0 ||
        ::syscall(SYS_setresuid, kProxyUid, kProxyUid, kProxyUid) != 0) {
      network = absl::InternalError("cannot drop privileges");
      return;
    }
    network = Network::Create();
  });
  unprivileged.join();
  EXPECT_THAT(network, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(absl::StrContains(network.status().message(),
                                "transparent-mode tests need root (ip netns add failed: "))
      << network.status();
  EXPECT_TRUE(testing::OurNamespaces().empty());
}

TEST(NetnsHarnessTest, ParsePcapNamesWhatIsWrong) {
  EXPECT_THAT(testing::ParsePcap(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(testing::ParsePcap(std::string(24, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // A little-endian microsecond header, Ethernet, then a record that claims more than is left.
  std::string pcap("\xd4\xc3\xb2\xa1\x02\x00\x04\x00", 8);
  pcap += std::string(8, '\0');
  pcap += std::string("\xff\xff\x00\x00\x01\x00\x00\x00", 8);
  ASSERT_THAT(testing::ParsePcap(pcap), IsOk());
  EXPECT_TRUE(testing::ParsePcap(pcap)->empty());
  std::string record(16, '\0');
  record[8] = 100;  // captured length
  absl::StatusOr<std::vector<testing::TcpSegment>> cut = testing::ParsePcap(pcap + record);
  EXPECT_THAT(cut, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(absl::StrContains(cut.status().message(), "offset 24 claims 100 bytes, 0 left"))
      << cut.status();
  EXPECT_THAT(testing::ParsePcap(pcap + "short"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace meshtls

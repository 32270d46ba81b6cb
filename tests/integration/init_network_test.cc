// `meshtls-sidecar init-network`, the real binary in a pod (network namespace) of each test's own:
// the rules it installs (read back with iptables-save and ip6tables-save), that a re-install,
// --clean and --dry-run touch nothing but ours, its errors, and that the rules really send the
// app's connections to the capture port with the original destination readable there.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/fd.h"
#include "sidecar/netfilter/child_process.h"
#include "tests/testing/harness.h"
#include "tests/testing/netns.h"

namespace meshtls {
namespace {

using sidecar::ChildResult;

std::string Program(absl::string_view name) {
  const char* path = std::getenv("PATH");
  std::string found = sidecar::FindOnPath(name, path == nullptr ? "" : path);
  if (found.empty()) {
    found = sidecar::FindOnPath(name, "/usr/sbin:/sbin:/usr/bin:/bin");
  }
  return found;
}

ChildResult RunProgram(std::vector<std::string> argv) {
  absl::StatusOr<ChildResult> r = sidecar::RunChildProcess(argv, "", absl::Seconds(30));
  EXPECT_TRUE(r.ok()) << absl::StrJoin(argv, " ") << ": " << r.status();
  return r.ok() ? *r : ChildResult{-1, "", ""};
}

// Netns is one pod of a Network of the test's own (tests/testing/netns.h): named after the pid,
// removed at destruction (also when the test fails), and swept by the next test process if this
// one dies first.
class Netns {
 public:
  Netns() {
    absl::StatusOr<std::unique_ptr<testing::Network>> network = testing::Network::Create();
    if (!network.ok()) {
      ADD_FAILURE() << network.status();
      return;
    }
    network_ = *std::move(network);
    absl::StatusOr<testing::Pod*> pod = network_->AddPod("nf");
    if (!pod.ok()) {
      ADD_FAILURE() << pod.status();
      return;
    }
    pod_ = *pod;
  }
  bool created() const { return pod_ != nullptr; }
  const testing::Pod& pod() const { return *pod_; }

  // Exec runs argv inside the namespace (argv[0] is looked up on PATH by ip netns exec).
  ChildResult Exec(std::vector<std::string> argv) const {
    std::vector<std::string> launcher = pod_->Launcher();
    argv.insert(argv.begin(), launcher.begin(), launcher.end());
    return RunProgram(std::move(argv));
  }
  // NatRules is `<tool> -t nat` without its dated comment lines.
  std::string NatRules(const std::string& save_tool) const {
    ChildResult r = Exec({save_tool, "-t", "nat"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(r.out, '\n', absl::SkipEmpty())) {
      if (!absl::StartsWith(line, "#")) {
        lines.emplace_back(line);
      }
    }
    return absl::StrJoin(lines, "\n");
  }

 private:
  std::unique_ptr<testing::Network> network_;
  testing::Pod* pod_ = nullptr;  // owned by network_
};

constexpr char kConfig[] = R"(trust_domain: example.org
identity: {files: {cert: /not/yet/cert.pem, key: /not/yet/key.pem, trust_bundle: /not/yet/b.pem}}
admin: {listen: 0.0.0.0:15000}
transparent:
  proxy_uid: PROXY_UID
  outbound:
    port: 15001
    exclude_ports: [53]
    exclude_networks: [169.254.169.254/32, fd00:ec2::254]
    rules: [{name: all, action: passthrough}]
  inbound:
    port: 15006
    exclude_ports: [8081]
    allow: [spiffe://example.org/ns/shop/*]
)";

std::string Config(const testing::TempDir& dir, int proxy_uid = 1337) {
  std::string yaml = kConfig;
  yaml.replace(yaml.find("PROXY_UID"), 9, std::to_string(proxy_uid));
  return dir.Write(absl::StrCat("sidecar-", proxy_uid, ".yaml"), yaml);
}

std::vector<std::string> InitNetwork(const std::string& config,
                                     std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {testing::BinaryPath("meshtls-sidecar"), "init-network",
                                   "--config", config};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

void AddForeignRules(const Netns& ns) {
  for (const std::string tool : {"iptables", "ip6tables"}) {
    ASSERT_EQ(ns.Exec({tool, "-t", "nat", "-N", "FOREIGN"}).exit_code, 0);
    ASSERT_EQ(ns.Exec({tool, "-t", "nat", "-A", "FOREIGN", "-p", "udp", "-j", "RETURN"}).exit_code,
              0);
    ASSERT_EQ(ns.Exec({tool, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "FOREIGN"}).exit_code,
              0);
  }
}

TEST(InitNetworkTest, InstallsBothFamiliesAndTwiceIsTheSame) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  AddForeignRules(ns);
  ChildResult first = ns.Exec(InitNetwork(Config(dir)));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.out.find("installed 10 IPv4 rules"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("installed 10 IPv6 rules"), std::string::npos) << first.out;
  const std::string v4 = ns.NatRules("iptables-save");
  const std::string v6 = ns.NatRules("ip6tables-save");
  for (const char* rule :
       {"-A PREROUTING -p tcp -j MESHTLS_INBOUND", "-A OUTPUT -p tcp -j MESHTLS_OUTPUT",
        "-A MESHTLS_INBOUND -p tcp -m multiport --dports 15000,15001,15006,8081 -j RETURN",
        "-A MESHTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A MESHTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESHTLS_OUTPUT -p tcp -m tcp --dport 53 -j RETURN",
        "-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15001", "-A OUTPUT -p udp -j FOREIGN"}) {
    EXPECT_NE(v4.find(rule), std::string::npos) << rule << " in\n" << v4;
    EXPECT_NE(v6.find(rule), std::string::npos) << rule << " in\n" << v6;
  }
  // Each family with its own loopback and only its own networks.
  EXPECT_NE(v4.find("-A MESHTLS_OUTPUT -d 169.254.169.254/32 -j RETURN"), std::string::npos) << v4;
  EXPECT_EQ(v4.find("fd00:ec2::254"), std::string::npos) << v4;
  EXPECT_NE(v4.find("! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j MESHTLS_INBOUND"),
            std::string::npos)
      << v4;
  EXPECT_NE(v6.find("-A MESHTLS_OUTPUT -d fd00:ec2::254/128 -j RETURN"), std::string::npos) << v6;
  EXPECT_NE(v6.find("-A MESHTLS_OUTPUT -d ::1/128 -j RETURN"), std::string::npos) << v6;
  EXPECT_EQ(v6.find("169.254.169.254"), std::string::npos) << v6;

  ChildResult second = ns.Exec(InitNetwork(Config(dir)));
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(ns.NatRules("iptables-save"), v4);
  EXPECT_EQ(ns.NatRules("ip6tables-save"), v6);
}

TEST(InitNetworkTest, AConfigChangeReplacesOurRules) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  ASSERT_EQ(ns.Exec(InitNetwork(Config(dir))).exit_code, 0);
  const std::string outbound_only = dir.Write(
      "outbound-only.yaml",
      "trust_domain: example.org\nidentity: {files: {cert: a, key: b, trust_bundle: c}}\n"
      "transparent:\n  proxy_uid: 2000\n  outbound: {port: 15011, rules: [{name: a, action: "
      "deny}]}\n");
  ChildResult r = ns.Exec(InitNetwork(outbound_only));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("installed 4 IPv4 rules (chains MESHTLS_OUTPUT; replaced ours)"),
            std::string::npos)
      << r.out;
  const std::string v4 = ns.NatRules("iptables-save");
  EXPECT_EQ(v4.find("MESHTLS_INBOUND"), std::string::npos) << v4;
  EXPECT_EQ(v4.find("1337"), std::string::npos) << v4;
  EXPECT_NE(v4.find("-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15011"), std::string::npos)
      << v4;
}

TEST(InitNetworkTest, CleanRemovesOnlyOursAndTwiceIsFine) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  AddForeignRules(ns);
  const std::string v4_before = ns.NatRules("iptables-save");
  const std::string v6_before = ns.NatRules("ip6tables-save");
  ASSERT_EQ(ns.Exec(InitNetwork(Config(dir))).exit_code, 0);
  ASSERT_NE(ns.NatRules("iptables-save"), v4_before);
  ChildResult clean = ns.Exec(InitNetwork(Config(dir), {"--clean"}));
  ASSERT_EQ(clean.exit_code, 0) << clean.err;
  EXPECT_NE(clean.out.find("removed 10 IPv4 rules and 2 chains"), std::string::npos) << clean.out;
  EXPECT_EQ(ns.NatRules("iptables-save"), v4_before);
  EXPECT_EQ(ns.NatRules("ip6tables-save"), v6_before);
  EXPECT_NE(v4_before.find("-A OUTPUT -p udp -j FOREIGN"), std::string::npos) << v4_before;
  // Nothing of ours left: clean again succeeds and changes nothing.
  ChildResult again = ns.Exec(InitNetwork(Config(dir), {"--clean"}));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("no IPv4 capture rules installed"), std::string::npos) << again.out;
  EXPECT_EQ(ns.NatRules("iptables-save"), v4_before);
  EXPECT_EQ(ns.NatRules("ip6tables-save"), v6_before);
}

// --dry-run prints both families' first-install input, changes nothing, and needs neither
// privileges nor iptables.
TEST(InitNetworkTest, DryRunPrintsAndChangesNothing) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  const std::string config = Config(dir);
  const std::string v4_before = ns.NatRules("iptables-save");
  ChildResult r = ns.Exec(InitNetwork(config, {"--dry-run"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ns.NatRules("iptables-save"), v4_before);
  EXPECT_EQ(ns.NatRules("iptables-save").find("MESHTLS"), std::string::npos);
  EXPECT_EQ(ns.NatRules("ip6tables-save").find("MESHTLS"), std::string::npos);
  EXPECT_TRUE(absl::StartsWith(
      r.out,
      "# IPv4 (iptables-restore --noflush input of a first install)\n*nat\n"
      "-N MESHTLS_INBOUND\n-N MESHTLS_OUTPUT\n-A PREROUTING -p tcp -j MESHTLS_INBOUND\n"))
      << r.out;
  EXPECT_NE(r.out.find("COMMIT\n# IPv6 (ip6tables-restore --noflush input of a first install)\n"
                       "*nat\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("-A MESHTLS_OUTPUT -d ::1/128 -j RETURN"), std::string::npos) << r.out;

  const std::string setpriv = Program("setpriv");
  ASSERT_FALSE(setpriv.empty()) << "setpriv (util-linux) is needed";
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(chmod(config.c_str(), 0644), 0);
  // setpriv execs the sidecar itself, as the transparent tests do: a second exec (env's) as
  // the unprivileged user would need every directory above the build to be world-searchable.
  ChildResult unprivileged =
      RunProgram({Program("env"), "PATH=" + dir.path(), setpriv, "--reuid=65534", "--regid=65534",
                  "--clear-groups", testing::BinaryPath("meshtls-sidecar"), "init-network",
                  "--config", config, "--dry-run"});
  EXPECT_EQ(unprivileged.exit_code, 0) << unprivileged.err;
  EXPECT_EQ(unprivileged.out, r.out);
}

TEST(InitNetworkTest, NoIptablesOnPathIsAClearError) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  testing::TempDir empty;
  ChildResult r = ns.Exec({"env", "PATH=" + empty.path(), testing::BinaryPath("meshtls-sidecar"),
                           "init-network", "--config", Config(dir)});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "meshtls-sidecar: init-network: iptables-save not found on PATH: install Debian's "
            "iptables package\n");
  EXPECT_EQ(r.out, "");
}

TEST(InitNetworkTest, NoCapabilityIsAClearError) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  testing::TempDir dir;
  const std::string config = Config(dir);
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(chmod(config.c_str(), 0644), 0);
  ChildResult r =
      ns.Exec({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               testing::BinaryPath("meshtls-sidecar"), "init-network", "--config", config});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "meshtls-sidecar: init-network needs CAP_NET_ADMIN (and NET_RAW): run it as root or "
            "in an init container with securityContext.capabilities.add: [NET_ADMIN, NET_RAW]\n");
  EXPECT_EQ(ns.NatRules("iptables-save").find("MESHTLS"), std::string::npos);
}

TEST(InitNetworkTest, BadInvocationsExitTwoWithOneLine) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-sidecar");
  const std::string plain =
      dir.Write("plain.yaml",
                "trust_domain: example.org\nidentity: {files: {cert: a, key: b, trust_bundle: c}}\n"
                "outbound: [{name: o, listen: 127.0.0.1:0, connect: 127.0.0.1:1, expect: "
                "[spiffe://example.org/a]}]\n");
  const std::string config = Config(dir);
  struct Case {
    std::vector<std::string> argv;
    std::string err;
  };
  for (const Case& c : std::vector<Case>{
           {{bin, "init-network", "--config", plain},
            "meshtls-sidecar: init-network: the config has no transparent section\n"},
           {{bin, "init-network"},
            "meshtls-sidecar: init-network: --config is required (see init-network --help)\n"},
           {{bin, "init-network", "--config", config, "--dry-run", "--clean"},
            "meshtls-sidecar: init-network: --dry-run prints an install; it cannot go with "
            "--clean\n"},
           {{bin, "init-network", "--config", config, "--admin", "127.0.0.1:1"},
            "meshtls-sidecar: init-network: unknown flag --admin (it belongs to "
            "meshtls-sidecar)\n"},
           {{bin, "init-network", "--config", dir.File("missing.yaml")},
            "meshtls-sidecar: init-network: --config: "},
       }) {
    SCOPED_TRACE(absl::StrJoin(c.argv, " "));
    ChildResult r = RunProgram(c.argv);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_TRUE(absl::StartsWith(r.err, c.err)) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

// OriginalDestination reads where an accepted, redirected connection was sent.
std::string OriginalDestination(int family, int fd) {
  char text[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET) {
    sockaddr_in original{};
    socklen_t original_len = sizeof original;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &original, &original_len) != 0) {
      return absl::StrCat("SO_ORIGINAL_DST: ", std::strerror(errno));
    }
    inet_ntop(AF_INET, &original.sin_addr, text, sizeof text);
    return absl::StrCat(text, ":", ntohs(original.sin_port));
  }
  sockaddr_in6 original{};
  socklen_t original_len = sizeof original;
  if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &original, &original_len) != 0) {
    return absl::StrCat("IP6T_SO_ORIGINAL_DST: ", std::strerror(errno));
  }
  inet_ntop(AF_INET6, &original.sin6_addr, text, sizeof text);
  return absl::StrCat("[", text, "]:", ntohs(original.sin6_port));
}

// ConnectAndSee connects from inside `pod` to `target_ip` port 80 and says which listener took
// the connection: "outbound capture <original destination>" (loopback port 15001), "inbound
// capture <...>" (loopback port 15006), "direct" (the target's own port 80), or what went wrong.
std::string ConnectAndSee(const testing::Pod& pod, int family, const std::string& loopback,
                          const std::string& target_ip) {
  absl::StatusOr<base::UniqueFd> outbound = pod.Listen(loopback, 15001);
  absl::StatusOr<base::UniqueFd> inbound = pod.Listen(loopback, 15006);
  absl::StatusOr<base::UniqueFd> direct = pod.Listen(target_ip, 80);
  for (const absl::StatusOr<base::UniqueFd>* listener : {&outbound, &inbound, &direct}) {
    if (!listener->ok()) {
      return absl::StrCat("listen: ", listener->status().ToString());
    }
  }
  absl::StatusOr<base::UniqueFd> client = pod.Connect(target_ip, 80);
  if (!client.ok()) {
    return absl::StrCat("connect: ", client.status().ToString());
  }
  pollfd fds[3] = {
      {outbound->get(), POLLIN, 0}, {inbound->get(), POLLIN, 0}, {direct->get(), POLLIN, 0}};
  if (poll(fds, 3, 5000) <= 0) {
    return "no listener saw the connection within 5 s";
  }
  if (fds[2].revents != 0) {
    return "direct";
  }
  const bool to_outbound = fds[0].revents != 0;
  base::UniqueFd accepted(
      accept4(to_outbound ? outbound->get() : inbound->get(), nullptr, nullptr, SOCK_CLOEXEC));
  return absl::StrCat(to_outbound ? "outbound" : "inbound", " capture ",
                      OriginalDestination(family, accepted.get()));
}

// In a pod (lo, and the pod's addresses on its veth), the test process (root) connects to the
// pod's own address, port 80: as the app (proxy_uid 1337) the outbound capture gets it, with
// the original destination readable there; as the sidecar (proxy_uid 0) the inbound capture
// does (the sidecar reaching its own pod over lo), and with outbound capture alone it goes
// where it was sent.
TEST(InitNetworkTest, TheRulesRedirectTheAppsConnectionsOnly) {
  Netns ns;
  ASSERT_TRUE(ns.created());
  const testing::Pod& pod = ns.pod();
  testing::TempDir dir;
  const std::string outbound_only =
      dir.Write("outbound-only.yaml",
                "trust_domain: example.org\nidentity: {files: {cert: a, key: b, trust_bundle: c}}\n"
                "transparent:\n  proxy_uid: 0\n  outbound: {port: 15001, rules: [{name: a, action: "
                "passthrough}]}\n");
  const std::string v4_target = absl::StrCat(pod.ipv4(), ":80");
  const std::string v6_target = absl::StrCat("[", pod.ipv6(), "]:80");
  struct Case {
    std::string config;
    std::string v4;
    std::string v6;
  };
  for (const Case& c : std::vector<Case>{
           {Config(dir, 1337), "outbound capture " + v4_target, "outbound capture " + v6_target},
           {Config(dir, 0), "inbound capture " + v4_target, "inbound capture " + v6_target},
           {outbound_only, "direct", "direct"},
       }) {
    SCOPED_TRACE(c.config);
    ChildResult installed = ns.Exec(InitNetwork(c.config));
    ASSERT_EQ(installed.exit_code, 0) << installed.err;
    EXPECT_EQ(ConnectAndSee(pod, AF_INET, "127.0.0.1", pod.ipv4()), c.v4);
    EXPECT_EQ(ConnectAndSee(pod, AF_INET6, "::1", pod.ipv6()), c.v6);
  }
}

}  // namespace
}  // namespace meshtls

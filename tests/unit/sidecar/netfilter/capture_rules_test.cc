// The capture rules as text: the exact iptables-restore input for each kind of config, and the
// reading of iptables-save output that makes a re-install and --clean touch only ours.
#include "sidecar/netfilter/capture_rules.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kHead[] = R"(trust_domain: example.org
identity: {files: {cert: a, key: b, trust_bundle: c}}
)";

SidecarConfig Parse(const std::string& yaml) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(yaml, /*check_files=*/false);
  EXPECT_THAT(c, IsOk()) << yaml;
  return c.ok() ? *c : SidecarConfig{};
}

// Both directions, an explicit inbound listener and admin port (own ports), networks of both
// families.
constexpr char kFull[] = R"(admin: {listen: 0.0.0.0:15000}
inbound:
  - {name: web, listen: 0.0.0.0:15443, forward: 127.0.0.1:8080, allow: [spiffe://example.org/a]}
transparent:
  proxy_uid: 1337
  outbound:
    port: 15001
    exclude_ports: [53]
    exclude_networks: [169.254.169.254/32, fd00:ec2::254/128, 10.96.0.0/12]
    rules: [{name: all, action: mesh}]
  inbound:
    port: 15006
    exclude_ports: [8081, 9901]
    allow: [spiffe://example.org/ns/shop/*]
)";

TEST(CaptureRulesTest, FullConfigIpv4) {
  EXPECT_EQ(CaptureRules(Parse(absl::StrCat(kHead, kFull)), IpFamily::kIpv4),
            R"(*nat
-N MESHTLS_INBOUND
-N MESHTLS_OUTPUT
-A PREROUTING -p tcp -j MESHTLS_INBOUND
-A OUTPUT -p tcp -j MESHTLS_OUTPUT
-A MESHTLS_INBOUND -p tcp -m multiport --dports 15000,15443,15001,15006,8081,9901 -j RETURN
-A MESHTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MESHTLS_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j MESHTLS_INBOUND
-A MESHTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESHTLS_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MESHTLS_OUTPUT -p tcp -m tcp --dport 53 -j RETURN
-A MESHTLS_OUTPUT -d 169.254.169.254/32 -j RETURN
-A MESHTLS_OUTPUT -d 10.96.0.0/12 -j RETURN
-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
)");
}

TEST(CaptureRulesTest, FullConfigIpv6UsesItsLoopbackAndOnlyItsNetworks) {
  EXPECT_EQ(CaptureRules(Parse(absl::StrCat(kHead, kFull)), IpFamily::kIpv6),
            R"(*nat
-N MESHTLS_INBOUND
-N MESHTLS_OUTPUT
-A PREROUTING -p tcp -j MESHTLS_INBOUND
-A OUTPUT -p tcp -j MESHTLS_OUTPUT
-A MESHTLS_INBOUND -p tcp -m multiport --dports 15000,15443,15001,15006,8081,9901 -j RETURN
-A MESHTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MESHTLS_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j MESHTLS_INBOUND
-A MESHTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESHTLS_OUTPUT -d ::1/128 -j RETURN
-A MESHTLS_OUTPUT -p tcp -m tcp --dport 53 -j RETURN
-A MESHTLS_OUTPUT -d fd00:ec2::254/128 -j RETURN
-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
)");
}

TEST(CaptureRulesTest, InboundOnlyHasNoOutboundCapture) {
  const SidecarConfig c = Parse(absl::StrCat(kHead, R"(transparent:
  proxy_uid: 1000
  inbound: {allow: [spiffe://example.org/x]}
)"));
  // The default admin address is 127.0.0.1:15000: its port is ours on every address.
  EXPECT_EQ(CaptureRules(c, IpFamily::kIpv4), R"(*nat
-N MESHTLS_INBOUND
-N MESHTLS_OUTPUT
-A PREROUTING -p tcp -j MESHTLS_INBOUND
-A OUTPUT -p tcp -j MESHTLS_OUTPUT
-A MESHTLS_INBOUND -p tcp -m multiport --dports 15000,15006 -j RETURN
-A MESHTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MESHTLS_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1000 -j MESHTLS_INBOUND
COMMIT
)");
}

TEST(CaptureRulesTest, OutboundOnlyHasNoInboundChainOrJump) {
  const SidecarConfig c = Parse(absl::StrCat(kHead, R"(transparent:
  outbound: {port: 15001, rules: [{name: all, action: passthrough}]}
)"));
  EXPECT_EQ(CaptureRules(c, IpFamily::kIpv6), R"(*nat
-N MESHTLS_OUTPUT
-A OUTPUT -p tcp -j MESHTLS_OUTPUT
-A MESHTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESHTLS_OUTPUT -d ::1/128 -j RETURN
-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
)");
}

TEST(CaptureRulesTest, MoreThanFifteenPortsTakeSeveralMultiportRules) {
  std::string ports;
  for (int p = 1; p <= 17; ++p) {
    absl::StrAppend(&ports, p == 1 ? "" : ", ", 1000 + p);
  }
  const CaptureRuleSet set =
      BuildCaptureRules(Parse(absl::StrCat(kHead, "transparent:\n  outbound: {exclude_ports: [",
                                           ports, "], rules: [{name: a, action: deny}]}\n")),
                        IpFamily::kIpv4);
  EXPECT_NE(std::find(set.rules.begin(), set.rules.end(),
                      "-A MESHTLS_OUTPUT -p tcp -m multiport --dports "
                      "1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014,1015"
                      " -j RETURN"),
            set.rules.end());
  EXPECT_NE(std::find(set.rules.begin(), set.rules.end(),
                      "-A MESHTLS_OUTPUT -p tcp -m multiport --dports 1016,1017 -j RETURN"),
            set.rules.end());
  // Sixteen ports: the last one alone, in the single-port form.
  const CaptureRuleSet sixteen =
      BuildCaptureRules(Parse(absl::StrCat(kHead, "transparent:\n  outbound: {exclude_ports: [",
                                           ports.substr(0, ports.rfind(',')),
                                           "], rules: [{name: a, action: deny}]}\n")),
                        IpFamily::kIpv4);
  EXPECT_NE(std::find(sixteen.rules.begin(), sixteen.rules.end(),
                      "-A MESHTLS_OUTPUT -p tcp -m tcp --dport 1016 -j RETURN"),
            sixteen.rules.end());
}

TEST(CaptureRulesTest, NoTransparentSectionNoRules) {
  const CaptureRuleSet set =
      BuildCaptureRules(Parse(absl::StrCat(kHead,
                                           "outbound: [{name: o, listen: 127.0.0.1:0, connect: "
                                           "127.0.0.1:1, expect: [spiffe://example.org/a]}]\n")),
                        IpFamily::kIpv4);
  EXPECT_TRUE(set.chains.empty());
  EXPECT_TRUE(set.rules.empty());
}

// What iptables-save printed with our rules installed beside a foreign chain and rules.
constexpr char kSaved[] = R"(# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j MESHTLS_LOOKALIKE
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FOREIGN - [0:0]
:MESHTLS_INBOUND - [0:0]
:MESHTLS_OLD - [0:0]
-A PREROUTING -p udp -j FOREIGN
-A PREROUTING -p tcp -j MESHTLS_INBOUND
-A OUTPUT -m comment --comment "not -j MESHTLS_INBOUND" -j FOREIGN
-A OUTPUT -p tcp -j MESHTLS_OLD
-A FOREIGN -j RETURN
-A MESHTLS_INBOUND -p tcp -j REDIRECT --to-ports 15006
-A MESHTLS_OLD -j MESHTLS_INBOUND
COMMIT
)";

TEST(CaptureRulesTest, FindsOnlyOursInTheNatTable) {
  const InstalledCapture found = FindInstalledCapture(kSaved);
  EXPECT_EQ(found.chains, (std::vector<std::string>{"MESHTLS_INBOUND", "MESHTLS_OLD"}));
  EXPECT_EQ(found.jumps, (std::vector<std::string>{"-A PREROUTING -p tcp -j MESHTLS_INBOUND",
                                                   "-A OUTPUT -p tcp -j MESHTLS_OLD"}));
  EXPECT_EQ(found.rules.size(), 2u);
  EXPECT_TRUE(FindInstalledCapture("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n").empty());
  EXPECT_TRUE(FindInstalledCapture("").empty());
}

TEST(CaptureRulesTest, ReplacementDeletesJumpsFlushesThenDropsChainsNoLongerWanted) {
  const SidecarConfig c = Parse(absl::StrCat(kHead, R"(transparent:
  outbound: {rules: [{name: all, action: passthrough}]}
)"));
  EXPECT_EQ(ReplacementInput(FindInstalledCapture(kSaved), BuildCaptureRules(c, IpFamily::kIpv4)),
            R"(*nat
-D PREROUTING -p tcp -j MESHTLS_INBOUND
-D OUTPUT -p tcp -j MESHTLS_OLD
-F MESHTLS_INBOUND
-F MESHTLS_OLD
-X MESHTLS_INBOUND
-X MESHTLS_OLD
-N MESHTLS_OUTPUT
-A OUTPUT -p tcp -j MESHTLS_OUTPUT
-A MESHTLS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESHTLS_OUTPUT -d 127.0.0.0/8 -j RETURN
-A MESHTLS_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
)");
  // --clean: the same removal, nothing added.
  EXPECT_EQ(ReplacementInput(FindInstalledCapture(kSaved), CaptureRuleSet{}), R"(*nat
-D PREROUTING -p tcp -j MESHTLS_INBOUND
-D OUTPUT -p tcp -j MESHTLS_OLD
-F MESHTLS_INBOUND
-F MESHTLS_OLD
-X MESHTLS_INBOUND
-X MESHTLS_OLD
COMMIT
)");
}

TEST(CaptureRulesTest, VerifyComparesOurRulesChainByChain) {
  const SidecarConfig c = Parse(absl::StrCat(kHead, kFull));
  const CaptureRuleSet wanted = BuildCaptureRules(c, IpFamily::kIpv4);
  // What iptables-save prints after the install: the chains with counters, builtin chains'
  // rules first, foreign rules between ours.
  std::string saved =
      "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
      ":MESHTLS_INBOUND - [0:0]\n:MESHTLS_OUTPUT - [0:0]\n"
      "-A PREROUTING -p udp -j RETURN\n";
  for (const std::string& rule : wanted.rules) {
    absl::StrAppend(&saved, rule, "\n");
  }
  absl::StrAppend(&saved, "COMMIT\n");
  EXPECT_THAT(VerifyCapture(wanted, saved), IsOk());
  std::string changed = saved;
  changed.replace(changed.find("--to-ports 15001"), 16, "--to-ports 15002");
  EXPECT_THAT(VerifyCapture(wanted, changed),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "chain MESHTLS_OUTPUT is \"-A MESHTLS_OUTPUT -p tcp -j REDIRECT "
                       "--to-ports 15002\" where \"-A MESHTLS_OUTPUT -p tcp -j REDIRECT "
                       "--to-ports 15001\" was meant"));
  std::string missing = saved;
  missing.erase(missing.find("-A OUTPUT -p tcp -j MESHTLS_OUTPUT\n"), 35);
  EXPECT_THAT(VerifyCapture(wanted, missing),
              StatusIs(absl::StatusCode::kFailedPrecondition, "chain OUTPUT is \"(nothing)\""));
  EXPECT_THAT(VerifyCapture(wanted, "*nat\nCOMMIT\n"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       "chains [] of ours instead of [MESHTLS_INBOUND, MESHTLS_OUTPUT]"));
}

}  // namespace
}  // namespace meshtls::sidecar

// The `transparent` section: capture ports, destination rules and inbound port policies, and
// the clear error each kind of mistake gets.
#include <gtest/gtest.h>

#include "absl/strings/str_replace.h"
#include "sidecar/config/sidecar_config.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kTransparent[] = R"(trust_domain: example.org
identity:
  certmgr:
    address: certmgr.meshtls-system.svc:8443
    server_ca: /etc/meshtls/bootstrap/ca.pem
admin: {listen: 0.0.0.0:15000}
transparent:
  proxy_uid: 1337
  outbound:
    port: 15001
    exclude_ports: [53]
    exclude_networks: [169.254.169.254/32]
    rules:
      - name: payments
        networks: [10.244.7.0/24]
        ports: [8443]
        action: mesh
        expect: [spiffe://example.org/ns/payments/sa/api]
      - name: pods
        networks: [10.244.0.0/16, fd00:10:244::/56]
        action: mesh
      - name: database
        networks: [10.0.5.0/24]
        ports: [5432]
        action: passthrough
      - name: metadata
        networks: [169.254.0.0/16]
        action: deny
  inbound:
    port: 15006
    exclude_ports: [8081]
    mode: strict
    allow: [spiffe://example.org/ns/shop/*]
    ports:
      - port: 8080
        mode: permissive
      - port: 9090
        allow: [spiffe://example.org/ns/monitoring/sa/prometheus]
)";

TEST(TransparentConfigTest, ParsesACompleteSection) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(kTransparent, /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  EXPECT_TRUE(c->inbound.empty());
  EXPECT_TRUE(c->outbound.empty());
  const TransparentConfig& t = c->transparent;
  EXPECT_EQ(t.proxy_uid, 1337u);
  ASSERT_TRUE(t.outbound.enabled);
  EXPECT_EQ(t.outbound.port, 15001);
  EXPECT_EQ(t.outbound.exclude_ports, std::vector<uint16_t>{53});
  ASSERT_EQ(t.outbound.rules.size(), 4u);
  EXPECT_EQ(t.outbound.rules[0].action, DestinationRule::Action::kMesh);
  EXPECT_EQ(t.outbound.rules[0].expect.size(), 1u);
  EXPECT_TRUE(t.outbound.rules[1].expect.empty());  // any identity of the trust domain
  ASSERT_EQ(t.outbound.rules[1].networks.size(), 2u);
  EXPECT_TRUE(t.outbound.rules[1].networks[1].is_ipv6());
  EXPECT_EQ(t.outbound.rules[2].action, DestinationRule::Action::kPassthrough);
  EXPECT_EQ(t.outbound.rules[3].action, DestinationRule::Action::kDeny);
  ASSERT_TRUE(t.inbound.enabled);
  EXPECT_EQ(t.inbound.port, 15006);
  EXPECT_EQ(t.inbound.default_policy.mode, InboundMode::kStrict);
  ASSERT_EQ(t.inbound.ports.size(), 2u);
  EXPECT_EQ(t.inbound.ports[0].mode, InboundMode::kPermissive);
  EXPECT_EQ(t.inbound.ports[0].allow, t.inbound.default_policy.allow);  // inherited
  EXPECT_EQ(t.inbound.ports[1].mode, InboundMode::kStrict);             // inherited
  EXPECT_EQ(t.inbound.ports[1].allow,
            std::vector<std::string>{"spiffe://example.org/ns/monitoring/sa/prometheus"});
  EXPECT_EQ(c->OwnPorts(), (std::vector<uint16_t>{15000, 15001, 15006}));
}

TEST(TransparentConfigTest, DefaultsAreIstiosPortsAndUser) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(R"(trust_domain: example.org
identity: {files: {cert: a, key: b, trust_bundle: c}}
transparent:
  outbound: {rules: [{name: all, action: mesh}]}
  inbound: {allow: [spiffe://example.org/ns/shop/*]}
)",
                                                       /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->transparent.proxy_uid, 1337u);
  EXPECT_EQ(c->transparent.outbound.port, 15001);
  EXPECT_EQ(c->transparent.inbound.port, 15006);
  EXPECT_EQ(c->transparent.inbound.default_policy.mode, InboundMode::kStrict);
}

TEST(TransparentConfigTest, EitherDirectionAlone) {
  for (const char* section : {"  outbound: {rules: [{name: all, action: passthrough}]}\n",
                              "  inbound: {allow: [spiffe://example.org/x]}\n"}) {
    absl::StatusOr<SidecarConfig> c =
        ParseSidecarConfig(absl::StrCat("trust_domain: example.org\n"
                                        "identity: {files: {cert: a, key: b, trust_bundle: c}}\n"
                                        "transparent:\n",
                                        section),
                           /*check_files=*/false);
    ASSERT_THAT(c, IsOk()) << section;
    EXPECT_NE(c->transparent.outbound.enabled, c->transparent.inbound.enabled);
  }
}

struct ErrorCase {
  const char* from;  // replaced in kTransparent
  const char* to;
  const char* message;  // must appear in the error
};

class TransparentConfigErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(TransparentConfigErrorTest, OneClearErrorNamingTheField) {
  std::string yaml = absl::StrReplaceAll(kTransparent, {{GetParam().from, GetParam().to}});
  ASSERT_NE(yaml, kTransparent) << "the case does not change the example";
  EXPECT_THAT(ParseSidecarConfig(yaml, /*check_files=*/false),
              StatusIs(absl::StatusCode::kInvalidArgument, GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    EachError, TransparentConfigErrorTest,
    ::testing::Values(
        // Networks.
        ErrorCase{"[10.244.7.0/24]", "[10.244.7.1/24]",
                  "transparent.outbound.rules[0].networks: \"10.244.7.1/24\" has host bits set; "
                  "the network is 10.244.7.0/24"},
        ErrorCase{"[10.244.7.0/24]", "[pods.svc]",
                  "transparent.outbound.rules[0].networks: \"pods.svc\" is not a network"},
        ErrorCase{"[10.244.7.0/24]", "[10.244.7.0/33]", "prefix length must be"},
        ErrorCase{"[10.244.0.0/16, fd00", "[10.244.0.0/16, 10.244.1.0/24, fd00",
                  "rules[1].networks: 10.244.0.0/16 and 10.244.1.0/24 overlap"},
        ErrorCase{"exclude_networks: [169.254.169.254/32]",
                  "exclude_networks: [169.254.169.254/40]",
                  "transparent.outbound.exclude_networks"},
        // Rules that can never decide.
        ErrorCase{"networks: [169.254.0.0/16]", "networks: [169.254.169.254/32]",
                  "rules[3].networks: 169.254.169.254/32 is never captured: it is inside "
                  "169.254.169.254/32 of exclude_networks"},
        ErrorCase{"ports: [5432]", "ports: [53]",
                  "rules[2].ports: every port of the rule is in "
                  "exclude_ports"},
        ErrorCase{"networks: [10.0.5.0/24]", "networks: [10.244.5.0/24]",
                  "rule \"database\" is unreachable: rule \"pods\" (rules[1]) before it matches "
                  "every destination it does"},
        ErrorCase{"rules:\n      - name: payments",
                  "rules:\n      - {name: everything, action: deny}\n      - name: payments",
                  "rule \"payments\" is unreachable: rule \"everything\""},
        ErrorCase{"- name: pods", "- name: payments", "\"payments\" names two rules"},
        ErrorCase{"- name: pods", "- name: \"pods!\"", "rules[1].name: must be 1-64 characters"},
        ErrorCase{"action: passthrough", "action: allow",
                  "rules[2].action: \"allow\" is not an action: mesh, passthrough or deny"},
        ErrorCase{"action: passthrough",
                  "action: passthrough\n        expect: [spiffe://example.org/x]",
                  "rules[2].expect: applies to action: mesh only"},
        ErrorCase{"expect: [spiffe://example.org/ns/payments/sa/api]",
                  "expect: [spiffe://other.org/ns/payments/sa/api]", "not in trust domain"},
        ErrorCase{"ports: [8443]", "ports: [8443, 8443]",
                  "rules[0].ports: port 8443 is listed twice"},
        ErrorCase{"ports: [8443]", "ports: [0]",
                  "rules[0].ports[0]: must be a whole number from 1"},
        ErrorCase{"    rules:\n", "    rules: []\n    unused:\n", "unused: unknown field"},
        // Inbound.
        ErrorCase{"    mode: strict", "    mode: lenient",
                  "transparent.inbound.mode: \"lenient\" is not a mode: strict or permissive"},
        ErrorCase{"    allow: [spiffe://example.org/ns/shop/*]", "    allow: []",
                  "transparent.inbound.allow: must list at least one"},
        ErrorCase{"      - port: 9090", "      - port: 8080", "port 8080 has two entries"},
        ErrorCase{"      - port: 9090", "      - port: 8081",
                  "ports[1].port: port 8081 is in exclude_ports"},
        ErrorCase{"      - port: 9090", "      - port: 15000",
                  "ports[1].port: port 15000 is one of the sidecar's own"},
        ErrorCase{"      - port: 9090", "      - port: 15006", "is one of the sidecar's own"},
        ErrorCase{"mode: permissive", "mode: open", "ports[0].mode: \"open\" is not a mode"},
        ErrorCase{"allow: [spiffe://example.org/ns/monitoring/sa/prometheus]", "allow: []",
                  "ports[1].allow: must list at least one SPIFFE ID"},
        // Capture ports.
        ErrorCase{"    port: 15006", "    port: 15001",
                  "transparent.inbound.port: port 15001 is taken by transparent.outbound.port"},
        ErrorCase{"    port: 15001", "    port: 15000",
                  "transparent.outbound.port: port 15000 is taken by admin.listen"},
        ErrorCase{"admin: {listen: 0.0.0.0:15000}",
                  "admin: {listen: 0.0.0.0:15000}\ninbound:\n  - {name: tls, listen: "
                  "\"[::]:15006\", forward: \"127.0.0.1:1\", allow: [spiffe://example.org/x]}",
                  "transparent.inbound.port: port 15006 is taken by listener tls"},
        ErrorCase{"    port: 15001", "    port: 0",
                  "transparent.outbound.port: must be a whole "
                  "number from 1 to 65535"},
        ErrorCase{"  proxy_uid: 1337", "  proxy_uid: -1", "transparent.proxy_uid"},
        // Ports the rules cannot name.
        ErrorCase{"admin: {listen: 0.0.0.0:15000}", "admin: {listen: 0.0.0.0:0}",
                  "admin.listen: port 0 cannot go with transparent.inbound"},
        ErrorCase{"admin: {listen: 0.0.0.0:15000}",
                  "admin: {listen: 0.0.0.0:15000}\noutbound:\n  - {name: o, listen: "
                  "\"127.0.0.1:0\", connect: \"127.0.0.1:1\", expect: [spiffe://example.org/x]}",
                  "listener o: port 0 cannot go with transparent.inbound"}));

TEST(TransparentConfigTest, NeedsADirection) {
  EXPECT_THAT(
      ParseSidecarConfig("trust_domain: example.org\n"
                         "identity: {files: {cert: a, key: b, trust_bundle: c}}\n"
                         "transparent: {proxy_uid: 1337}\n",
                         /*check_files=*/false),
      StatusIs(absl::StatusCode::kInvalidArgument, "transparent: set outbound, inbound or both"));
}

}  // namespace
}  // namespace meshtls::sidecar

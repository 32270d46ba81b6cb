#include "sidecar/config/sidecar_config.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

// A complete sidecar config, with both identity modes present (the test removes one).
constexpr char kDesignExample[] = R"(trust_domain: example.org
identity:                         # exactly one of certmgr / files
  certmgr:
    address: certmgr.meshtls-system.svc:8443
    server_ca: /etc/meshtls/bootstrap/ca.pem
    token_file: /var/run/secrets/tokens/meshtls
    renew_at: 0.5
inbound:
  - name: http
    listen: 0.0.0.0:15443
    forward: 127.0.0.1:8080
    allow: [spiffe://example.org/ns/default/sa/frontend, spiffe://example.org/ns/ops/*]
outbound:
  - name: orders
    listen: 127.0.0.1:15101
    connect: orders.default.svc.cluster.local:15443
    expect: [spiffe://example.org/ns/default/sa/orders]
admin: {listen: 127.0.0.1:15000}
workers: 0                        # 0 = one per core
tls: {min_version: "1.3", session_resumption: true}
limits: {handshake_timeout: 10s, idle_timeout: 1h, max_connections: 20000, drain_timeout: 30s}
log: {level: info, format: text}  # or json
)";

TEST(SidecarConfigTest, ParsesTheDesignExample) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(kDesignExample, /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->trust_domain, "example.org");
  EXPECT_EQ(c->identity_mode, SidecarConfig::IdentityMode::kCertmgr);
  EXPECT_EQ(c->certmgr.addresses, std::vector<std::string>{"certmgr.meshtls-system.svc:8443"});
  ASSERT_EQ(c->inbound.size(), 1u);
  EXPECT_EQ(c->inbound[0].peers.size(), 2u);
  EXPECT_EQ(c->inbound[0].target.port, 8080);
  ASSERT_EQ(c->outbound.size(), 1u);
  EXPECT_EQ(c->outbound[0].target.host, "orders.default.svc.cluster.local");
  EXPECT_EQ(c->limits.handshake_timeout, absl::Seconds(10));
  EXPECT_EQ(c->limits.max_connections, 20000);
  EXPECT_EQ(c->admin_listen, "127.0.0.1:15000");
}

TEST(SidecarConfigTest, FilesMode) {
  testing::TempDir dir;
  std::string yaml = absl::StrReplaceAll(
      R"(trust_domain: example.org
identity:
  files: {cert: CERT, key: KEY, trust_bundle: BUNDLE}
inbound:
  - {name: a, listen: "[::1]:0", forward: "[::1]:8080", allow: spiffe://example.org/x}
)",
      {{"CERT", dir.Write("c.pem", "x")},
       {"KEY", dir.Write("k.pem", "x")},
       {"BUNDLE", dir.Write("b.pem", "x")}});
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(yaml);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->identity_mode, SidecarConfig::IdentityMode::kFiles);
  EXPECT_TRUE(c->inbound[0].listen.is_ipv6);
}

struct ErrorCase {
  const char* from;  // replaced in the complete example
  const char* to;
  const char* message;  // must appear in the error
};

class SidecarConfigErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(SidecarConfigErrorTest, OneClearErrorNamingTheField) {
  std::string yaml = absl::StrReplaceAll(kDesignExample, {{GetParam().from, GetParam().to}});
  ASSERT_NE(yaml, kDesignExample) << "the case does not change the example";
  EXPECT_THAT(ParseSidecarConfig(yaml, /*check_files=*/false),
              StatusIs(absl::StatusCode::kInvalidArgument, GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    EachError, SidecarConfigErrorTest,
    ::testing::Values(
        ErrorCase{"workers: 0", "worker: 0", "worker: unknown field"},
        ErrorCase{"    renew_at: 0.5", "    renew_at: 0.5\n    renw: 1",
                  "identity.certmgr.renw: unknown field"},
        ErrorCase{"    forward: 127.0.0.1:8080", "    forward: 127.0.0.1", "inbound[0].forward"},
        ErrorCase{"listen: 0.0.0.0:15443", "listen: 0.0.0.0:99999", "inbound[0].listen"},
        ErrorCase{"listen: 0.0.0.0:15443", "listen: myhost:15443", "must be an IP address"},
        ErrorCase{"spiffe://example.org/ns/ops/*", "spiffe://example.org/ns//ops",
                  "inbound[0].allow"},
        ErrorCase{"spiffe://example.org/ns/ops/*", "spiffe://other.org/ns/ops/*",
                  "not in trust domain"},
        ErrorCase{"expect: [spiffe://example.org/ns/default/sa/orders]", "expect: []",
                  "outbound[0].expect"},
        ErrorCase{"trust_domain: example.org", "trust_domain: Example.org", "trust_domain"},
        ErrorCase{"renew_at: 0.5", "renew_at: 1.5", "identity.certmgr.renew_at"},
        ErrorCase{"handshake_timeout: 10s", "handshake_timeout: ten", "limits.handshake_timeout"},
        ErrorCase{"max_connections: 20000", "max_connections: -1", "limits.max_connections"},
        ErrorCase{"min_version: \"1.3\"", "min_version: \"1.1\"", "tls.min_version"},
        ErrorCase{"level: info", "level: loud", "log.level"},
        ErrorCase{"name: orders", "name: http", "used twice"},
        ErrorCase{"listen: 127.0.0.1:15101", "listen: 0.0.0.0:15443", "used by two listeners"},
        ErrorCase{"  certmgr:\n", "  files: {cert: a, key: b, trust_bundle: c}\n  certmgr:\n",
                  "exactly one of certmgr or files"},
        ErrorCase{"address: certmgr.meshtls-system.svc:8443", "address: [a:1, b]",
                  "identity.certmgr.address: \"b\""},
        ErrorCase{"address: certmgr.meshtls-system.svc:8443", "address: [a:1, a:1]",
                  "\"a:1\" is listed twice"},
        ErrorCase{"address: certmgr.meshtls-system.svc:8443", "address: []",
                  "at least one host:port"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {servers: [kube-dns.svc:53]}",
                  "dns.servers: \"kube-dns.svc:53\" is not an IP address"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {servers: []}", "dns.servers: must list 1 to 8"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {servers: [10.0.0.1:0]}",
                  "dns.servers: \"10.0.0.1:0\""},
        ErrorCase{"workers: 0", "workers: 0\ndns: {max_ttl: 48h}", "dns.max_ttl: must be between"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {negative_ttl: 2h}",
                  "dns.negative_ttl: must be between"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {negative_ttl: 0s}",
                  "dns.negative_ttl: must be a positive duration"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {negative_ttl: 500us}",
                  "dns.negative_ttl: must be between 1ms and 1h"},
        ErrorCase{"workers: 0", "workers: 0\ndns: {server: [10.0.0.1]}",
                  "dns.server: unknown field"}));

TEST(SidecarConfigTest, DnsSection) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(kDesignExample, /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  EXPECT_TRUE(c->dns.servers.empty()) << "the system's resolver by default";
  EXPECT_EQ(c->dns.max_ttl, absl::Minutes(5));
  EXPECT_EQ(c->dns.negative_ttl, absl::Seconds(5));
  c = ParseSidecarConfig(
      absl::StrCat(kDesignExample,
                   "dns: {servers: [10.96.0.10, 127.0.0.1:5353, \"fd00::a\", \"[::1]:53\"], "
                   "max_ttl: 30s, negative_ttl: 1s}\n"),
      /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  std::vector<std::string> servers;
  for (const base::HostPort& s : c->dns.servers) {
    servers.push_back(s.ToString());
  }
  EXPECT_EQ(servers, (std::vector<std::string>{"10.96.0.10:53", "127.0.0.1:5353", "[fd00::a]:53",
                                               "[::1]:53"}));
  EXPECT_EQ(c->dns.max_ttl, absl::Seconds(30));
  EXPECT_EQ(c->dns.negative_ttl, absl::Seconds(1));
}

TEST(SidecarConfigTest, CertmgrAddressTakesAListOfReplicas) {
  absl::StatusOr<SidecarConfig> c = ParseSidecarConfig(
      absl::StrReplaceAll(kDesignExample, {{"address: certmgr.meshtls-system.svc:8443",
                                            "address: [10.0.0.1:8443, \"[fd00::2]:8443\", "
                                            "certmgr-1.certmgr.meshtls-system.svc:8443]"}}),
      /*check_files=*/false);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->certmgr.addresses,
            (std::vector<std::string>{"10.0.0.1:8443", "[fd00::2]:8443",
                                      "certmgr-1.certmgr.meshtls-system.svc:8443"}));
}

TEST(SidecarConfigTest, MissingFileNamesTheField) {
  EXPECT_THAT(
      ParseSidecarConfig(kDesignExample, /*check_files=*/true),
      StatusIs(absl::StatusCode::kInvalidArgument,
               "identity.certmgr.server_ca: file /etc/meshtls/bootstrap/ca.pem does not exist"));
}

TEST(SidecarConfigTest, NeedsAListener) {
  EXPECT_THAT(ParseSidecarConfig(
                  "trust_domain: a\nidentity:\n  certmgr: {address: a:1, server_ca: x}\n", false),
              StatusIs(absl::StatusCode::kInvalidArgument, "at least one listener"));
}

}  // namespace
}  // namespace meshtls::sidecar

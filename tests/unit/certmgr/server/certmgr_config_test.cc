#include "certmgr/server/certmgr_config.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kExample[] = R"(trust_domain: example.org
listen: 0.0.0.0:8443
server_names: [localhost, certmgr.meshtls-system.svc]
server_ips: [127.0.0.1, "::1"]
admin: {listen: 127.0.0.1:15010}
ca:
  dir: /var/lib/meshtls/ca
  ttl: 87600h
  rotation: {auto: false, prepare_at: 0.5, activate_at: 0.7}
issuance: {default_ttl: 12h, max_ttl: 24h, min_ttl: 5s, backdate: 2m}
authenticators:
  join_tokens: {file: /etc/meshtls/join-tokens}
  kubernetes:
    issuer: https://kubernetes.default.svc.cluster.local
    jwks_file: /etc/meshtls/k8s-jwks.json
    allowed_namespaces: [default, shop]
    max_token_lifetime: 1h
    require_pod_binding: false
deny: [spiffe://example.org/ns/x/sa/y, spiffe://example.org/ns/old/*]
limits: {max_watchers: 100, max_watchers_per_address: 4}
log: {level: debug, format: json}
)";

TEST(CertmgrConfigTest, ParsesEveryField) {
  absl::StatusOr<CertmgrConfig> c = ParseCertmgrConfig(kExample);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->trust_domain, "example.org");
  EXPECT_EQ(c->listen, "0.0.0.0:8443");
  EXPECT_EQ(c->server_names, (std::vector<std::string>{"localhost", "certmgr.meshtls-system.svc"}));
  EXPECT_EQ(c->server_ips, (std::vector<std::string>{"127.0.0.1", "::1"}));
  EXPECT_EQ(c->admin_listen, "127.0.0.1:15010");
  EXPECT_EQ(c->ca_dir, "/var/lib/meshtls/ca");
  EXPECT_EQ(c->ca_ttl, absl::Hours(87600));
  EXPECT_FALSE(c->rotation_auto);
  EXPECT_EQ(c->rotation_prepare_at, 0.5);
  EXPECT_EQ(c->rotation_activate_at, 0.7);
  EXPECT_EQ(c->issuance.default_ttl, absl::Hours(12));
  EXPECT_EQ(c->issuance.max_ttl, absl::Hours(24));
  EXPECT_EQ(c->issuance.min_ttl, absl::Seconds(5));
  EXPECT_EQ(c->issuance.backdate, absl::Minutes(2));
  EXPECT_EQ(c->join_tokens_file, "/etc/meshtls/join-tokens");
  EXPECT_TRUE(c->kubernetes.enabled);
  EXPECT_EQ(c->kubernetes.issuer, "https://kubernetes.default.svc.cluster.local");
  EXPECT_EQ(c->kubernetes.audience, "meshtls") << "the default";
  EXPECT_EQ(c->kubernetes.jwks_file, "/etc/meshtls/k8s-jwks.json");
  EXPECT_EQ(c->kubernetes.allowed_namespaces, (std::vector<std::string>{"default", "shop"}));
  EXPECT_EQ(c->kubernetes.max_token_lifetime, absl::Hours(1));
  EXPECT_FALSE(c->kubernetes.require_pod_binding);
  EXPECT_EQ(c->deny.size(), 2u);
  EXPECT_EQ(c->max_watchers, 100);
  EXPECT_EQ(c->max_watchers_per_address, 4);
  EXPECT_EQ(c->log.level, base::LogLevel::kDebug);
  EXPECT_EQ(c->log.format, base::LogFormat::kJson);
}

TEST(CertmgrConfigTest, Defaults) {
  absl::StatusOr<CertmgrConfig> c = ParseCertmgrConfig("trust_domain: a.test\nca: {dir: /ca}\n");
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->listen, "0.0.0.0:8443");
  EXPECT_EQ(c->server_names, std::vector<std::string>{"localhost"});
  EXPECT_EQ(c->server_ips, (std::vector<std::string>{"127.0.0.1", "::1"}));
  EXPECT_EQ(c->admin_listen, "127.0.0.1:15010");
  EXPECT_EQ(c->ca_ttl, absl::Hours(24 * 365 * 10));
  EXPECT_TRUE(c->rotation_auto);
  EXPECT_EQ(c->rotation_prepare_at, 0.6);
  EXPECT_EQ(c->rotation_activate_at, 0.8);
  EXPECT_EQ(c->issuance.default_ttl, absl::Hours(24));
  EXPECT_EQ(c->issuance.max_ttl, absl::Hours(24));
  EXPECT_EQ(c->issuance.min_ttl, absl::Seconds(5));
  EXPECT_EQ(c->issuance.backdate, absl::Minutes(2));
  EXPECT_TRUE(c->join_tokens_file.empty());
  EXPECT_FALSE(c->kubernetes.enabled);
  EXPECT_TRUE(c->deny.empty());
  EXPECT_EQ(c->max_watchers, 10000);
  EXPECT_EQ(c->max_watchers_per_address, 16);
  EXPECT_EQ(c->log.level, base::LogLevel::kInfo);
  EXPECT_EQ(c->log.format, base::LogFormat::kText);
}

TEST(CertmgrConfigTest, RaisingTheDefaultTtlAloneRaisesTheCap) {
  absl::StatusOr<CertmgrConfig> c =
      ParseCertmgrConfig("trust_domain: a\nca: {dir: /ca}\nissuance: {default_ttl: 48h}\n");
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->issuance.max_ttl, absl::Hours(48));
  EXPECT_THAT(ParseCertmgrConfig(
                  "trust_domain: a\nca: {dir: /ca}\nissuance: {default_ttl: 48h, max_ttl: 24h}\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, "default_ttl"));
  c = ParseCertmgrConfig("trust_domain: a\nca: {dir: /ca}\nissuance: {backdate: 0}\n");
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->issuance.backdate, absl::ZeroDuration());
}

struct ErrorCase {
  const char* from;  // replaced in kExample
  const char* to;
  const char* message;  // must appear in the error
};

class CertmgrConfigErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(CertmgrConfigErrorTest, OneClearErrorNamingTheField) {
  std::string yaml = absl::StrReplaceAll(kExample, {{GetParam().from, GetParam().to}});
  ASSERT_NE(yaml, kExample) << "the case does not change the example";
  EXPECT_THAT(ParseCertmgrConfig(yaml),
              StatusIs(absl::StatusCode::kInvalidArgument, GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    EachError, CertmgrConfigErrorTest,
    ::testing::Values(
        ErrorCase{"trust_domain: example.org\n", "", "trust_domain: required"},
        ErrorCase{"trust_domain: example.org", "trust_domain: Example.org", "trust_domain: "},
        ErrorCase{"listen: 0.0.0.0:8443", "listen: certmgr:8443",
                  "listen: a listen address must be an IP address (0.0.0.0, [::], 127.0.0.1) "
                  "(line 2)"},
        ErrorCase{"listen: 0.0.0.0:8443", "listen: 0.0.0.0", "listen: "},
        ErrorCase{"admin: {listen: 127.0.0.1:15010}", "admin: {listen: 127.0.0.1:x}",
                  "admin.listen"},
        ErrorCase{"server_ips: [127.0.0.1, \"::1\"]", "server_ips: [localhost]",
                  "server_ips: \"localhost\" is not an IP address (line 4)"},
        ErrorCase{"ca:\n  dir: /var/lib/meshtls/ca\n  ttl: 87600h\n  rotation: {auto: false, "
                  "prepare_at: 0.5, activate_at: 0.7}\n",
                  "", "ca: required (ca.dir, or ca.cert and ca.key)"},
        ErrorCase{"  dir: /var/lib/meshtls/ca", "  dir: /ca\n  cert: c.pem\n  key: k.pem",
                  "ca: set exactly one of ca.dir or ca.cert + ca.key (line 6)"},
        ErrorCase{"  dir: /var/lib/meshtls/ca", "  cert: c.pem", "ca.cert and ca.key go together"},
        ErrorCase{"  dir: /var/lib/meshtls/ca", "  trust_bundle: b.pem",
                  "set exactly one of ca.dir or ca.cert + ca.key"},
        ErrorCase{"ttl: 87600h", "ttl: 30m", "ca.ttl: must be at least 1h (line 8)"},
        ErrorCase{"prepare_at: 0.5", "prepare_at: 0.8", "ca.rotation: need 0 < prepare_at"},
        ErrorCase{"auto: false", "auto: no", "ca.rotation.auto: must be true or false"},
        ErrorCase{"  rotation:", "  rotation_: {}\n  rotation:", "ca.rotation_: unknown field"},
        ErrorCase{"default_ttl: 12h", "default_ttl: 1y", "issuance.default_ttl"},
        ErrorCase{"min_ttl: 5s", "min_ttl: 48h", "issuance"},
        ErrorCase{"backdate: 2m", "backdate: 2h", "issuance.backdate: must be at most 1h"},
        ErrorCase{"  join_tokens: {file: /etc/meshtls/join-tokens}", "  join_tokens: {}",
                  "authenticators.join_tokens.file: required (line 12)"},
        ErrorCase{"    jwks_file: /etc/meshtls/k8s-jwks.json\n", "",
                  "authenticators.kubernetes.jwks_file: required (line 13)"},
        ErrorCase{"    issuer: https://kubernetes.default.svc.cluster.local", "    issuer: \"\"",
                  "authenticators.kubernetes: issuer and audience"},
        ErrorCase{"max_token_lifetime: 1h", "max_token_lifetime: 5m",
                  "authenticators.kubernetes.max_token_lifetime: must be between 10m and 168h"},
        ErrorCase{"spiffe://example.org/ns/old/*", "spiffe://other.org/ns/old/*",
                  "deny: spiffe://other.org/ns/old/* is not in trust domain example.org (line 19)"},
        ErrorCase{"spiffe://example.org/ns/old/*", "spiffe://example.org/ns//old", "deny: "},
        ErrorCase{"max_watchers: 100", "max_watchers: 0",
                  "limits.max_watchers: must be a whole number from 1 to 1000000 (line 20)"},
        ErrorCase{"level: debug", "level: loud", "log.level"},
        ErrorCase{"format: json", "format: xml", "log.format"},
        ErrorCase{"log:", "colour: blue\nlog:", "colour: unknown field (line 21)"}));

}  // namespace
}  // namespace meshtls::certmgr

// The binaries' contract for bad input: exit code 2 and one clear line naming what is wrong.

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/test_ca.h"

namespace meshtls {
namespace {

struct RunResult {
  int exit_code;
  std::string output;
};

RunResult RunBinary(const testing::TempDir& dir, std::vector<std::string> argv) {
  auto p = *testing::Subprocess::Start(std::move(argv), dir.File("out.log"));
  std::optional<int> code = p->WaitForExit(absl::Seconds(20));
  return {code.value_or(-1), p->Log()};
}

void ExpectOneLineError(const RunResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 2) << r.output;
  std::vector<std::string> lines = absl::StrSplit(r.output, '\n', absl::SkipEmpty());
  EXPECT_EQ(lines.size(), 1u) << r.output;
  EXPECT_NE(r.output.find(fragment), std::string::npos) << r.output;
}

constexpr char kValid[] = R"(trust_domain: mesh.test
identity:
  certmgr: {address: 127.0.0.1:1, server_ca: CA}
outbound:
  - {name: o, listen: 127.0.0.1:0, connect: 127.0.0.1:1, expect: [spiffe://mesh.test/a]}
)";

std::string WithCa(const testing::TempDir& dir, std::string yaml) {
  const std::string ca = dir.Write("ca.pem", "x");
  yaml.replace(yaml.find("CA"), 2, ca);
  return yaml;
}

TEST(SidecarCliTest, ValidConfigChecks) {
  testing::TempDir dir;
  RunResult r = RunBinary(dir, {testing::BinaryPath("meshtls-sidecar"), "--config",
                                dir.Write("c.yaml", WithCa(dir, kValid)), "--check"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(SidecarCliTest, UnknownFieldBadAddressBadIdMissingFile) {
  testing::TempDir dir;
  const std::string base = WithCa(dir, kValid);
  const std::string bin = testing::BinaryPath("meshtls-sidecar");
  ExpectOneLineError(
      RunBinary(dir, {bin, "--config", dir.Write("a.yaml", base + "colour: blue\n")}),
      "colour: unknown field");
  std::string bad_address = base;
  bad_address.replace(bad_address.find("connect: 127.0.0.1:1"), 20, "connect: 127.0.0.1:x");
  ExpectOneLineError(RunBinary(dir, {bin, "--config", dir.Write("b.yaml", bad_address)}),
                     "outbound[0].connect");
  std::string bad_id = base;
  bad_id.replace(bad_id.find("spiffe://mesh.test/a"), 20, "spiffe://mesh.test//");
  ExpectOneLineError(RunBinary(dir, {bin, "--config", dir.Write("c.yaml", bad_id)}),
                     "outbound[0].expect");
  std::string missing = base;
  missing.replace(missing.find(dir.File("ca.pem")), dir.File("ca.pem").size(),
                  "/nonexistent/ca.pem");
  ExpectOneLineError(RunBinary(dir, {bin, "--config", dir.Write("d.yaml", missing)}),
                     "identity.certmgr.server_ca");
  ExpectOneLineError(RunBinary(dir, {bin, "--config", dir.File("nope.yaml")}), "--config");
  ExpectOneLineError(RunBinary(dir, {bin, "--bogus", "1"}), "unknown flag --bogus");
  const std::string valid = dir.Write("e.yaml", base);
  ExpectOneLineError(RunBinary(dir, {bin, "--config", valid, "--namespace", "default"}),
                     "--namespace and --service-account go together");
  ExpectOneLineError(
      RunBinary(dir, {bin, "--config", valid, "--namespace", "a/b", "--service-account", "web"}),
      "--namespace/--service-account");
  RunResult checked = RunBinary(
      dir, {bin, "--config", valid, "--namespace", "shop", "--service-account", "web", "--check"});
  EXPECT_EQ(checked.exit_code, 0) << checked.output;
}

TEST(CertmgrCliTest, BadConfigAndBadTokenRequest) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  ExpectOneLineError(
      RunBinary(
          dir,
          {bin, "--config",
           dir.Write("c.yaml",
                     "trust_domain: mesh.test\nca: {dir: /tmp/x}\nissuance: {default_ttl: 1y}\n")}),
      "issuance.default_ttl");
  ExpectOneLineError(RunBinary(dir, {bin, "token", "create", "--token-file", dir.File("t"),
                                     "--spiffe-id", "spiffe://mesh.test"}),
                     "--spiffe-id must name a workload");
  ExpectOneLineError(RunBinary(dir, {bin, "frobnicate"}), "unknown command");
}

TEST(CertmgrCliTest, TokenCreateDefaultsToADayAndSaysWhen) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const absl::Time before = absl::Now();
  RunResult r = RunBinary(dir, {bin, "token", "create", "--token-file", dir.File("t"),
                                "--spiffe-id", "spiffe://mesh.test/vm/db"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("expires "), std::string::npos) << r.output;
  // The file's line: "v1 <hash> <id> <expiry>", the expiry a day from now.
  std::vector<std::string> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(*base::ReadFileToString(dir.File("t"))), ' ');
  ASSERT_EQ(fields.size(), 4u);
  int64_t expiry = 0;
  ASSERT_TRUE(absl::SimpleAtoi(fields[3], &expiry));
  EXPECT_GE(expiry, absl::ToUnixSeconds(before + absl::Hours(24)));
  EXPECT_LE(expiry, absl::ToUnixSeconds(absl::Now() + absl::Hours(24)));
}

TEST(CertmgrCliTest, PolicyFieldsAreValidated) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const std::string head = "trust_domain: mesh.test\nca: {dir: /tmp/x}\n";
  ExpectOneLineError(
      RunBinary(dir, {bin, "--check", "--config",
                      dir.Write("a.yaml", head + "deny: [spiffe://other.test/a]\n")}),
      "deny");
  ExpectOneLineError(RunBinary(dir, {bin, "--check", "--config",
                                     dir.Write("b.yaml", head + "limits: {max_watchers: 0}\n")}),
                     "limits.max_watchers");
  ExpectOneLineError(
      RunBinary(dir, {bin, "--check", "--config",
                      dir.Write("c.yaml", head + "authenticators:\n  kubernetes: {issuer: i, "
                                                 "jwks_file: j, max_token_lifetime: 720h}\n")}),
      "max_token_lifetime");
  RunResult ok = RunBinary(
      dir, {bin, "--check", "--config",
            dir.Write("d.yaml", head + "deny: [spiffe://mesh.test/ns/old/*]\nlimits: "
                                       "{max_watchers: 50, max_watchers_per_address: 4}\n")});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST(CertmgrCliTest, CaInitMakesTheRootOnceForASecret) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  // The config names the directory of the cluster; --ca-dir points the command at a local one.
  const std::string config =
      dir.Write("c.yaml", "trust_domain: mesh.test\nca: {dir: /var/run/meshtls/ca}\n");
  RunResult first =
      RunBinary(dir, {bin, "ca", "init", "--config", config, "--ca-dir", dir.File("ca")});
  EXPECT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("meshtls root CA mesh.test"), std::string::npos) << first.output;
  const std::string root = *base::ReadFileToString(dir.File("ca/ca.pem"));
  // Again: the same root, not a new one.
  RunResult again =
      RunBinary(dir, {bin, "ca", "init", "--config", config, "--ca-dir", dir.File("ca")});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(*base::ReadFileToString(dir.File("ca/ca.pem")), root);
  ExpectOneLineError(RunBinary(dir, {bin, "ca", "init", "--config", config, "--ca-dir", ""}),
                     "--ca-dir must not be empty");
  ExpectOneLineError(
      RunBinary(dir, {bin, "ca", "init", "--config",
                      dir.Write("files.yaml",
                                "trust_domain: mesh.test\nca: {cert: a.pem, key: a.key}\n")}),
      "give --ca-dir");
}

TEST(CertmgrCliTest, VerifyExplainsTheVerdict) {
  testing::TempDir dir;
  const absl::Time now = absl::Now();
  testing::TestCa ca("mesh.test", now);
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const std::string bundle = dir.Write("bundle.pem", ca.RootPem());
  const std::string good = dir.Write(
      "good.pem", ca.Issue("spiffe://mesh.test/ns/a/sa/b", absl::Hours(1), now).ChainPem());
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {bin, "verify", "--bundle", bundle};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunBinary(dir, argv);
  };
  RunResult ok = run({"--chain", good});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("OK spiffe://mesh.test/ns/a/sa/b"), std::string::npos);

  RunResult wrong_id = run({"--chain", good, "--spiffe-id", "spiffe://mesh.test/ns/a/sa/c"});
  EXPECT_EQ(wrong_id.exit_code, 1);
  EXPECT_NE(wrong_id.output.find("not spiffe://mesh.test/ns/a/sa/c"), std::string::npos);

  RunResult later =
      run({"--chain", good, "--at", std::to_string(absl::ToUnixSeconds(now + absl::Hours(2)))});
  EXPECT_EQ(later.exit_code, 1);
  EXPECT_NE(later.output.find("certificate has expired"), std::string::npos) << later.output;

  pki::CertificateProfile p = testing::TestCa::LeafProfile(
      "spiffe://mesh.test/ns/a/sa/b", now - absl::Hours(1), now + absl::Hours(1));
  p.is_ca = true;
  p.common_name = "ca-leaf";
  const std::string ca_leaf = dir.Write("ca-leaf.pem", ca.IssueWith(p).ChainPem());
  RunResult svid = run({"--chain", ca_leaf});
  EXPECT_EQ(svid.exit_code, 1);
  EXPECT_NE(svid.output.find("CA certificate"), std::string::npos) << svid.output;
  RunResult path = run({"--chain", ca_leaf, "--profile", "path"});
  EXPECT_EQ(path.exit_code, 0) << "the path profile skips the X.509-SVID leaf rules: "
                               << path.output;

  ExpectOneLineError(run({"--chain", dir.File("missing.pem")}), "missing.pem");
}

}  // namespace
}  // namespace meshtls

// The binaries' contract for bad input: exit code 2 and one clear line naming what is wrong.

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
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

// CertmgrCommand is one certmgr subcommand with arguments that make it succeed (in the dir
// CertmgrCommandTable sets up) and the flags it owns; a flag of another command is misplaced.
struct CertmgrCommand {
  std::string name;                // as error messages name it: "ca rotate"
  std::vector<std::string> argv;   // words and valid flags, without the binary
  std::vector<std::string> flags;  // every flag the command accepts besides --help, --version
};

// The boolean flags; every other flag takes a value.
bool IsBoolFlag(const std::string& flag) { return flag == "--check" || flag == "--force"; }

std::vector<CertmgrCommand> CertmgrCommandTable(const testing::TempDir& dir) {
  const absl::Time now = absl::Now();
  testing::TestCa ca("mesh.test", now);
  const std::string config =
      dir.Write("table.yaml", "trust_domain: mesh.test\nca: {dir: " + dir.File("ca") + "}\n");
  const std::string bundle = dir.Write("table-bundle.pem", ca.RootPem());
  const std::string chain = dir.Write(
      "table-chain.pem", ca.Issue("spiffe://mesh.test/ns/a/sa/b", absl::Hours(1), now).ChainPem());
  return {
      {"serve",
       {"serve", "--check", "--config", config},
       {"--config", "--log-level", "--check", "--bound-ports-file"}},
      {"token create",
       {"token", "create", "--token-file", dir.File("tokens"), "--spiffe-id",
        "spiffe://mesh.test/vm/db"},
       {"--config", "--token-file", "--spiffe-id", "--ttl"}},
      {"ca init", {"ca", "init", "--config", config}, {"--config", "--ca-dir"}},
      {"ca rotate",
       {"ca", "rotate", "prepare", "--config", config},
       {"--config", "--ca-dir", "--force"}},
      {"verify",
       {"verify", "--bundle", bundle, "--chain", chain},
       {"--bundle", "--chain", "--purpose", "--at", "--spiffe-id", "--profile"}},
      {"inject",
       {"inject", "--config", config,
        dir.Write("table-pod.yaml", "kind: Pod\nspec: {containers: [{name: a}]}\n")},
       {"--config"}},
  };
}

bool Owns(const CertmgrCommand& command, const std::string& flag) {
  return std::find(command.flags.begin(), command.flags.end(), flag) != command.flags.end();
}

// Every flag of every other subcommand, added to a command line that succeeds without it, is
// refused with exit 2 and one line naming the flag, the subcommand and the flag's owners.
TEST(CertmgrCliTest, EachSubcommandRefusesTheOthersFlags) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const std::vector<CertmgrCommand> table = CertmgrCommandTable(dir);
  // Each line is valid as it stands (in table order: ca init makes the root ca rotate needs),
  // so a misplaced flag is the only thing wrong below.
  for (const CertmgrCommand& command : table) {
    std::vector<std::string> argv = {bin};
    argv.insert(argv.end(), command.argv.begin(), command.argv.end());
    RunResult r = RunBinary(dir, argv);
    ASSERT_EQ(r.exit_code, 0) << command.name << ": " << r.output;
  }
  std::vector<std::string> all_flags;
  for (const CertmgrCommand& command : table) {
    for (const std::string& flag : command.flags) {
      if (std::find(all_flags.begin(), all_flags.end(), flag) == all_flags.end()) {
        all_flags.push_back(flag);
      }
    }
  }
  int misplaced = 0;
  for (const CertmgrCommand& command : table) {
    for (const std::string& flag : all_flags) {
      if (Owns(command, flag)) {
        continue;
      }
      std::vector<std::string> owners;
      for (const CertmgrCommand& c : table) {
        if (Owns(c, flag)) {
          owners.push_back(c.name);
        }
      }
      std::vector<std::string> argv = {bin};
      argv.insert(argv.end(), command.argv.begin(), command.argv.end());
      argv.push_back(flag);
      if (!IsBoolFlag(flag)) {
        argv.push_back("v");
      }
      SCOPED_TRACE(absl::StrJoin(argv, " "));
      ExpectOneLineError(RunBinary(dir, argv), command.name + ": unknown flag " + flag +
                                                   " (it belongs to " +
                                                   absl::StrJoin(owners, ", ") + ")");
      ++misplaced;
    }
  }
  EXPECT_EQ(misplaced, 64);  // the table's size: a shrunken table would prove less
}

// Flags no subcommand knows, in every spelling, are refused by name before anything runs.
TEST(CertmgrCliTest, UnknownFlagsAreRefusedByName) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  for (const CertmgrCommand& command : CertmgrCommandTable(dir)) {
    for (const std::vector<std::string>& extra : std::vector<std::vector<std::string>>{
             {"--bogus"}, {"--bogus", "1"}, {"--bogus=1"}, {"--config-file", "x"}, {"-c"}}) {
      std::vector<std::string> argv = {bin};
      argv.insert(argv.end(), command.argv.begin(), command.argv.end());
      argv.insert(argv.end(), extra.begin(), extra.end());
      SCOPED_TRACE(absl::StrJoin(argv, " "));
      const std::string flag = extra[0].substr(0, extra[0].find('='));
      ExpectOneLineError(RunBinary(dir, argv), command.name + ": unknown flag " + flag);
    }
  }
  // Without a subcommand, the flags are serve's.
  ExpectOneLineError(RunBinary(dir, {bin, "--bogus"}), "serve: unknown flag --bogus");
  ExpectOneLineError(RunBinary(dir, {bin, "--force"}),
                     "serve: unknown flag --force (it belongs to ca rotate)");
  ExpectOneLineError(RunBinary(dir, {bin, "--check=yes"}), "--check takes no value");
  ExpectOneLineError(RunBinary(dir, {bin, "verify", "--bundle"}), "--bundle needs a value");
  ExpectOneLineError(RunBinary(dir, {bin, "ca", "rotate", "--config", "c.yaml"}),
                     "ca rotate needs prepare|activate|retire");
  ExpectOneLineError(RunBinary(dir, {bin, "verify", "extra"}),
                     "verify: unexpected argument \"extra\"");
}

// --help after a subcommand lists that subcommand's flags and no other's.
TEST(CertmgrCliTest, SubcommandHelpListsOnlyItsFlags) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const std::vector<CertmgrCommand> table = CertmgrCommandTable(dir);
  for (const CertmgrCommand& command : table) {
    std::vector<std::string> argv = {bin};
    std::vector<std::string> words = absl::StrSplit(command.name, ' ');
    argv.insert(argv.end(), words.begin(), words.end());
    argv.push_back("--help");
    RunResult r = RunBinary(dir, argv);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("usage: meshtls-certmgr " + command.name), std::string::npos)
        << r.output;
    for (const CertmgrCommand& other : table) {
      for (const std::string& flag : other.flags) {
        // A flag is listed as "  --name" at the start of its line.
        const bool listed = r.output.find("\n  " + flag + " ") != std::string::npos ||
                            r.output.find("\n  " + flag + "\n") != std::string::npos;
        EXPECT_EQ(listed, Owns(command, flag)) << command.name << " --help and " << flag << ":\n"
                                               << r.output;
      }
    }
  }
  // Without a subcommand, --help is the overview of every subcommand.
  RunResult overview = RunBinary(dir, {bin, "--help"});
  ASSERT_EQ(overview.exit_code, 0) << overview.output;
  EXPECT_NE(overview.output.find("meshtls-certmgr [serve]"), std::string::npos) << overview.output;
  for (const CertmgrCommand& command : table) {
    if (command.name != "serve") {
      EXPECT_NE(overview.output.find("meshtls-certmgr " + command.name), std::string::npos)
          << overview.output;
    }
  }
}

TEST(SidecarCliTest, UnknownFlagsAreRefusedByName) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-sidecar");
  const std::string config = dir.Write("c.yaml", WithCa(dir, kValid));
  RunResult valid = RunBinary(dir, {bin, "--config", config, "--check"});
  ASSERT_EQ(valid.exit_code, 0) << valid.output;
  // certmgr's flags, near misses, and spellings of flags the sidecar does not have.
  for (const std::string flag :
       {"--token-file", "--spiffe-id", "--ttl", "--ca-dir", "--force", "--bundle", "--chain",
        "--purpose", "--at", "--profile", "--bogus", "--config-file", "--log_level", "-c"}) {
    std::vector<std::string> argv = {bin, "--config", config, "--check", flag};
    if (flag != "--force" && flag != "-c") {
      argv.push_back("v");
    }
    SCOPED_TRACE(absl::StrJoin(argv, " "));
    ExpectOneLineError(RunBinary(dir, argv), "unknown flag " + flag);
  }
  ExpectOneLineError(RunBinary(dir, {bin, "--config", config, "--check=1"}),
                     "--check takes no value");
  ExpectOneLineError(RunBinary(dir, {bin, "--config", config, "serve"}),
                     "unexpected argument \"serve\"");
  RunResult help = RunBinary(dir, {bin, "--help"});
  EXPECT_EQ(help.exit_code, 0) << help.output;
  EXPECT_NE(help.output.find("\n  --service-account SA"), std::string::npos) << help.output;
}

// The sidecar's commands: running it (no command word) and init-network, each line valid as it
// stands, with the flags each accepts besides --help and --version.
std::vector<CertmgrCommand> SidecarCommandTable(const testing::TempDir& dir) {
  const std::string config = dir.Write("table.yaml", WithCa(dir, kValid));
  const std::string transparent = dir.Write(
      "table-transparent.yaml",
      WithCa(dir, std::string(kValid) + "transparent:\n  outbound: {rules: [{name: all, action: "
                                        "passthrough}]}\n"));
  return {
      {"meshtls-sidecar",
       {"--config", config, "--check"},
       {"--config", "--admin", "--log-level", "--log-format", "--workers", "--namespace",
        "--service-account", "--bound-ports-file", "--check"}},
      {"init-network",
       {"init-network", "--config", transparent, "--dry-run"},
       {"--config", "--dry-run", "--clean"}},
  };
}

// A flag of the other command is refused with exit 2 and one line naming it and its owner.
TEST(SidecarCliTest, EachCommandRefusesTheOthersFlags) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-sidecar");
  const std::vector<CertmgrCommand> table = SidecarCommandTable(dir);
  for (const CertmgrCommand& command : table) {
    std::vector<std::string> argv = {bin};
    argv.insert(argv.end(), command.argv.begin(), command.argv.end());
    RunResult r = RunBinary(dir, argv);
    ASSERT_EQ(r.exit_code, 0) << command.name << ": " << r.output;
  }
  int misplaced = 0;
  for (const CertmgrCommand& command : table) {
    for (const CertmgrCommand& other : table) {
      for (const std::string& flag : other.flags) {
        if (Owns(command, flag)) {
          continue;
        }
        std::vector<std::string> argv = {bin};
        argv.insert(argv.end(), command.argv.begin(), command.argv.end());
        argv.push_back(flag);
        const bool boolean = flag == "--check" || flag == "--dry-run" || flag == "--clean";
        if (!boolean) {
          argv.push_back("v");
        }
        SCOPED_TRACE(absl::StrJoin(argv, " "));
        const std::string prefix = command.name == "meshtls-sidecar" ? "" : command.name + ": ";
        ExpectOneLineError(RunBinary(dir, argv),
                           prefix + "unknown flag " + flag + " (it belongs to " + other.name + ")");
        ++misplaced;
      }
    }
  }
  EXPECT_EQ(misplaced, 10);  // the table's size: a shrunken table would prove less
  RunResult help = RunBinary(dir, {bin, "init-network", "--help"});
  ASSERT_EQ(help.exit_code, 0) << help.output;
  EXPECT_NE(help.output.find("usage: meshtls-sidecar init-network --config FILE"),
            std::string::npos)
      << help.output;
  EXPECT_NE(help.output.find("\n  --dry-run"), std::string::npos) << help.output;
  EXPECT_EQ(help.output.find("--admin"), std::string::npos) << help.output;
}

}  // namespace
// inject: manifests from files or stdin to stdout; nothing written when a template cannot be
// meshed (exit 1, naming the document, kind and name); a file that is not YAML is named.
TEST(CertmgrCliTest, InjectWritesEverythingOrNothing) {
  testing::TempDir dir;
  const std::string bin = testing::BinaryPath("meshtls-certmgr");
  const std::string good = dir.Write("good.yaml",
                                     "kind: Deployment\nmetadata: {name: web}\n"
                                     "spec: {template: {spec: {containers: [{name: a}]}}}\n---\n"
                                     "kind: Service\nmetadata: {name: web}\n");
  const std::string host =
      dir.Write("host.yaml",
                "kind: Service\n---\nkind: DaemonSet\nmetadata: {name: agent}\n"
                "spec: {template: {spec: {hostNetwork: true, containers: [{name: a}]}}}\n");
  const std::string broken = dir.Write("broken.yaml", "kind: [Pod\n");

  auto p = *testing::Subprocess::Start(
      {"/bin/sh", "-c", bin + " inject < " + good + " > " + dir.File("out.yaml")},
      dir.File("stdin.log"));
  ASSERT_EQ(p->WaitForExit(absl::Seconds(20)), 0) << p->Log();
  const std::string out = *base::ReadFileToString(dir.File("out.yaml"));
  EXPECT_NE(out.find("name: meshtls-sidecar"), std::string::npos) << out;
  EXPECT_NE(out.find("---\nkind: Service"), std::string::npos) << out;
  EXPECT_NE(p->Log().find("stdin: 1 pod templates injected, 0 already injected, 0 opted out; 1 "
                          "other objects as they were"),
            std::string::npos)
      << p->Log();

  RunResult refused = RunBinary(dir, {bin, "inject", good, host});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.output.find(host + ": document 2 (line 3): DaemonSet agent: hostNetwork pods "
                                       "cannot be meshed"),
            std::string::npos)
      << refused.output;
  EXPECT_EQ(refused.output.find("meshtls-sidecar"), std::string::npos) << "wrote a part";

  RunResult not_yaml = RunBinary(dir, {bin, "inject", broken});
  EXPECT_EQ(not_yaml.exit_code, 1);
  EXPECT_NE(not_yaml.output.find(broken + ": line 2: did not find expected"), std::string::npos)
      << not_yaml.output;
  RunResult missing = RunBinary(dir, {bin, "inject", dir.File("none.yaml")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("none.yaml"), std::string::npos) << missing.output;
}

}  // namespace meshtls

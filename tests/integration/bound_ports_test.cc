// --bound-ports-file on both binaries: every listener configured with port 0 is reported with
// the port the kernel gave it, before readiness, and a file that cannot be written stops the
// start with an error naming the flag.

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls {
namespace {

using ::testing::Contains;
using testing::IsOk;

// Names lists the listener names of a bound-ports file, in file order.
std::vector<std::string> Names(const std::string& path) {
  std::vector<std::string> names;
  absl::StatusOr<std::string> text = base::ReadFileToString(path);
  EXPECT_THAT(text, IsOk());
  for (absl::string_view line : absl::StrSplit(text.value_or(""), '\n', absl::SkipEmpty())) {
    names.emplace_back(line.substr(0, line.find('=')));
  }
  return names;
}

struct RunResult {
  int exit_code;
  std::string output;
};

RunResult RunBinary(const testing::TempDir& dir, std::vector<std::string> argv) {
  absl::StatusOr<std::unique_ptr<testing::Subprocess>> p =
      testing::Subprocess::Start(std::move(argv), dir.File("run.log"));
  EXPECT_THAT(p, IsOk());
  if (!p.ok()) {
    return {-1, ""};
  }
  return {(*p)->WaitForExit(absl::Seconds(20)).value_or(-1), (*p)->Log()};
}

class BoundPortsTest : public ::testing::Test {
 protected:
  // SidecarYaml: a certmgr-mode sidecar whose certmgr is unreachable (so it never becomes
  // ready), with inbound "in" and outbound "a" and "b", all on port 0.
  std::string SidecarYaml() {
    return absl::StrCat(
        "trust_domain: mesh.test\nidentity:\n  certmgr:\n    address: 127.0.0.1:", no_certmgr_port_,
        "\n    server_ca: ", dir_.Write("ca.pem", ca_.RootPem()),
        "\n    token_file: ", dir_.Write("token", "mjt_unused", 0600),
        "\ninbound:\n  - name: in\n    listen: 127.0.0.1:0\n    forward: 127.0.0.1:", app_.port(),
        "\n    allow: [spiffe://mesh.test/ns/default/sa/frontend]\noutbound:\n"
        "  - name: a\n    listen: 127.0.0.1:0\n    connect: 127.0.0.1:9\n"
        "    expect: [spiffe://mesh.test/ns/default/sa/backend]\n"
        "  - name: b\n    listen: 127.0.0.1:0\n    connect: 127.0.0.1:9\n"
        "    expect: [spiffe://mesh.test/ns/default/sa/backend]\n");
  }

  testing::TempDir dir_;
  testing::TestCa ca_{"mesh.test"};
  testing::EchoServer app_;
  uint16_t no_certmgr_port_ = 0;
  base::UniqueFd no_certmgr_ = testing::ReserveLoopbackPort(&no_certmgr_port_);
};

TEST_F(BoundPortsTest, SidecarReportsEveryListenerBeforeItIsReady) {
  std::unique_ptr<testing::SidecarProcess> sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(sidecar,
                             testing::SidecarProcess::Start(dir_, "sidecar", SidecarYaml()));
  EXPECT_EQ(Names(dir_.File("sidecar.ports")),
            (std::vector<std::string>{"admin", "inbound.in", "outbound.a", "outbound.b"}));
  const std::vector<uint16_t> listening = testing::ListeningPorts(sidecar->process().pid());
  std::set<uint16_t> distinct;
  for (const char* name : {"admin", "inbound.in", "outbound.a", "outbound.b"}) {
    const uint16_t port =
        name == std::string("admin") ? sidecar->admin_port() : sidecar->port(name);
    ASSERT_NE(port, 0) << name;
    distinct.insert(port);
    // The sidecar itself listens there (connecting would not tell: without credentials it
    // accepts and resets at once, and another test's process may hold a port).
    EXPECT_THAT(listening, Contains(port)) << name << " is not listening on " << port;
  }
  EXPECT_EQ(distinct.size(), 4u);
  // Written before readiness: this sidecar has no certificate and never becomes ready.
  absl::StatusOr<testing::HttpResult> ready = testing::HttpGet(sidecar->admin_port(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 503) << ready->body;
}

TEST_F(BoundPortsTest, CertmgrReportsGrpcAndAdmin) {
  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, testing::CertmgrProcess::Start(dir_, "mesh.test"));
  EXPECT_EQ(Names(dir_.File("certmgr.1.ports")), (std::vector<std::string>{"grpc", "admin"}));
  EXPECT_NE(certmgr->grpc_port(), certmgr->admin_port());
  EXPECT_THAT(testing::TcpConnect(certmgr->grpc_port()), IsOk());
  absl::StatusOr<testing::HttpResult> ready = testing::HttpGet(certmgr->admin_port(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 200);
}

TEST_F(BoundPortsTest, AFileThatCannotBeWrittenStopsTheStartNamingTheFlag) {
  const std::string unwritable = dir_.File("no-such-dir/ports");
  RunResult sidecar = RunBinary(
      dir_, {testing::BinaryPath("meshtls-sidecar"), "--config",
             dir_.Write("sidecar.yaml", SidecarYaml()), "--bound-ports-file", unwritable});
  EXPECT_EQ(sidecar.exit_code, 1) << sidecar.output;
  EXPECT_NE(sidecar.output.find("--bound-ports-file"), std::string::npos) << sidecar.output;

  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, testing::CertmgrProcess::Start(dir_, "mesh.test"));
  RunResult second = RunBinary(dir_, {testing::BinaryPath("meshtls-certmgr"), "serve", "--config",
                                      certmgr->config_path(), "--bound-ports-file", unwritable});
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_NE(second.output.find("--bound-ports-file"), std::string::npos) << second.output;
}

TEST_F(BoundPortsTest, AnEmptyPathIsAUsageError) {
  const std::string config = dir_.Write("sidecar.yaml", SidecarYaml());
  for (const char* binary : {"meshtls-sidecar", "meshtls-certmgr"}) {
    RunResult r =
        RunBinary(dir_, {testing::BinaryPath(binary), "--config", config, "--bound-ports-file="});
    EXPECT_EQ(r.exit_code, 2) << binary << ": " << r.output;
    EXPECT_NE(r.output.find("--bound-ports-file needs a path"), std::string::npos)
        << binary << ": " << r.output;
    r = RunBinary(dir_, {testing::BinaryPath(binary), "--config", config, "--bound-ports-file"});
    EXPECT_EQ(r.exit_code, 2) << binary << ": " << r.output;
    EXPECT_NE(r.output.find("--bound-ports-file needs a value"), std::string::npos)
        << binary << ": " << r.output;
  }
}

}  // namespace
}  // namespace meshtls

// The pooled transport end to end: real meshtls-certmgr and meshtls-sidecar processes on
// loopback, a frontend sidecar whose outbound listener has `transport: pooled`, a backend
// sidecar whose inbound listener takes the pooled connection (ALPN h2), and an echo app.

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::Handshakes;
using testing::IsOk;
using testing::SidecarProcess;

constexpr char kTd[] = "mesh.test";
const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

std::string Streams(const char* direction, const char* result) {
  return absl::StrCat("meshtls_pooled_streams_total{direction=\"", direction, "\",result=\"",
                      result, "\"}");
}

class PooledTest : public ::testing::Test {
 protected:
  void StartMesh(const std::string& sidecar_extra = "") {
    MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd, ""));
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_, StartSidecar("backend", kBackend,
                               absl::StrCat("inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                            "\n    forward: 127.0.0.1:", app_.port(),
                                            "\n    allow: [", kFrontend, "]\n", sidecar_extra)));
    backend_port_ = backend_->port("inbound.http");
    MESHTLS_ASSERT_OK_AND_MOVE(
        frontend_,
        StartSidecar("frontend", kFrontend,
                     absl::StrCat("outbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                                  "\n    connect: 127.0.0.1:", backend_port_, "\n    expect: [",
                                  kBackend, "]\n    transport: pooled\n", sidecar_extra)));
    frontend_port_ = frontend_->port("outbound.backend");
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  absl::StatusOr<std::unique_ptr<SidecarProcess>> StartSidecar(const std::string& name,
                                                               const std::string& id,
                                                               const std::string& listeners) {
    return SidecarProcess::Start(
        dir_, name,
        absl::StrCat("trust_domain: ", kTd, "\n",
                     certmgr_->SidecarIdentityYaml(certmgr_->TokenFile(id, name + ".token")),
                     "workers: 1\n", listeners));
  }

  // RoundTrip opens a new app connection, sends `payload` and reads the echo.
  void RoundTrip(const std::string& payload) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
    ASSERT_THAT(conn, IsOk());
    ASSERT_THAT(testing::SendAll(conn->get(), payload), IsOk());
    absl::StatusOr<std::string> echoed =
        testing::RecvExactly(conn->get(), payload.size(), absl::Seconds(10));
    ASSERT_THAT(echoed, IsOk()) << Logs();
    EXPECT_EQ(*echoed, payload);
  }

  std::string Logs() {
    auto metrics = [](SidecarProcess& p) {
      absl::StatusOr<testing::HttpResult> r = testing::HttpGet(p.admin_port(), "/metrics");
      std::string out;
      if (r.ok()) {
        for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
          if (!line.empty() && line[0] != '#' && !absl::EndsWith(line, " 0") &&
              !absl::StrContains(line, "_bucket")) {
            absl::StrAppend(&out, line, "\n");
          }
        }
      }
      return out;
    };
    return absl::StrCat("frontend:\n", frontend_->process().Log(), metrics(*frontend_),
                        "\nbackend:\n", backend_->process().Log(), metrics(*backend_));
  }

  testing::TempDir dir_;
  testing::EchoServer app_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
  uint16_t backend_port_ = 0;
  uint16_t frontend_port_ = 0;
};

TEST_F(PooledTest, ManyAppConnectionsShareOneHandshake) {
  StartMesh();
  for (int i = 0; i < 200; ++i) {
    ASSERT_NO_FATAL_FAILURE(RoundTrip(absl::StrCat("hello ", i)));
  }
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), 1);
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 1);
  EXPECT_EQ(frontend_->Metric(Streams("outbound", "success")), 200);
  EXPECT_EQ(backend_->Metric(Streams("inbound", "success")), 200);
  EXPECT_EQ(frontend_->Metric(R"(meshtls_pooled_connections{direction="outbound"})"), 1);
  EXPECT_EQ(backend_->Metric(R"(meshtls_pooled_connections{direction="inbound"})"), 1);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return backend_->Metric(R"(meshtls_pooled_streams_active{direction="inbound"})") == 0 &&
               frontend_->Metric(R"(meshtls_pooled_streams_active{direction="outbound"})") == 0;
      },
      absl::Seconds(10)));
}

TEST_F(PooledTest, EightMiBBothWaysAndHalfClose) {
  StartMesh();
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  const std::string payload = testing::RandomBytes(8 << 20);
  absl::Status sent;
  std::thread writer([&] {
    sent = testing::SendAll(conn->get(), payload);
    ::shutdown(conn->get(), SHUT_WR);  // half-close: END_STREAM, then the app's FIN back
  });
  absl::StatusOr<std::string> echoed =
      testing::RecvExactly(conn->get(), payload.size(), absl::Seconds(60));
  writer.join();
  ASSERT_THAT(sent, IsOk());
  ASSERT_THAT(echoed, IsOk());
  EXPECT_TRUE(*echoed == payload) << "8 MiB came back different";
  // The echo app closes when it sees our FIN: the FIN comes back through both sidecars.
  absl::StatusOr<std::string> rest = testing::RecvUntilEof(conn->get(), absl::Seconds(10), 16);
  ASSERT_THAT(rest, IsOk());
  EXPECT_EQ(*rest, "");
}

}  // namespace
}  // namespace meshtls

// Peer verification on both listeners, with the sidecar in files mode and every peer
// certificate minted at test time by TestCa: each rejection is provoked for real, counted under
// its own result, and never lets a byte through.

#include <gtest/gtest.h>
#include <signal.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"
#include "tests/testing/tls_peer.h"

namespace meshtls {
namespace {

using testing::Handshakes;
using testing::IsOk;
using testing::SidecarProcess;
using testing::TestCa;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

class PeerVerificationTest : public ::testing::Test {
 protected:
  // FilesIdentity writes `leaf` and the CA root and returns the identity.files section.
  std::string FilesIdentity(const std::string& name, const testing::IssuedLeaf& leaf) {
    return absl::StrCat("trust_domain: mesh.test\nidentity:\n  files:\n    cert: ",
                        dir_.Write(name + ".crt", leaf.ChainPem()),
                        "\n    key: ", dir_.Write(name + ".key", leaf.KeyPem(), 0600),
                        "\n    trust_bundle: ", dir_.Write("bundle.pem", ca_.RootPem()), "\n");
  }

  // StartBackend runs an inbound listener in front of the echo app, allowing the frontend.
  void StartBackend(const std::string& extra = "") {
    port_ = testing::PickFreePort();
    backend_ = *SidecarProcess::Start(
        dir_, "backend",
        absl::StrCat(FilesIdentity("backend", ca_.Issue(kBackend)),
                     "inbound:\n  - name: http\n    listen: 127.0.0.1:", port_,
                     "\n    forward: 127.0.0.1:", app_.port(), "\n    allow: [", kFrontend, "]\n",
                     extra));
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
  }

  // ExpectRefused connects with `identity` and expects the connection to fail and be counted.
  void ExpectRefused(const testing::TlsIdentity& identity, const std::string& result) {
    absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
        testing::TlsClient::Connect(port_, identity, ca_.RootPem());
    if (client.ok()) {
      // TLS 1.3: the client finishes before the server has judged its certificate; the
      // verdict arrives as an alert on the first read.
      (void)(*client)->Write("must not reach the app");
      EXPECT_FALSE((*client)->Read(100).ok());
    }
    EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", result), 1))
        << result << " not counted; log:\n"
        << backend_->process().Log();
    EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 0);
    EXPECT_EQ(app_.connections(), 0);
    EXPECT_EQ(app_.bytes_received(), 0u);
  }

  testing::TempDir dir_;
  absl::Time now_ = absl::Now();
  TestCa ca_{"mesh.test", now_};
  testing::EchoServer app_;
  std::unique_ptr<SidecarProcess> backend_;
  uint16_t port_ = 0;
};

testing::TlsIdentity AsIdentity(const testing::IssuedLeaf& leaf) {
  return {leaf.ChainPem(), leaf.KeyPem()};
}

TEST_F(PeerVerificationTest, AllowedClientReachesTheApp) {
  StartBackend();
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  ASSERT_THAT(client, IsOk());
  ASSERT_THAT((*client)->Write("ping"), IsOk());
  EXPECT_EQ(*(*client)->Read(4), "ping");
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 1);
  EXPECT_EQ(app_.connections(), 1);
}

TEST_F(PeerVerificationTest, NoClientCertificate) {
  StartBackend();
  ExpectRefused({}, "no_peer_certificate");
}

TEST_F(PeerVerificationTest, CertificateFromAnotherCa) {
  StartBackend();
  TestCa other("mesh.test", now_);
  ExpectRefused(AsIdentity(other.Issue(kFrontend)), "unknown_authority");
}

TEST_F(PeerVerificationTest, ExpiredClientCertificate) {
  StartBackend();
  ExpectRefused(AsIdentity(ca_.IssueWith(
                    TestCa::LeafProfile(kFrontend, now_ - absl::Hours(2), now_ - absl::Hours(1)))),
                "certificate_expired");
}

TEST_F(PeerVerificationTest, NotYetValidClientCertificate) {
  StartBackend();
  ExpectRefused(AsIdentity(ca_.IssueWith(
                    TestCa::LeafProfile(kFrontend, now_ + absl::Hours(1), now_ + absl::Hours(2)))),
                "certificate_not_yet_valid");
}

TEST_F(PeerVerificationTest, CaTrueLeafIsABadCertificate) {
  StartBackend();
  pki::CertificateProfile p =
      TestCa::LeafProfile(kFrontend, now_ - absl::Hours(1), now_ + absl::Hours(1));
  p.is_ca = true;
  p.common_name = "sneaky";
  ExpectRefused(AsIdentity(ca_.IssueWith(p)), "bad_certificate");
}

TEST_F(PeerVerificationTest, TwoUriSansIsABadCertificate) {
  StartBackend();
  pki::CertificateProfile p =
      TestCa::LeafProfile(kFrontend, now_ - absl::Hours(1), now_ + absl::Hours(1));
  p.uri_sans.push_back("spiffe://mesh.test/ns/kube-system/sa/admin");
  ExpectRefused(AsIdentity(ca_.IssueWith(p)), "bad_certificate");
}

TEST_F(PeerVerificationTest, ValidButNotAllowedIdentity) {
  StartBackend();
  ExpectRefused(AsIdentity(ca_.Issue("spiffe://mesh.test/ns/default/sa/intruder")),
                "identity_denied");
}

TEST_F(PeerVerificationTest, Tls12OnlyClient) {
  StartBackend();
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client = testing::TlsClient::Connect(
      port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem(), TLS1_2_VERSION);
  EXPECT_FALSE(client.ok());
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "protocol_version"), 1));
  EXPECT_EQ(app_.connections(), 0);
}

TEST_F(PeerVerificationTest, PlaintextOnTheTlsPort) {
  StartBackend();
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  // Closed promptly (OpenSSL may first send an alert, so bytes are allowed here).
  EXPECT_FALSE(
      absl::IsDeadlineExceeded(testing::RecvUntilEof(conn->get(), absl::Seconds(5)).status()))
      << "the plaintext connection must be closed";
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "not_tls"), 1))
      << backend_->process().Log();
  EXPECT_EQ(app_.connections(), 0);
}

TEST_F(PeerVerificationTest, SilentClientTimesOutWithoutBlockingOthers) {
  StartBackend("limits: {handshake_timeout: 1s}\n");
  absl::StatusOr<base::UniqueFd> silent = testing::TcpConnect(port_);
  ASSERT_THAT(silent, IsOk());
  // While the silent peer waits, a good client completes at once.
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  ASSERT_THAT(client, IsOk());
  ASSERT_THAT((*client)->Write("hi"), IsOk());
  EXPECT_EQ(*(*client)->Read(2), "hi");
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "timeout"), 1, absl::Seconds(5)));
  EXPECT_THAT(testing::ClosedWithoutData(silent->get(), absl::Seconds(5)), IsOk())
      << "the silent connection must be closed";
}

TEST_F(PeerVerificationTest, IdleConnectionIsClosedGracefully) {
  StartBackend("limits: {idle_timeout: 1s}\n");
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  ASSERT_THAT(client, IsOk());
  ASSERT_THAT((*client)->Write("x"), IsOk());
  EXPECT_EQ(*(*client)->Read(1), "x");
  // Then silence: the sidecar closes with close_notify (not a reset) after about 1 s.
  const absl::Time start = absl::Now();
  EXPECT_THAT((*client)->Read(1, absl::Seconds(10)),
              testing::StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_TRUE(testing::WaitFor(
      [&] { return backend_->Metric(R"(meshtls_connections_active{direction="inbound"})") == 0; },
      absl::Seconds(5)));
}

TEST_F(PeerVerificationTest, MaxConnectionsRefusesAndCounts) {
  StartBackend("limits: {max_connections: 1}\n");
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> first =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT((*first)->Write("1"), IsOk());
  EXPECT_EQ(*(*first)->Read(1), "1");
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> second =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  EXPECT_FALSE(second.ok());
  EXPECT_TRUE(backend_->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="inbound",reason="max_connections"})", 1));
  // The first connection is untouched.
  ASSERT_THAT((*first)->Write("2"), IsOk());
  EXPECT_EQ(*(*first)->Read(1), "2");
}

TEST_F(PeerVerificationTest, SigtermDrainsLiveConnectionsThenExitsZero) {
  StartBackend();
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  ASSERT_THAT(client, IsOk());
  backend_->process().Signal(SIGTERM);
  // Readiness drops at once; new connections are no longer accepted.
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        absl::StatusOr<testing::HttpResult> r =
            testing::HttpGet(backend_->admin_port(), "/readyz", absl::Seconds(1));
        return r.ok() && r->status == 503 && r->body.find("draining") != std::string::npos;
      },
      absl::Seconds(5)));
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::TcpConnect(port_, absl::Seconds(1)).ok(); },
                               absl::Seconds(5)));
  // The live connection keeps working while draining.
  ASSERT_THAT((*client)->Write("still here"), IsOk());
  EXPECT_EQ(*(*client)->Read(10), "still here");
  EXPECT_FALSE(backend_->process().WaitForExit(absl::Milliseconds(200)).has_value());
  client->reset();  // the last connection ends: the drain completes
  EXPECT_EQ(backend_->process().WaitForExit(absl::Seconds(10)), 0) << backend_->process().Log();
}

class OutboundVerificationTest : public PeerVerificationTest {
 protected:
  // StartFrontend runs an outbound listener to `upstream_port`, expecting the backend identity.
  void StartFrontend(uint16_t upstream_port) {
    port_ = testing::PickFreePort();
    frontend_ = *SidecarProcess::Start(
        dir_, "frontend",
        absl::StrCat(FilesIdentity("frontend", ca_.Issue(kFrontend)),
                     "outbound:\n  - name: backend\n    listen: 127.0.0.1:", port_,
                     "\n    connect: 127.0.0.1:", upstream_port, "\n    expect: [", kBackend,
                     "]\n"));
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  // ExpectNothingSent sends app bytes through the outbound listener and checks that the
  // upstream server never received any, and that the refusal was counted as `result`.
  void ExpectNothingSent(testing::TlsServer& server, const std::string& result) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port_);
    ASSERT_THAT(conn, IsOk());
    (void)testing::SendAll(conn->get(), "a secret for the backend only");
    EXPECT_THAT(testing::ClosedWithoutData(conn->get()), IsOk());
    EXPECT_TRUE(frontend_->WaitForMetric(Handshakes("outbound", result), 1))
        << frontend_->process().Log();
    EXPECT_EQ(server.bytes_received(), 0u) << "plaintext reached a server that failed verification";
    EXPECT_EQ(server.handshakes(), 0);
  }

  std::unique_ptr<SidecarProcess> frontend_;
};

TEST_F(OutboundVerificationTest, ServerWithTheWrongIdentity) {
  testing::TlsServer impostor(AsIdentity(ca_.Issue("spiffe://mesh.test/ns/default/sa/impostor")));
  StartFrontend(impostor.port());
  ExpectNothingSent(impostor, "identity_denied");
  EXPECT_EQ(
      frontend_->Metric(
          R"(meshtls_authz_decisions_total{direction="outbound",decision="deny",listener="backend"})"),
      1);
}

TEST_F(OutboundVerificationTest, ServerFromAnotherCa) {
  TestCa other("mesh.test", now_);
  testing::TlsServer impostor(AsIdentity(other.Issue(kBackend)));
  StartFrontend(impostor.port());
  ExpectNothingSent(impostor, "unknown_authority");
}

TEST_F(OutboundVerificationTest, ServerWithTheRightIdentityGetsTheBytes) {
  testing::TlsServer backend(AsIdentity(ca_.Issue(kBackend)));
  StartFrontend(backend.port());
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "hello backend"), IsOk());
  EXPECT_TRUE(testing::WaitFor([&] { return backend.bytes_received() == 13; }, absl::Seconds(10)));
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), 1);
}

TEST_F(OutboundVerificationTest, UnreachableUpstreamIsCountedAndTheAppConnectionClosed) {
  StartFrontend(testing::PickFreePort());  // nothing listens there
  // The app's connection is reset at once (sometimes before connect() even returns).
  EXPECT_THAT(testing::RefusedWithoutData(port_), IsOk());
  EXPECT_TRUE(frontend_->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="upstream_unavailable"})",
      1));
}

}  // namespace
}  // namespace meshtls

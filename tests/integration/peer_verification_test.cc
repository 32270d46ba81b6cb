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

using testing::AsIdentity;
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
    return testing::FilesConfigHead(dir_, name, leaf, dir_.Write("bundle.pem", ca_.RootPem()));
  }

  // StartBackend runs an inbound listener in front of the echo app, allowing the frontend.
  // Its port is port_.
  void StartBackend(const std::string& extra = "") {
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_,
        SidecarProcess::Start(dir_, "backend",
                              absl::StrCat(FilesIdentity("backend", ca_.Issue(kBackend)),
                                           "inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                           "\n    forward: 127.0.0.1:", app_.port(),
                                           "\n    allow: [", kFrontend, "]\n", extra)));
    port_ = backend_->port("inbound.http");
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

  // FirstTicket makes a first, full connection with `identity` through the inbound listener
  // and returns the ticket it brought (null after recording a failure). That connection ends
  // without close_notify before the ticket is used, as when a client is reset: the ticket must
  // resume all the same.
  sidecar::SslSessionPtr FirstTicket(const testing::TlsIdentity& identity) {
    std::unique_ptr<testing::TlsClient> first = EchoThrough(port_, identity, "one");
    if (first == nullptr) {
      return nullptr;
    }
    EXPECT_FALSE(first->Resumed());
    sidecar::SslSessionPtr ticket = first->Session();
    if (ticket == nullptr || SSL_SESSION_is_resumable(ticket.get()) != 1) {
      ADD_FAILURE() << "no ticket from the sidecar";
      return nullptr;
    }
    return ticket;
  }

  // ExpectRefusedWithoutResuming offers `ticket` to `port` and expects no resumption and no
  // byte through (TLS 1.3: a refused client learns it on its first read). Callers check the
  // failure counter.
  void ExpectRefusedWithoutResuming(uint16_t port, const testing::TlsIdentity& identity,
                                    const std::string& trusted_pem, SSL_SESSION* ticket) {
    auto client = testing::TlsClient::Connect(port, identity, trusted_pem, TLS1_3_VERSION,
                                              absl::Seconds(5), ticket);
    if (client.ok()) {
      EXPECT_FALSE((*client)->Resumed());
      (void)(*client)->Write("must not reach the app");
      EXPECT_FALSE((*client)->Read(100).ok());
    }
  }

  // EchoThrough connects to `port` with `identity` (offering `resume` when given), sends
  // `payload` and checks that the echo app sent it back. Returns the open client, or null
  // after recording a failure.
  std::unique_ptr<testing::TlsClient> EchoThrough(uint16_t port,
                                                  const testing::TlsIdentity& identity,
                                                  const std::string& payload,
                                                  SSL_SESSION* resume = nullptr) {
    absl::StatusOr<std::unique_ptr<testing::TlsClient>> client = testing::TlsClient::Connect(
        port, identity, ca_.RootPem(), TLS1_3_VERSION, absl::Seconds(5), resume);
    if (!client.ok()) {
      ADD_FAILURE() << "connect: " << client.status();
      return nullptr;
    }
    absl::StatusOr<std::string> echo = absl::InternalError("not sent");
    if (absl::Status s = (*client)->Write(payload); s.ok()) {
      echo = (*client)->Read(payload.size());
    }
    if (!echo.ok() || *echo != payload) {
      ADD_FAILURE() << "no echo of " << payload;
      return nullptr;
    }
    return *std::move(client);
  }

  testing::TempDir dir_;
  absl::Time now_ = absl::Now();
  TestCa ca_{"mesh.test", now_};
  testing::EchoServer app_;
  std::unique_ptr<SidecarProcess> backend_;
  uint16_t port_ = 0;
};

TEST_F(PeerVerificationTest, AllowedClientReachesTheApp) {
  StartBackend();
  std::unique_ptr<testing::TlsClient> client =
      EchoThrough(port_, AsIdentity(ca_.Issue(kFrontend)), "ping");
  ASSERT_NE(client, nullptr);
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
  std::unique_ptr<testing::TlsClient> client =
      EchoThrough(port_, AsIdentity(ca_.Issue(kFrontend)), "hi");
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "timeout"), 1, absl::Seconds(5)));
  EXPECT_THAT(testing::ClosedWithoutData(silent->get(), absl::Seconds(5)), IsOk())
      << "the silent connection must be closed";
}

TEST_F(PeerVerificationTest, IdleConnectionIsClosedGracefully) {
  StartBackend("limits: {idle_timeout: 1s}\n");
  std::unique_ptr<testing::TlsClient> client =
      EchoThrough(port_, AsIdentity(ca_.Issue(kFrontend)), "x");
  ASSERT_NE(client, nullptr);
  // Then silence: the sidecar closes with close_notify (not a reset) after about 1 s.
  const absl::Time start = absl::Now();
  EXPECT_THAT(client->Read(1, absl::Seconds(10)), testing::StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_TRUE(testing::WaitFor(
      [&] { return backend_->Metric(R"(meshtls_connections_active{direction="inbound"})") == 0; },
      absl::Seconds(5)));
}

TEST_F(PeerVerificationTest, MaxConnectionsRefusesAndCounts) {
  StartBackend("limits: {max_connections: 1}\n");
  std::unique_ptr<testing::TlsClient> first =
      EchoThrough(port_, AsIdentity(ca_.Issue(kFrontend)), "1");
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> second =
      testing::TlsClient::Connect(port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
  EXPECT_FALSE(second.ok());
  EXPECT_TRUE(backend_->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="inbound",reason="max_connections"})", 1));
  // The first connection is untouched.
  ASSERT_THAT(first->Write("2"), IsOk());
  EXPECT_EQ(*first->Read(1), "2");
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

// Resumption: a ticket carries the identity verified in the full handshake. Resuming on the
// listener that allowed it skips certificate checks; presenting it to a listener whose `allow`
// does not include that identity falls back to a full handshake, which refuses the peer.
TEST_F(PeerVerificationTest, ResumedSessionIsAuthorizedAgainstTheListenerItResumesOn) {
  ASSERT_NO_FATAL_FAILURE(StartBackend(absl::StrCat(
      "  - name: ops\n    listen: 127.0.0.1:0", "\n    forward: 127.0.0.1:", app_.port(),
      "\n    allow: [spiffe://mesh.test/ns/ops/sa/admin]\n")));
  const uint16_t ops_port = backend_->port("inbound.ops");
  const testing::TlsIdentity frontend = AsIdentity(ca_.Issue(kFrontend));
  const std::string resumed = testing::HandshakeCount("inbound", true);

  sidecar::SslSessionPtr ticket = FirstTicket(frontend);
  ASSERT_NE(ticket, nullptr);

  std::unique_ptr<testing::TlsClient> second = EchoThrough(port_, frontend, "two", ticket.get());
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->Resumed());
  EXPECT_EQ(backend_->Metric(resumed), 1);

  // The ticket the resumed connection brought, on the ops listener: not resumed, and the full
  // handshake refuses the peer.
  sidecar::SslSessionPtr next_ticket = second->Session();
  ASSERT_EQ(SSL_SESSION_is_resumable(next_ticket.get()), 1) << "no new ticket on resumption";
  ExpectRefusedWithoutResuming(ops_port, frontend, ca_.RootPem(), next_ticket.get());
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "identity_denied"), 1))
      << backend_->process().Log();
  EXPECT_EQ(backend_->Metric(resumed), 1);
  EXPECT_EQ(
      backend_->Metric(
          R"(meshtls_authz_decisions_total{direction="inbound",decision="deny",listener="ops"})"),
      1);
  EXPECT_EQ(app_.bytes_received(), 6u);  // "one" and "two" only
}

// A ticket resumes once (RFC 8446 §C.4): presented again, it gets a full handshake, which
// succeeds for a peer that is still allowed.
TEST_F(PeerVerificationTest, ATicketResumesOnlyOnce) {
  StartBackend();
  const testing::TlsIdentity frontend = AsIdentity(ca_.Issue(kFrontend));
  sidecar::SslSessionPtr ticket = FirstTicket(frontend);
  ASSERT_NE(ticket, nullptr);
  std::unique_ptr<testing::TlsClient> second = EchoThrough(port_, frontend, "two", ticket.get());
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->Resumed());
  std::unique_ptr<testing::TlsClient> third = EchoThrough(port_, frontend, "six", ticket.get());
  ASSERT_NE(third, nullptr);
  EXPECT_FALSE(third->Resumed()) << "a ticket was accepted twice";
  EXPECT_EQ(backend_->Metric(testing::HandshakeCount("inbound", true)), 1);
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 3);
}

TEST_F(PeerVerificationTest, ResumptionOffIssuesNoTicketAndEveryHandshakeIsFull) {
  StartBackend("tls: {session_resumption: false}\n");
  const testing::TlsIdentity frontend = AsIdentity(ca_.Issue(kFrontend));
  std::unique_ptr<testing::TlsClient> first = EchoThrough(port_, frontend, "one");
  ASSERT_NE(first, nullptr);
  sidecar::SslSessionPtr session = first->Session();
  ASSERT_NE(session, nullptr);
  EXPECT_EQ(SSL_SESSION_is_resumable(session.get()), 0) << "a ticket was issued";
  std::unique_ptr<testing::TlsClient> second = EchoThrough(port_, frontend, "two", session.get());
  ASSERT_NE(second, nullptr);
  EXPECT_FALSE(second->Resumed());
  EXPECT_EQ(backend_->Metric(testing::HandshakeCount("inbound", false)), 2);
  EXPECT_EQ(backend_->Metric(testing::HandshakeCount("inbound", true)), 0);
}

// A ticket never outlives the TLS context generation that issued it: after the trust bundle is
// replaced (the old root removed), the old ticket is not resumed and the old identity refused.
TEST_F(PeerVerificationTest, TicketIsNotAcceptedAfterTheTrustBundleDroppedItsRoot) {
  StartBackend();
  const testing::TlsIdentity frontend = AsIdentity(ca_.Issue(kFrontend));
  sidecar::SslSessionPtr ticket = FirstTicket(frontend);
  ASSERT_NE(ticket, nullptr);

  TestCa new_ca("mesh.test", now_);
  testing::IssuedLeaf leaf = new_ca.Issue(kBackend);
  dir_.Write("backend.crt", leaf.ChainPem());
  dir_.Write("backend.key", leaf.KeyPem(), 0600);
  dir_.Write("bundle.pem", new_ca.RootPem());
  backend_->process().Signal(SIGHUP);
  ASSERT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 2))
      << backend_->process().Log();

  ExpectRefusedWithoutResuming(port_, frontend, "", ticket.get());
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "unknown_authority"), 1))
      << backend_->process().Log();
  EXPECT_EQ(backend_->Metric(testing::HandshakeCount("inbound", true)), 0);
  EXPECT_EQ(app_.bytes_received(), 3u);
}

// Two workers: connections spread over both (SO_REUSEPORT), and after a rotation every worker
// serves the new certificate to new connections.
TEST_F(PeerVerificationTest, ConnectionsSpreadOverWorkersAndEveryWorkerSeesTheRotation) {
  StartBackend("workers: 2\n");
  const testing::TlsIdentity frontend = AsIdentity(ca_.Issue(kFrontend));
  auto worker_total = [&](int w) {
    return backend_->Metric(absl::StrCat("meshtls_worker_connections_total{worker=\"", w, "\"}"));
  };
  testing::IssuedLeaf rotated = ca_.Issue(kBackend);
  dir_.Write("backend.crt", rotated.ChainPem());
  dir_.Write("backend.key", rotated.KeyPem(), 0600);
  backend_->process().Signal(SIGHUP);
  ASSERT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 2))
      << backend_->process().Log();

  // SO_REUSEPORT hashes the client's address and port: 64 connections all landing on one of
  // two workers has odds of 2^-63.
  const double before[2] = {worker_total(0), worker_total(1)};
  for (int i = 0; i < 64 && (worker_total(0) == before[0] || worker_total(1) == before[1]); ++i) {
    auto client = testing::TlsClient::Connect(port_, frontend, ca_.RootPem());
    ASSERT_THAT(client, IsOk());
    ASSERT_EQ(ASN1_INTEGER_cmp(X509_get0_serialNumber((*client)->PeerCertificate()),
                               X509_get0_serialNumber(rotated.chain[0].get())),
              0)
        << "connection " << i << " was served the old certificate";
    ASSERT_THAT((*client)->Write("x"), IsOk());
    EXPECT_EQ(*(*client)->Read(1), "x");
  }
  EXPECT_GT(worker_total(0), before[0]);
  EXPECT_GT(worker_total(1), before[1]);
}

class OutboundVerificationTest : public PeerVerificationTest {
 protected:
  // StartFrontend runs an outbound listener to `upstream_port`, expecting the backend identity.
  // Its port is port_.
  void StartFrontend(uint16_t upstream_port, const std::string& extra = "") {
    MESHTLS_ASSERT_OK_AND_MOVE(
        frontend_,
        SidecarProcess::Start(dir_, "frontend",
                              absl::StrCat(FilesIdentity("frontend", ca_.Issue(kFrontend)),
                                           "outbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                                           "\n    connect: 127.0.0.1:", upstream_port,
                                           "\n    expect: [", kBackend, "]\n", extra)));
    port_ = frontend_->port("outbound.backend");
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
  // Counted once the server shows it accepted the sidecar (here, by its session tickets).
  EXPECT_TRUE(frontend_->WaitForMetric(Handshakes("outbound", "success"), 1));
}

// The outbound side keeps the server's tickets per listener and worker: after the first
// connections, the next ones to the same upstream resume (both sidecars count them). One worker,
// so every connection meets the same cache. The ticket of a connection may be read only after
// its reply was relayed, so the very next connection can still be a full handshake.
TEST_F(OutboundVerificationTest, OutboundConnectionsResumeWithTheListenersSessionCache) {
  ASSERT_NO_FATAL_FAILURE(StartBackend());
  const uint16_t backend_port = port_;
  ASSERT_NO_FATAL_FAILURE(StartFrontend(backend_port, "workers: 1\n"));
  constexpr int kRounds = 6;
  for (int i = 0; i < kRounds; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port_);
    ASSERT_THAT(conn, IsOk());
    ASSERT_THAT(testing::SendAll(conn->get(), "ping"), IsOk());
    // The echo arrives after the ticket, so the frontend has cached it before the next round.
    absl::StatusOr<std::string> echo = testing::RecvExactly(conn->get(), 4, absl::Seconds(10));
    ASSERT_THAT(echo, IsOk());
    EXPECT_EQ(*echo, "ping");
  }
  const std::string outbound = testing::HandshakeCount("outbound", true);
  const std::string inbound = testing::HandshakeCount("inbound", true);
  EXPECT_GE(frontend_->Metric(outbound), kRounds - 2) << frontend_->process().Log();
  EXPECT_EQ(backend_->Metric(inbound), frontend_->Metric(outbound)) << backend_->process().Log();
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), kRounds);
}

TEST_F(OutboundVerificationTest, UnreachableUpstreamIsCountedAndTheAppConnectionClosed) {
  uint16_t nothing_port = 0;
  const base::UniqueFd nothing = testing::ReserveLoopbackPort(&nothing_port);
  ASSERT_NO_FATAL_FAILURE(StartFrontend(nothing_port));
  // The app's connection is reset at once (sometimes before connect() even returns).
  EXPECT_THAT(testing::RefusedWithoutData(port_), IsOk());
  EXPECT_TRUE(frontend_->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="upstream_unavailable"})",
      1));
}

}  // namespace
}  // namespace meshtls

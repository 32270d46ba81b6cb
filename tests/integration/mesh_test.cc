// End to end in certmgr mode: the real meshtls-certmgr and meshtls-sidecar binaries on
// loopback, identities from join tokens, an echo app behind the backend sidecar.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/base/file.h"
#include "common/pki/csr.h"
#include "common/pki/openssl_ptr.h"
#include "sidecar/identity/ca_client.h"
#include "tests/testing/harness.h"
#include "tests/testing/jwt.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/netns.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"
#include "tests/testing/tls_peer.h"
#include "tests/testing/traffic_load.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::Handshakes;
using testing::IsOk;
using testing::SidecarProcess;
using testing::StatusIs;
using testing::TrafficLoad;

constexpr char kTd[] = "mesh.test";
const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

sidecar::CallCredentials Bearer(std::string token) {
  return {.chain = {}, .key = std::nullopt, .bearer_token = std::move(token)};
}

class MeshTest : public ::testing::Test {
 protected:
  // StartMesh runs certmgr, a backend sidecar in front of the echo app (allowing the frontend)
  // and a frontend sidecar with an outbound listener to it; `sidecar_extra` is appended to
  // both sidecar configs. The backend starts first: the frontend's config names the port the
  // backend's inbound listener was given.
  // `app_port` is where the backend forwards (0: the echo app).
  void StartMesh(const std::string& certmgr_extra = "", const std::string& sidecar_extra = "",
                 uint16_t app_port = 0) {
    MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd, certmgr_extra));
    ASSERT_NO_FATAL_FAILURE(
        StartBackendAndFrontend(app_port == 0 ? app_.port() : app_port, sidecar_extra));
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  // StartBackendAndFrontend starts the two sidecars of StartMesh (not waiting for readiness)
  // and records their ports.
  void StartBackendAndFrontend(uint16_t app_port, const std::string& sidecar_extra) {
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_, StartSidecar("backend", kBackend,
                               absl::StrCat("inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                            "\n    forward: 127.0.0.1:", app_port, "\n    allow: [",
                                            kFrontend, "]\n", sidecar_extra)));
    backend_port_ = backend_->port("inbound.http");
    MESHTLS_ASSERT_OK_AND_MOVE(
        frontend_, StartSidecar("frontend", kFrontend, OutboundToBackend() + sidecar_extra));
    frontend_port_ = frontend_->port("outbound.backend");
  }

  // OutboundToBackend is an outbound listener "backend" (on a port of the kernel's choice) to
  // backend_port_.
  std::string OutboundToBackend() {
    return absl::StrCat("outbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                        "\n    connect: 127.0.0.1:", backend_port_, "\n    expect: [", kBackend,
                        "]\n");
  }

  // BundleSequenceOnDisk is the trust bundle sequence certmgr's CA directory holds.
  uint64_t BundleSequenceOnDisk() const {
    uint64_t seq = 0;
    const std::string dir = certmgr_->ca_pem_path().substr(0, certmgr_->ca_pem_path().rfind('/'));
    EXPECT_TRUE(absl::SimpleAtoi(
        absl::StripAsciiWhitespace(*base::ReadFileToString(dir + "/bundle.seq")), &seq));
    return seq;
  }

  absl::StatusOr<std::unique_ptr<SidecarProcess>> StartSidecar(const std::string& name,
                                                               const std::string& id,
                                                               const std::string& listeners,
                                                               std::string token_file = "") {
    if (token_file.empty()) {
      token_file = certmgr_->TokenFile(id, name + ".token");
    }
    return SidecarProcess::Start(
        dir_, name,
        absl::StrCat("trust_domain: ", kTd, "\n", certmgr_->SidecarIdentityYaml(token_file),
                     listeners));
  }

  testing::TempDir dir_;
  testing::EchoServer app_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
  uint16_t backend_port_ = 0;
  uint16_t frontend_port_ = 0;
  base::UniqueFd no_backend_;  // holds backend_port_ unused where no backend runs
};

TEST_F(MeshTest, RoundTripOneByteAndEightMiBBothWays) {
  StartMesh();
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "x"), IsOk());
  EXPECT_EQ(*testing::RecvExactly(conn->get(), 1, absl::Seconds(10)), "x");

  const std::string payload = testing::RandomBytes(8 << 20);
  absl::Status sent;
  std::thread writer([&] { sent = testing::SendAll(conn->get(), payload); });
  absl::StatusOr<std::string> echoed =
      testing::RecvExactly(conn->get(), payload.size(), absl::Seconds(60));
  writer.join();
  ASSERT_THAT(sent, IsOk());
  ASSERT_THAT(echoed, IsOk());
  EXPECT_TRUE(*echoed == payload) << "8 MiB came back different";
  EXPECT_EQ(app_.bytes_received(), payload.size() + 1);
  EXPECT_GE(frontend_->Metric(R"(meshtls_bytes_total{direction="outbound",flow="sent"})"), 8 << 20);
  EXPECT_GE(backend_->Metric(R"(meshtls_bytes_total{direction="inbound",flow="received"})"),
            8 << 20);
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 1);
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), 1);
  EXPECT_EQ(
      backend_->Metric(
          R"(meshtls_authz_decisions_total{direction="inbound",decision="allow",listener="http"})"),
      1);
  EXPECT_EQ(backend_->Metric(R"(meshtls_connections_active{direction="inbound"})"), 1);
}

TEST_F(MeshTest, EveryMetricSeriesExistsFromStart) {
  StartMesh();
  absl::StatusOr<testing::HttpResult> scrape = testing::HttpGet(backend_->admin_port(), "/metrics");
  ASSERT_THAT(scrape, IsOk());
  for (const char* direction : {"inbound", "outbound"}) {
    for (const char* result :
         {"success", "no_peer_certificate", "certificate_expired", "certificate_not_yet_valid",
          "unknown_authority", "bad_certificate", "certificate_revoked", "identity_denied",
          "protocol_version", "no_shared_cipher", "timeout", "peer_closed", "not_tls",
          "internal"}) {
      EXPECT_EQ(testing::MetricValue(scrape->body, Handshakes(direction, result)), 0)
          << direction << " " << result;
    }
    for (bool resumed : {false, true}) {
      EXPECT_EQ(testing::MetricValue(scrape->body, testing::HandshakeCount(direction, resumed)), 0);
    }
    EXPECT_EQ(
        testing::MetricValue(scrape->body, absl::StrCat("meshtls_connections_active{direction=\"",
                                                        direction, "\"}")),
        0);
  }
  EXPECT_EQ(
      testing::MetricValue(
          scrape->body,
          R"(meshtls_authz_decisions_total{direction="inbound",decision="deny",listener="http"})"),
      0);
  // The certificate gauges describe the certificate certmgr issued: valid now, ~24 h left.
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const double not_after =
      *testing::MetricValue(scrape->body, "meshtls_cert_not_after_timestamp_seconds");
  EXPECT_GT(not_after, now + 23 * 3600);
  EXPECT_LT(not_after, now + 25 * 3600);
  EXPECT_LT(*testing::MetricValue(scrape->body, "meshtls_cert_not_before_timestamp_seconds"), now);
  EXPECT_GT(*testing::MetricValue(scrape->body, "meshtls_cert_renewal_due_timestamp_seconds"), now);
  EXPECT_EQ(testing::MetricValue(scrape->body, "meshtls_trust_bundle_roots"), 1);
  EXPECT_EQ(testing::MetricValue(scrape->body, "meshtls_trust_bundle_sequence"),
            BundleSequenceOnDisk());
  EXPECT_EQ(testing::MetricValue(scrape->body, R"(meshtls_cert_renewals_total{result="success"})"),
            1);
}

TEST_F(MeshTest, WatchTrustBundleSendsTheBundleAndStaysOpen) {
  StartMesh();
  // Both sidecars hold a watch open.
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return testing::ScrapeMetric(certmgr_->admin_port(),
                                     "meshtls_certmgr_trust_bundle_watchers") == 2;
      },
      absl::Seconds(10)));
  auto client = sidecar::NewGrpcCaClient({certmgr_->address()},
                                         *base::ReadFileToString(certmgr_->ca_pem_path()));
  std::atomic<int> received{0};
  std::atomic<uint64_t> sequence{0};
  std::string root_der;
  absl::Status ended;
  const std::string token = certmgr_->Token("spiffe://mesh.test/ns/default/sa/watcher");
  std::thread watcher([&] {
    ended = client->WatchTrustBundle(Bearer(token),
                                     [&](std::vector<pki::Certificate> roots, uint64_t seq) {
                                       if (received.load() == 0 && roots.size() == 1) {
                                         root_der = roots[0].ToDer();
                                       }
                                       sequence.store(seq);
                                       received.fetch_add(1);
                                     });
  });
  EXPECT_TRUE(testing::WaitFor([&] { return received.load() == 1; }, absl::Seconds(10)));
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return testing::ScrapeMetric(certmgr_->admin_port(),
                                     "meshtls_certmgr_trust_bundle_watchers") == 3;
      },
      absl::Seconds(10)))
      << "the stream must stay open after the first bundle";
  client->CancelWatch();
  watcher.join();
  EXPECT_EQ(received.load(), 1);
  EXPECT_EQ(sequence.load(), BundleSequenceOnDisk());
  EXPECT_EQ(root_der,
            pki::Certificate::FromPem(*base::ReadFileToString(certmgr_->ca_pem_path()))->ToDer());
  EXPECT_THAT(ended, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return testing::ScrapeMetric(certmgr_->admin_port(),
                                     "meshtls_certmgr_trust_bundle_watchers") == 2;
      },
      absl::Seconds(10)));
}

// StalledApp accepts one connection and reads nothing until told to drain it.
class StalledApp {
 public:
  StalledApp() : listen_fd_(testing::ListenLoopback(&port_, 4)) {}
  uint16_t port() const { return port_; }
  // Drain accepts the connection and reads exactly n bytes.
  absl::StatusOr<std::string> Drain(size_t n) {
    base::UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return testing::RecvExactly(fd.get(), n, absl::Seconds(60));
  }

 private:
  uint16_t port_ = 0;  // declared first: ListenLoopback fills it while listen_fd_ is built
  base::UniqueFd listen_fd_;
};

TEST_F(MeshTest, SlowAppSlowsTheWriterInsteadOfGrowingMemory) {
  StalledApp stalled;
  StartMesh("", "", stalled.port());
  const int64_t rss_before =
      testing::RssKiB(backend_->process().pid()) + testing::RssKiB(frontend_->process().pid());

  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ::fcntl(conn->get(), F_SETFL, O_NONBLOCK);
  // Write until the mesh pushes back (bounded: 256 MiB or 20 s). With bounded relay buffers
  // only the kernel's socket buffers (a few MiB per socket) can absorb bytes.
  const std::string chunk = testing::RandomBytes(64 * 1024);
  std::string written;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::Time last_progress = absl::Now();
  while (written.size() < (256u << 20) && absl::Now() < deadline &&
         absl::Now() - last_progress < absl::Milliseconds(500)) {
    ssize_t n = ::send(conn->get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0) {
      written.append(chunk.data(), static_cast<size_t>(n));
      last_progress = absl::Now();
    } else {
      pollfd p{conn->get(), POLLOUT, 0};
      ::poll(&p, 1, 50);
    }
  }
  std::printf("backlog absorbed before the writer was slowed: %zu KiB\n", written.size() / 1024);
  EXPECT_LT(written.size(), 96u << 20) << "the writer was never slowed down";
  const int64_t rss_after =
      testing::RssKiB(backend_->process().pid()) + testing::RssKiB(frontend_->process().pid());
  std::printf("sidecar RSS growth with that backlog: %lld KiB\n",
              static_cast<long long>(rss_after - rss_before));
#if !defined(__SANITIZE_ADDRESS__)
  // Under ASan, RSS also holds the allocator's quarantine of freed buffers (OpenSSL releases
  // its record buffers after every read), so it says nothing about the relay; the backlog
  // bound above is what proves the buffers are bounded in every build.
  EXPECT_LT(rss_after - rss_before, 16 * 1024) << "sidecar memory grew with the backlog";
#endif

  // Nothing is lost: once the app reads, every byte arrives in order.
  ::fcntl(conn->get(), F_SETFL, 0);
  absl::StatusOr<std::string> received = stalled.Drain(written.size());
  ASSERT_THAT(received, IsOk());
  EXPECT_TRUE(*received == written);
}

TEST_F(MeshTest, OutageLongerThanTheLifetimeFailsClosedThenRecoversWithoutRestart) {
  StartMesh("issuance: {default_ttl: 6s, min_ttl: 5s, backdate: 0}\n");
  absl::StatusOr<base::UniqueFd> live = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(live, IsOk());
  ASSERT_THAT(testing::SendAll(live->get(), "a"), IsOk());
  ASSERT_EQ(*testing::RecvExactly(live->get(), 1, absl::Seconds(10)), "a");

  certmgr_->Stop();
  // The certificates expire with certmgr gone: the sidecar fails closed...
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        absl::StatusOr<testing::HttpResult> r =
            testing::HttpGet(frontend_->admin_port(), "/readyz", absl::Seconds(1));
        return r.ok() && r->status == 503 && r->body.find("expired") != std::string::npos;
      },
      absl::Seconds(20)));
  // ...the connection opened with those certificates was closed gracefully (FIN, not a reset,
  // no data)...
  absl::StatusOr<std::string> rest = testing::RecvUntilEof(live->get(), absl::Seconds(10));
  ASSERT_THAT(rest, IsOk());
  EXPECT_EQ(*rest, "");
  // ...and new connections are refused and counted.
  EXPECT_THAT(testing::RefusedWithoutData(frontend_port_), IsOk());
  EXPECT_TRUE(frontend_->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="certificate_expired"})",
      1));
  EXPECT_GE(frontend_->Metric(R"(meshtls_cert_renewals_total{result="failure"})"), 1);

  // certmgr returns (same CA): both sidecars recover by themselves, with no restart.
  ASSERT_THAT(certmgr_->Restart(), IsOk());
  ASSERT_TRUE(frontend_->WaitReady(absl::Seconds(30))) << frontend_->process().Log();
  ASSERT_TRUE(backend_->WaitReady(absl::Seconds(30))) << backend_->process().Log();
  absl::StatusOr<base::UniqueFd> again = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(again, IsOk());
  ASSERT_THAT(testing::SendAll(again->get(), "back"), IsOk());
  EXPECT_EQ(*testing::RecvExactly(again->get(), 4, absl::Seconds(10)), "back");
}

TEST_F(MeshTest, KubernetesServiceAccountTokenBootstrapsASidecar) {
  testing::JwtSigner cluster_key = testing::NewRs256Signer("cluster-1");
  const std::string jwks = dir_.Write("k8s-jwks.json", testing::Jwks({cluster_key}));
  MESHTLS_ASSERT_OK_AND_MOVE(
      certmgr_,
      CertmgrProcess::Start(
          dir_, kTd,
          absl::StrCat("  kubernetes: {issuer: https://kubernetes.default.svc, jwks_file: ", jwks,
                       ", allowed_namespaces: [default]}\n")));
  auto token_for = [&](const std::string& ns, const std::string& sa) {
    return testing::SignJwt(
        cluster_key, testing::ServiceAccountClaims("https://kubernetes.default.svc", "meshtls", ns,
                                                   sa, absl::Now() + absl::Hours(1), absl::Now()));
  };
  std::unique_ptr<SidecarProcess> sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      sidecar, StartSidecar("k8s", "",
                            absl::StrCat("inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                         "\n    forward: 127.0.0.1:", app_.port(), "\n    allow: [",
                                         kFrontend, "]\n"),
                            dir_.Write("projected-token", token_for("default", "backend"), 0600)));
  ASSERT_TRUE(sidecar->WaitReady()) << sidecar->process().Log();
  absl::StatusOr<testing::HttpResult> certs = testing::HttpGet(sidecar->admin_port(), "/certs");
  ASSERT_THAT(certs, IsOk());
  EXPECT_NE(certs->body.find(R"("identity":"spiffe://mesh.test/ns/default/sa/backend")"),
            std::string::npos)
      << certs->body;

  // A namespace outside the policy is refused (PERMISSION_DENIED), counted by certmgr.
  auto client = sidecar::NewGrpcCaClient({certmgr_->address()},
                                         *base::ReadFileToString(certmgr_->ca_pem_path()));
  const std::string csr = *pki::CreateCsrDer(*pki::PrivateKey::GenerateEcP256());
  EXPECT_THAT(client->Sign(csr, Bearer(token_for("kube-system", "admin")), absl::Seconds(10)),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(
      testing::ScrapeMetric(certmgr_->admin_port(),
                            R"(meshtls_certmgr_sign_requests_total{result="permission_denied"})"),
      1);
  // A token signed by another key is UNAUTHENTICATED.
  testing::JwtSigner forger = testing::NewRs256Signer("cluster-1");
  EXPECT_THAT(client->Sign(csr,
                           Bearer(testing::SignJwt(
                               forger, testing::ServiceAccountClaims(
                                           "https://kubernetes.default.svc", "meshtls", "default",
                                           "backend", absl::Now() + absl::Hours(1), absl::Now()))),
                           absl::Seconds(10)),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(MeshTest, FiftyRenewalsUnderLoadLoseNothing) {
  // 3 s certificates renewed at half their life: each sidecar renews about every 1.5 s.
  // Long-lived connections are kept across every rotation (close_on_expiry off), new ones keep
  // coming; every byte is checked.
  StartMesh("issuance: {default_ttl: 3s, min_ttl: 2s, backdate: 0}\n",
            "tls: {close_on_expiry: false}\n");
  TrafficLoad load(frontend_port_, /*long_lived=*/3);
  const std::string renewals = R"(meshtls_cert_renewals_total{result="success"})";
  // Bounded: at most 120 s, stopping early on the first failure.
  const bool enough = testing::WaitFor(
      [&] {
        return load.failures() > 0 ||
               frontend_->Metric(renewals) + backend_->Metric(renewals) >= 50;
      },
      absl::Seconds(120));
  load.Stop();
  const double total_renewals = frontend_->Metric(renewals) + backend_->Metric(renewals);
  std::printf("%.0f renewals, %d new connections, %llu bytes checked, %d failures\n",
              total_renewals, load.new_connections(),
              static_cast<unsigned long long>(load.bytes_checked()), load.failures());
  EXPECT_EQ(load.failures(), 0) << load.first_failure();
  EXPECT_TRUE(enough);
  EXPECT_GE(total_renewals, 50);
  EXPECT_GT(load.new_connections(), 50);
  EXPECT_EQ(frontend_->Metric(R"(meshtls_cert_renewals_total{result="failure"})"), 0);
  EXPECT_EQ(backend_->Metric(R"(meshtls_cert_renewals_total{result="failure"})"), 0);
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), load.new_connections() + 3);
}

TEST_F(MeshTest, CaRotationEndToEndWithTrafficAndNoRestart) {
  // 6 s certificates; automatic rotation off so the operator's steps are what is tested.
  MESHTLS_ASSERT_OK_AND_MOVE(
      certmgr_, CertmgrProcess::Start(dir_, kTd,
                                      "issuance: {default_ttl: 6s, min_ttl: 2s, max_ttl: 6s, "
                                      "backdate: 0}\n",
                                      ", rotation: {auto: false}"));
  ASSERT_NO_FATAL_FAILURE(StartBackendAndFrontend(app_.port(), "tls: {close_on_expiry: false}\n"));
  ASSERT_TRUE(backend_->WaitReady());
  ASSERT_TRUE(frontend_->WaitReady());
  // Keep the old root's key to mint a certificate from it after it has been retired.
  testing::TestCa old_root(
      kTd, *pki::Certificate::FromPem(*base::ReadFileToString(dir_.File("ca/ca.pem"))),
      *pki::PrivateKey::FromPem(*base::ReadFileToString(dir_.File("ca/ca.key"))));
  const std::string roots = "meshtls_trust_bundle_roots";
  TrafficLoad load(frontend_port_, /*long_lived=*/2);

  ASSERT_EQ(certmgr_->Run({"ca", "rotate", "prepare"}), 0);
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(roots) == 2 && backend_->Metric(roots) == 2; },
      absl::Seconds(15)))
      << "the next root must reach every sidecar before it signs";

  const std::string renewed = R"(meshtls_cert_renewals_total{result="success"})";
  const double f0 = frontend_->Metric(renewed), b0 = backend_->Metric(renewed);
  ASSERT_EQ(certmgr_->Run({"ca", "rotate", "activate"}), 0);
  // Retiring right away is refused: leaves of the old root are still valid.
  EXPECT_NE(certmgr_->Run({"ca", "rotate", "retire"}), 0);
  // Both sidecars renew from the new signer (at least twice each, to be past the switch).
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(renewed) >= f0 + 2 && backend_->Metric(renewed) >= b0 + 2; },
      absl::Seconds(30)));
  // Once every old leaf has expired, retiring succeeds.
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return certmgr_->Run({"ca", "rotate", "retire"}) == 0;
      },
      absl::Seconds(20)));
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(roots) == 1 && backend_->Metric(roots) == 1; },
      absl::Seconds(15)));
  // Traffic keeps flowing after the retirement.
  const int before = load.new_connections();
  EXPECT_TRUE(
      testing::WaitFor([&] { return load.new_connections() > before + 20; }, absl::Seconds(20)));
  load.Stop();
  std::printf("rotation: %d new connections, %llu bytes checked, %d failures\n",
              load.new_connections(), static_cast<unsigned long long>(load.bytes_checked()),
              load.failures());
  EXPECT_EQ(load.failures(), 0) << load.first_failure();
  EXPECT_FALSE(frontend_->process().WaitForExit(absl::ZeroDuration()).has_value());
  EXPECT_FALSE(backend_->process().WaitForExit(absl::ZeroDuration()).has_value());

  // A certificate from the retired root is refused now.
  testing::IssuedLeaf stale = old_root.Issue(kFrontend);
  absl::StatusOr<std::unique_ptr<testing::TlsClient>> client =
      testing::TlsClient::Connect(backend_port_, testing::AsIdentity(stale), "");
  if (client.ok()) {
    (void)(*client)->Write("x");
    EXPECT_FALSE((*client)->Read(1).ok());
  }
  EXPECT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "unknown_authority"), 1));
  EXPECT_EQ(testing::ScrapeMetric(certmgr_->admin_port(),
                                  R"(meshtls_certmgr_sign_requests_total{result="internal"})"),
            0);
}

TEST_F(MeshTest, HalfCloseTravelsBothWays) {
  StartMesh();
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "last words"), IsOk());
  // Our FIN must reach the app as a FIN (via close_notify); the app then echoes and closes,
  // and that FIN must come back to us, after the data.
  ::shutdown(conn->get(), SHUT_WR);
  absl::StatusOr<std::string> all = testing::RecvUntilEof(conn->get(), absl::Seconds(10));
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(*all, "last words");
  EXPECT_TRUE(testing::WaitFor(
      [&] { return backend_->Metric(R"(meshtls_connections_active{direction="inbound"})") == 0; },
      absl::Seconds(10)));
}

// TimeWaitEnds lists the (local port, peer port) of the TCP sockets in TIME_WAIT with `port` at
// either end, in the network namespace the test runs in. Through `ss`, whose filter runs in the
// kernel: /proc/net/tcp holds every TIME_WAIT socket of the parallel tests, some of which may
// have used `port` before this test's listener got it.
std::set<std::pair<uint16_t, uint16_t>> TimeWaitEnds(uint16_t port) {
  absl::StatusOr<std::string> out =
      testing::RunCommand({"ss", "-tanH", "state", "time-wait",
                           absl::StrCat("( sport = :", port, " or dport = :", port, " )")});
  EXPECT_THAT(out, IsOk());
  std::set<std::pair<uint16_t, uint16_t>> ends;
  for (absl::string_view line : absl::StrSplit(out.value_or(""), '\n', absl::SkipWhitespace())) {
    // "Recv-Q Send-Q Local:Port Peer:Port" (no state column when filtering by state).
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint32_t local = 0;
    uint32_t peer = 0;
    EXPECT_TRUE(fields.size() >= 4 &&
                absl::SimpleAtoi(fields[2].substr(fields[2].rfind(':') + 1), &local) &&
                absl::SimpleAtoi(fields[3].substr(fields[3].rfind(':') + 1), &peer))
        << "cannot read ss's line: " << line;
    ends.emplace(local, peer);
  }
  return ends;
}

TEST_F(MeshTest, TheSidecarWhoseAppClosedFirstHoldsTheTimeWait) {
  // The app behind the backend answers and closes first, as an HTTP/1.0 server does; the
  // client reads to EOF, then closes. Without the mesh the server would hold the TIME_WAIT, so
  // the backend sidecar must: the frontend's TIME_WAIT sockets would take ephemeral ports
  // towards the backend (in transparent mode, the same ones the app dials).
  testing::ScriptedTcpServer closes_first(
      [](base::UniqueFd fd) { (void)testing::SendAll(fd.get(), "bye"); });
  StartMesh("", "", closes_first.port());
  const std::set<std::pair<uint16_t, uint16_t>> before = TimeWaitEnds(backend_port_);
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  absl::StatusOr<std::string> all = testing::RecvUntilEof(conn->get(), absl::Seconds(10));
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(*all, "bye");
  conn->reset();
  // The backend's end of this test's TLS connection: local port backend_port_, new since
  // `before`; its peer port is the frontend's end.
  std::optional<uint16_t> frontend_end;
  std::set<std::pair<uint16_t, uint16_t>> after;
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        after = TimeWaitEnds(backend_port_);
        for (const auto& [local, peer] : after) {
          if (local == backend_port_ && !before.contains({local, peer})) {
            frontend_end = peer;
          }
        }
        return frontend_end.has_value();
      },
      absl::Seconds(10)))
      << "the backend sidecar's end of the TLS connection never reached TIME_WAIT";
  if (frontend_end.has_value()) {
    EXPECT_FALSE(after.contains({*frontend_end, backend_port_}))
        << "the frontend sidecar's end is in TIME_WAIT too: it closed first (or both at once)";
  }
}

TEST_F(MeshTest, DeniedIdentityNeverReachesTheApp) {
  StartMesh();
  std::unique_ptr<SidecarProcess> intruder;
  MESHTLS_ASSERT_OK_AND_MOVE(
      intruder,
      StartSidecar("intruder", "spiffe://mesh.test/ns/default/sa/intruder", OutboundToBackend()));
  ASSERT_TRUE(intruder->WaitReady()) << intruder->process().Log();
  const uint16_t intruder_port = intruder->port("outbound.backend");
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(intruder_port);
  ASSERT_THAT(conn, IsOk());
  (void)testing::SendAll(conn->get(), "GET /secrets HTTP/1.0\r\n\r\n");
  EXPECT_THAT(testing::ClosedWithoutData(conn->get()), IsOk()) << "the intruder got bytes back";
  ASSERT_TRUE(backend_->WaitForMetric(Handshakes("inbound", "identity_denied"), 1));
  EXPECT_EQ(
      backend_->Metric(
          R"(meshtls_authz_decisions_total{direction="inbound",decision="deny",listener="http"})"),
      1);
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 0);
  EXPECT_EQ(app_.connections(), 0) << "a denied peer must not even open a connection to the app";
  EXPECT_EQ(app_.bytes_received(), 0u);
  EXPECT_NE(
      backend_->process().Log().find("peer_spiffe_id=spiffe://mesh.test/ns/default/sa/intruder"),
      std::string::npos);
}

TEST_F(MeshTest, SidecarWithABadTokenStaysUnreadyAndFailsClosed) {
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd));
  no_backend_ = testing::ReserveLoopbackPort(&backend_port_);
  std::unique_ptr<SidecarProcess> lost;
  MESHTLS_ASSERT_OK_AND_MOVE(lost,
                             StartSidecar("lost", kFrontend, OutboundToBackend(),
                                          dir_.Write("bad.token", "mjt_not-a-real-token", 0600)));
  const uint16_t port = lost->port("outbound.backend");
  ASSERT_TRUE(
      lost->WaitForMetric(R"(meshtls_cert_renewals_total{result="failure"})", 1, absl::Seconds(15)))
      << lost->process().Log();
  absl::StatusOr<testing::HttpResult> ready = testing::HttpGet(lost->admin_port(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 503);
  EXPECT_NE(ready->body.find("no certificate"), std::string::npos);
  // Fail closed: the connection is reset at once (sometimes before connect() even returns).
  EXPECT_THAT(testing::RefusedWithoutData(port), IsOk());
  EXPECT_TRUE(lost->WaitForMetric(
      R"(meshtls_connections_refused_total{direction="outbound",reason="no_credentials"})", 1));
  EXPECT_GE(
      testing::ScrapeMetric(certmgr_->admin_port(),
                            R"(meshtls_certmgr_sign_requests_total{result="unauthenticated"})"),
      1);
}

TEST_F(MeshTest, DownwardApiIdentityRefusesACertificateForAnotherIdentity) {
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd));
  no_backend_ = testing::ReserveLoopbackPort(&backend_port_);
  // The pod runs as default/backend, but its token is the frontend's: certmgr issues a
  // frontend certificate, which the sidecar must not serve.
  auto yaml = [&](const std::string& token_id, const std::string& name) {
    return absl::StrCat("trust_domain: ", kTd, "\n",
                        certmgr_->SidecarIdentityYaml(certmgr_->TokenFile(token_id, name)),
                        OutboundToBackend());
  };
  const std::vector<std::string> as_backend = {"--namespace", "default", "--service-account",
                                               "backend"};
  std::unique_ptr<SidecarProcess> wrong;
  MESHTLS_ASSERT_OK_AND_MOVE(
      wrong, SidecarProcess::Start(dir_, "wrong", yaml(kFrontend, "wrong.token"), as_backend));
  ASSERT_TRUE(wrong->WaitForMetric(R"(meshtls_cert_renewals_total{result="failure"})", 1,
                                   absl::Seconds(15)))
      << wrong->process().Log();
  EXPECT_EQ(testing::HttpGet(wrong->admin_port(), "/readyz")->status, 503);
  EXPECT_EQ(wrong->Metric("meshtls_tls_context_generation"), 0);
  EXPECT_EQ(testing::HttpGet(wrong->admin_port(), "/certs")->body, "{\"identity\":null}\n");
  EXPECT_NE(wrong->process().Log().find(
                "the certificate is for spiffe://mesh.test/ns/default/sa/frontend, but this pod "
                "is spiffe://mesh.test/ns/default/sa/backend"),
            std::string::npos)
      << wrong->process().Log();
  // The same flags with the pod's own token: ready, with that identity.
  std::unique_ptr<SidecarProcess> right;
  MESHTLS_ASSERT_OK_AND_MOVE(
      right, SidecarProcess::Start(dir_, "right", yaml(kBackend, "right.token"), as_backend));
  ASSERT_TRUE(right->WaitReady()) << right->process().Log();
  EXPECT_NE(testing::HttpGet(right->admin_port(), "/certs")->body.find(kBackend),
            std::string::npos);
}

// ClaimingCsr is a CSR whose subject and SAN claim an identity (certmgr must ignore both).
std::string ClaimingCsr(const pki::PrivateKey& key, const std::string& claimed) {
  pki::X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), key.get());
  X509_NAME* name = X509_REQ_get_subject_name(req.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(claimed.c_str()), -1, -1, 0);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  const std::string san = "URI:" + claimed;
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, san.c_str());
  sk_X509_EXTENSION_push(exts, ext);
  X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  X509_REQ_sign(req.get(), key.get(), EVP_sha256());
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

TEST_F(MeshTest, CertmgrRefusesBadCredentialsAndIgnoresClaimedIdentity) {
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd));
  auto client = sidecar::NewGrpcCaClient({certmgr_->address()},
                                         *base::ReadFileToString(certmgr_->ca_pem_path()));
  pki::PrivateKey key = *pki::PrivateKey::GenerateEcP256();
  const std::string csr = *pki::CreateCsrDer(key);

  EXPECT_THAT(client->Sign(csr, Bearer("mjt_bogus"), absl::Seconds(10)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(client->Sign(csr, {}, absl::Seconds(10)),
              StatusIs(absl::StatusCode::kUnauthenticated));

  const std::string token = certmgr_->Token(kFrontend);
  EXPECT_THAT(client->Sign("garbage", Bearer(token), absl::Seconds(10)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  pki::PrivateKey rsa_small(*pki::PrivateKey::FromPem([] {
    pki::EvpPkeyPtr k(EVP_RSA_gen(1024));
    pki::BioPtr bio(BIO_new(BIO_s_mem()));
    PEM_write_bio_PrivateKey(bio.get(), k.get(), nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<size_t>(n));
  }()));
  EXPECT_THAT(client->Sign(*pki::CreateCsrDer(rsa_small), Bearer(token), absl::Seconds(10)),
              StatusIs(absl::StatusCode::kInvalidArgument, "2048"));

  absl::StatusOr<sidecar::SignedCredentials> issued =
      client->Sign(ClaimingCsr(key, "spiffe://mesh.test/ns/kube-system/sa/admin"), Bearer(token),
                   absl::Seconds(10));
  ASSERT_THAT(issued, IsOk());
  EXPECT_EQ(issued->chain[0].UriSans(), std::vector<std::string>{kFrontend})
      << "the identity comes from the token, never from the CSR";
  EXPECT_TRUE(issued->chain[0].MatchesKey(key.get()));
  EXPECT_EQ(issued->roots.size(), 1u);

  const uint16_t admin = certmgr_->admin_port();
  EXPECT_EQ(testing::ScrapeMetric(
                admin, R"(meshtls_certmgr_sign_requests_total{result="unauthenticated"})"),
            2);
  EXPECT_EQ(
      testing::ScrapeMetric(admin, R"(meshtls_certmgr_sign_requests_total{result="invalid_csr"})"),
      2);
  EXPECT_EQ(
      testing::ScrapeMetric(admin, R"(meshtls_certmgr_sign_requests_total{result="success"})"), 1);

  // Renewal over mTLS keeps the certificate's identity even with another identity's token.
  const std::string other_token = certmgr_->Token("spiffe://mesh.test/ns/default/sa/other");
  pki::PrivateKey next = *pki::PrivateKey::GenerateEcP256();
  absl::StatusOr<sidecar::SignedCredentials> renewed = client->Sign(
      *pki::CreateCsrDer(next), {.chain = issued->chain, .key = key, .bearer_token = other_token},
      absl::Seconds(10));
  ASSERT_THAT(renewed, IsOk());
  EXPECT_EQ(renewed->chain[0].UriSans(), std::vector<std::string>{kFrontend})
      << certmgr_->process().Log();
}

TEST_F(MeshTest, RenewalSwapsTheCertificateWhileALiveConnectionKeepsWorking) {
  // 8 s certificates: each sidecar renews about 4 s after it got one.
  StartMesh("issuance: {default_ttl: 8s, min_ttl: 5s, backdate: 0}\n");
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "before"), IsOk());
  EXPECT_EQ(*testing::RecvExactly(conn->get(), 6, absl::Seconds(10)), "before");
  const std::string frontend_serial = frontend_->ServedSerial();
  const std::string backend_serial = backend_->ServedSerial();
  ASSERT_FALSE(frontend_serial.empty());

  ASSERT_TRUE(frontend_->WaitForMetric("meshtls_tls_context_generation", 2, absl::Seconds(20)));
  ASSERT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 2, absl::Seconds(20)));
  EXPECT_NE(frontend_->ServedSerial(), frontend_serial);
  EXPECT_NE(backend_->ServedSerial(), backend_serial);
  EXPECT_GE(frontend_->Metric(R"(meshtls_cert_renewals_total{result="success"})"), 2);

  // The connection opened under the old certificates still carries bytes.
  ASSERT_THAT(testing::SendAll(conn->get(), "after"), IsOk());
  EXPECT_EQ(*testing::RecvExactly(conn->get(), 5, absl::Seconds(10)), "after");
  // And a new connection handshakes with the new ones.
  absl::StatusOr<base::UniqueFd> fresh = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(fresh, IsOk());
  ASSERT_THAT(testing::SendAll(fresh->get(), "new"), IsOk());
  EXPECT_EQ(*testing::RecvExactly(fresh->get(), 3, absl::Seconds(10)), "new");
  EXPECT_EQ(backend_->Metric(Handshakes("inbound", "success")), 2);
}

}  // namespace
}  // namespace meshtls

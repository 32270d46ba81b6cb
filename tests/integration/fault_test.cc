// Fault injection against the real binaries on loopback: the local app down or refusing, a
// peer resetting mid-stream, garbage and idle connections on every listener (inbound, outbound,
// admin, certmgr's gRPC and admin ports), oversized records, a flood of failed handshakes beside
// good clients, running out of file descriptors, certmgr killed and restarted under traffic.
// After each fault the process must still serve, and /metrics must show what happened. Every
// loop is bounded in count and time.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/file.h"
#include "common/pki/csr.h"
#include "sidecar/identity/ca_client.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"
#include "tests/testing/tls_peer.h"
#include "tests/testing/traffic_load.h"

namespace meshtls {
namespace {

using testing::AsIdentity;
using testing::Handshakes;
using testing::IsOk;
using testing::SidecarProcess;
using testing::TestCa;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

// Reset closes `fd` with a TCP reset (SO_LINGER 0) instead of a FIN.
void Reset(base::UniqueFd fd) {
  linger l{.l_onoff = 1, .l_linger = 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

// SignAsWeb asks `certmgr` for a certificate for a new workload (bootstrap token, no chain).
absl::Status SignAsWeb(testing::CertmgrProcess& certmgr) {
  auto client =
      sidecar::NewGrpcCaClient({certmgr.address()}, *base::ReadFileToString(certmgr.ca_pem_path()));
  return client
      ->Sign(*pki::CreateCsrDer(*pki::PrivateKey::GenerateEcP256()),
             {.chain = {},
              .key = std::nullopt,
              .bearer_token = certmgr.Token("spiffe://mesh.test/ns/default/sa/web")},
             absl::Seconds(10))
      .status();
}

class FaultTest : public ::testing::Test {
 protected:
  // StartSidecar runs a files-mode sidecar (identity backend) whose inbound listener forwards
  // to `app_port` and allows frontend and backend, and whose outbound listener loops back to
  // that inbound listener: app -> outbound -> mTLS -> inbound -> app, a pair in one process.
  // `launcher` runs it under another command (prlimit).
  void StartSidecar(uint16_t app_port, const std::vector<std::string>& launcher = {},
                    const std::string& extra = "") {
    const testing::IssuedLeaf own = ca_.Issue(kBackend, absl::Hours(1));
    const std::string yaml = absl::StrCat(
        testing::FilesConfigHead(dir_, "own", own, dir_.Write("bundle.pem", ca_.RootPem())),
        "limits: {handshake_timeout: 1s, connect_timeout: 1s}\nlog: {format: json}\n", extra,
        LoopListeners(app_port, {kFrontend, kBackend}));
    MESHTLS_ASSERT_OK_AND_MOVE(sidecar_,
                               SidecarProcess::Start(dir_, "sidecar", yaml, {}, launcher));
    ASSERT_NO_FATAL_FAILURE(ListenersStarted());
    ASSERT_TRUE(sidecar_->WaitReady()) << sidecar_->process().Log();
  }

  // LoopListeners is the listeners section of the pair in one process: inbound "in" forwarding
  // to `app_port` and allowing `allow`, outbound "loop" connecting to "in". The outbound
  // listener's config names the inbound port, so that port is reserved before the sidecar
  // starts (the sidecar's listener shares it through SO_REUSEPORT); ListenersStarted, once the
  // sidecar runs, drops the reservation and reads both ports.
  std::string LoopListeners(uint16_t app_port, const std::vector<std::string>& allow) {
    inbound_reservation_ = testing::ReserveLoopbackPort(&inbound_port_);
    return absl::StrCat(
        "inbound:\n  - name: in\n    listen: 127.0.0.1:", inbound_port_,
        "\n    forward: 127.0.0.1:", app_port, "\n    allow: [", absl::StrJoin(allow, ", "),
        "]\noutbound:\n  - name: loop\n    listen: 127.0.0.1:0",
        "\n    connect: 127.0.0.1:", inbound_port_, "\n    expect: [", kBackend, "]\n");
  }
  void ListenersStarted() {
    inbound_reservation_.reset();
    ASSERT_EQ(sidecar_->port("inbound.in"), inbound_port_);
    outbound_port_ = sidecar_->port("outbound.loop");
  }

  // EchoThrough sends `data` through the pair and expects it back.
  absl::Status EchoThrough(const std::string& data) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(outbound_port_);
    if (!conn.ok()) {
      return conn.status();
    }
    if (absl::Status s = testing::SendAll(conn->get(), data); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::string> back =
        testing::RecvExactly(conn->get(), data.size(), absl::Seconds(10));
    if (!back.ok()) {
      return back.status();
    }
    return *back == data ? absl::OkStatus() : absl::DataLossError("corrupted echo");
  }

  bool StillServes() {
    return EchoThrough("still here").ok() &&
           testing::HttpGet(sidecar_->admin_port(), "/readyz")->status == 200;
  }

  double Active() const {
    return sidecar_->Metric(R"(meshtls_connections_active{direction="inbound"})") +
           sidecar_->Metric(R"(meshtls_connections_active{direction="outbound"})");
  }

  testing::TempDir dir_;
  testing::EchoServer app_;
  TestCa ca_{"mesh.test"};
  testing::TlsIdentity good_identity_;
  std::unique_ptr<SidecarProcess> sidecar_;
  uint16_t inbound_port_ = 0;
  uint16_t outbound_port_ = 0;
  base::UniqueFd inbound_reservation_;  // see LoopListeners
};

TEST_F(FaultTest, AppDownThenBack) {
  // The app's port, bound but not listening: refused until the app "comes up" below.
  uint16_t app_port = 0;
  base::UniqueFd app_listener = testing::ReserveLoopbackPort(&app_port);
  StartSidecar(app_port);
  const std::string refused =
      R"(meshtls_connections_refused_total{direction="inbound",reason="upstream_unavailable"})";
  // Connections through the pair end without a byte, and the refusal is counted.
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(testing::RefusedWithoutData(outbound_port_), IsOk()) << i;
  }
  EXPECT_TRUE(sidecar_->WaitForMetric(refused, 5));
  EXPECT_TRUE(testing::WaitFor([&] { return Active() == 0; }, absl::Seconds(10)));
  // The app comes up on its port: the next connection goes through, with no restart.
  ASSERT_EQ(::listen(app_listener.get(), 16), 0);
  std::thread app([&] {
    base::UniqueFd conn(::accept(app_listener.get(), nullptr, nullptr));
    absl::StatusOr<std::string> got = testing::RecvExactly(conn.get(), 4, absl::Seconds(10));
    if (got.ok()) {
      (void)testing::SendAll(conn.get(), *got);
    }
  });
  EXPECT_THAT(EchoThrough("back"), IsOk());
  app.join();
}

TEST_F(FaultTest, PeerResetMidStreamFreesTheConnection) {
  StartSidecar(app_.port());
  // Resets from the app's side of the outbound listener, mid-transfer.
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(outbound_port_);
    ASSERT_THAT(conn, IsOk());
    ASSERT_THAT(testing::SendAll(conn->get(), testing::RandomBytes(256 * 1024)), IsOk());
    Reset(*std::move(conn));
  }
  // Resets from a TLS peer of the inbound listener, after its handshake and some data.
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<std::unique_ptr<testing::TlsClient>> tls =
        testing::TlsClient::Connect(inbound_port_, AsIdentity(ca_.Issue(kFrontend)), ca_.RootPem());
    ASSERT_THAT(tls, IsOk());
    ASSERT_THAT((*tls)->Write(testing::RandomBytes(64 * 1024)), IsOk());
    tls->reset();  // closes without close_notify; the kernel sends a FIN or a reset
  }
  EXPECT_TRUE(testing::WaitFor([&] { return Active() == 0; }, absl::Seconds(10)))
      << "connections left open: " << Active();
  EXPECT_TRUE(StillServes()) << sidecar_->process().Log();
}

TEST_F(FaultTest, GarbageIdleAndOversizedOnEverySidecarListener) {
  StartSidecar(app_.port());
  const double not_tls = sidecar_->Metric(Handshakes("inbound", "not_tls"));
  const double timeouts = sidecar_->Metric(Handshakes("inbound", "timeout"));
  // Inbound: plaintext, random bytes, an oversized record header, and idle connections (held
  // until the 1 s handshake timeout closes them).
  std::vector<base::UniqueFd> idle;
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(inbound_port_);
    ASSERT_THAT(conn, IsOk());
    idle.push_back(*std::move(conn));
  }
  for (const std::string& junk :
       {std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), testing::RandomBytes(4096),
        std::string("\x16\x03\x01\xff\xff", 5) + std::string(70000, 'A'),  // 64 KiB record
        std::string("\x17\x03\x03\x40\x01", 5) + std::string(16385, 'B')}) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(inbound_port_);
    ASSERT_THAT(conn, IsOk());
    (void)testing::SendAll(conn->get(), junk);  // may fail once the sidecar has closed
    // Closed with nothing, or with one TLS alert record (type 21), never application data.
    absl::StatusOr<std::string> answer = testing::RecvUntilEof(conn->get(), absl::Seconds(10));
    if (answer.ok() && !answer->empty()) {
      EXPECT_EQ(answer->front(), '\x15') << "not an alert record";
      EXPECT_LE(answer->size(), 7u);
    }
  }
  for (base::UniqueFd& conn : idle) {
    EXPECT_THAT(testing::ClosedWithoutData(conn.get(), absl::Seconds(10)), IsOk());
  }
  EXPECT_TRUE(sidecar_->WaitForMetric(Handshakes("inbound", "timeout"), timeouts + 20));
  EXPECT_GE(sidecar_->Metric(Handshakes("inbound", "not_tls")), not_tls + 4);
  EXPECT_EQ(sidecar_->Metric(Handshakes("inbound", "internal")), 0);
  // Admin: garbage and oversized requests get an error, never a crash.
  for (const std::string& junk :
       {std::string("\x00\x01\x02garbage\r\n\r\n", 14),
        "GET /" + std::string(40000, 'a') + " HTTP/1.1\r\n\r\n",
        std::string("POST /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n")}) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(sidecar_->admin_port());
    ASSERT_THAT(conn, IsOk());
    (void)testing::SendAll(conn->get(), junk);
    // An HTTP error (4xx) or a close, never a page: the admin server refuses what it cannot parse.
    absl::StatusOr<std::string> answer = testing::RecvUntilEof(conn->get(), absl::Seconds(15));
    if (answer.ok() && !answer->empty()) {
      EXPECT_TRUE(absl::StartsWith(*answer, "HTTP/1.1 4") ||
                  absl::StartsWith(*answer, "HTTP/1.0 4"))
          << answer->substr(0, 80);
    }
  }
  EXPECT_EQ(testing::HttpGet(sidecar_->admin_port(), "/certs")->status, 200);
  // Outbound: the app's bytes are relayed as they are, whatever they are.
  EXPECT_THAT(EchoThrough(testing::RandomBytes(100000)), IsOk());
  EXPECT_TRUE(StillServes()) << sidecar_->process().Log();
  EXPECT_FALSE(sidecar_->process().WaitForExit(absl::ZeroDuration()).has_value());
}

TEST_F(FaultTest, FailedHandshakeFloodDoesNotStarveGoodClients) {
  StartSidecar(app_.port());
  // Baseline: good handshakes on a quiet sidecar.
  auto good_handshake = [&]() -> absl::StatusOr<absl::Duration> {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<testing::TlsClient>> c = testing::TlsClient::Connect(
        inbound_port_, good_identity_, ca_.RootPem(), TLS1_3_VERSION, absl::Seconds(10));
    if (!c.ok()) {
      return c.status();
    }
    if (absl::Status s = (*c)->Write("ping"); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::string> back = (*c)->Read(4, absl::Seconds(10));
    if (!back.ok()) {
      return back.status();
    }
    return absl::Now() - start;
  };
  good_identity_ = AsIdentity(ca_.Issue(kFrontend));
  absl::Duration quiet_max = absl::ZeroDuration();
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<absl::Duration> d = good_handshake();
    ASSERT_THAT(d, IsOk());
    quiet_max = std::max(quiet_max, *d);
  }
  // The flood: 4 threads opening connections that send garbage or a truncated ClientHello, or
  // present an untrusted certificate, as fast as they can, for at most 3 s or 20,000 tries.
  TestCa stranger("mesh.test");
  const testing::TlsIdentity untrusted = AsIdentity(stranger.Issue(kFrontend));
  std::atomic<bool> stop{false};
  std::atomic<int> flood{0};
  std::vector<std::thread> flooders;
  for (int t = 0; t < 4; ++t) {
    flooders.emplace_back([&, t] {
      const absl::Time end = absl::Now() + absl::Seconds(3);
      while (!stop.load() && absl::Now() < end && flood.fetch_add(1) < 20000) {
        if (t == 3) {
          (void)testing::TlsClient::Connect(inbound_port_, untrusted, "", TLS1_3_VERSION,
                                            absl::Seconds(2));
          continue;
        }
        absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(inbound_port_);
        if (conn.ok()) {
          (void)testing::SendAll(conn->get(), t == 0 ? std::string("\x16\x03\x01\x02\x00", 5)
                                                     : testing::RandomBytes(512));
        }
      }
    });
  }
  int good = 0;
  absl::Duration flood_max = absl::ZeroDuration();
  std::vector<absl::Duration> during;
  const absl::Time end = absl::Now() + absl::Seconds(3);
  while (absl::Now() < end && good < 200) {
    absl::StatusOr<absl::Duration> d = good_handshake();
    ASSERT_THAT(d, IsOk()) << "a good client failed during the flood";
    during.push_back(*d);
    flood_max = std::max(flood_max, *d);
    ++good;
  }
  stop.store(true);
  for (std::thread& t : flooders) {
    t.join();
  }
  std::sort(during.begin(), during.end());
  std::printf("flood: %d bad connections, %d good handshakes, good p50 %s max %s (quiet max %s)\n",
              flood.load(), good, absl::FormatDuration(during[during.size() / 2]).c_str(),
              absl::FormatDuration(flood_max).c_str(), absl::FormatDuration(quiet_max).c_str());
  EXPECT_GE(good, 5);
  // Not a benchmark: a ceiling far above a normal handshake (milliseconds here) and far below
  // the handshake timeout a starved client would run into.
  EXPECT_LT(flood_max, absl::Seconds(1));
  EXPECT_EQ(sidecar_->Metric(Handshakes("inbound", "internal")), 0);
  EXPECT_TRUE(StillServes());
}

// HoldHalfRequests opens `count` connections to `port` and sends each the start of a request
// that never completes (slowloris), keeping them open.
std::vector<base::UniqueFd> HoldHalfRequests(uint16_t port, int count, const std::string& start) {
  std::vector<base::UniqueFd> held;
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port);
    if (conn.ok() && testing::SendAll(conn->get(), start).ok()) {
      held.push_back(*std::move(conn));
    }
  }
  return held;
}

// ExpectPromptAnswer GETs `path` from an admin port and expects a 200 within a second.
void ExpectPromptAnswer(uint16_t admin_port, const std::string& path) {
  const absl::Time start = absl::Now();
  absl::StatusOr<testing::HttpResult> r = testing::HttpGet(admin_port, path);
  ASSERT_THAT(r, IsOk()) << path;
  EXPECT_EQ(r->status, 200) << path;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << path;
}

TEST_F(FaultTest, SlowlorisOnEverySidecarListener) {
  StartSidecar(app_.port());
  const std::string evicted = R"(meshtls_admin_rejected_total{reason="evicted"})";
  const std::string admin_timeouts = R"(meshtls_admin_rejected_total{reason="timeout"})";
  const double inbound_timeouts = sidecar_->Metric(Handshakes("inbound", "timeout"));
  // 100 half-sent admin requests (the cap is 64) and 20 half-sent ClientHellos.
  std::vector<base::UniqueFd> admin =
      HoldHalfRequests(sidecar_->admin_port(), 100, "GET /metrics HTTP/1.1\r\nHost: x\r\n");
  std::vector<base::UniqueFd> inbound =
      HoldHalfRequests(inbound_port_, 20, std::string("\x16\x03\x01\x00", 4));
  // A ClientHello trickled a byte every 100 ms: the handshake deadline (1 s) counts from the
  // accept, so the trickle does not extend it.
  absl::StatusOr<base::UniqueFd> trickle = testing::TcpConnect(inbound_port_);
  ASSERT_THAT(trickle, IsOk());
  const absl::Time trickle_start = absl::Now();
  // A well-formed start: a 512-byte handshake record holding a ClientHello, then zeros.
  const std::string hello_start =
      std::string("\x16\x03\x01\x02\x00\x01", 6) + std::string(94, '\0');
  bool trickle_closed = false;
  for (size_t i = 0; i < hello_start.size() && !trickle_closed; ++i) {
    trickle_closed = !testing::SendAll(trickle->get(), hello_start.substr(i, 1)).ok() ||
                     testing::ClosedWithoutData(trickle->get(), absl::Milliseconds(100)).ok();
  }
  EXPECT_TRUE(trickle_closed);
  EXPECT_LT(absl::Now() - trickle_start, absl::Seconds(5));
  // Scrapes, probes and traffic go on, promptly.
  for (int i = 0; i < 5; ++i) {
    ExpectPromptAnswer(sidecar_->admin_port(), "/readyz");
    ExpectPromptAnswer(sidecar_->admin_port(), "/metrics");
  }
  EXPECT_THAT(EchoThrough(testing::RandomBytes(10000)), IsOk());
  EXPECT_GE(sidecar_->Metric(evicted), 36);
  for (base::UniqueFd& conn : inbound) {
    EXPECT_THAT(testing::ClosedWithoutData(conn.get(), absl::Seconds(10)), IsOk());
  }
  EXPECT_TRUE(sidecar_->WaitForMetric(Handshakes("inbound", "timeout"), inbound_timeouts + 21))
      << sidecar_->Metric(Handshakes("inbound", "timeout")) << " timeouts\n"
      << sidecar_->process().Log();
  // The admin connections still held are closed at the 5 s request deadline.
  EXPECT_TRUE(sidecar_->WaitForMetric(admin_timeouts, 1));
  EXPECT_TRUE(StillServes()) << sidecar_->process().Log();
}

TEST_F(FaultTest, SlowlorisOnCertmgrPorts) {
  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, testing::CertmgrProcess::Start(dir_, "mesh.test"));
  std::vector<base::UniqueFd> admin =
      HoldHalfRequests(certmgr->admin_port(), 100, "GET /metrics HTTP/1.1\r\nHost: x\r\n");
  // The gRPC port speaks TLS: half a ClientHello record header.
  std::vector<base::UniqueFd> grpc =
      HoldHalfRequests(certmgr->grpc_port(), 100, std::string("\x16\x03\x01\x00", 4));
  ExpectPromptAnswer(certmgr->admin_port(), "/readyz");
  ExpectPromptAnswer(certmgr->admin_port(), "/metrics");
  const absl::Time start = absl::Now();
  EXPECT_THAT(SignAsWeb(*certmgr), IsOk());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_GE(testing::ScrapeMetric(certmgr->admin_port(),
                                  R"(meshtls_admin_rejected_total{reason="evicted"})"),
            36);
  // The half handshakes are cut at certmgr's 10 s handshake deadline (gRPC's default is 120 s).
  for (base::UniqueFd& conn : grpc) {
    EXPECT_THAT(testing::ClosedWithoutData(conn.get(), absl::Seconds(20)), IsOk());
  }
  EXPECT_FALSE(certmgr->process().WaitForExit(absl::ZeroDuration()).has_value());
}

TEST_F(FaultTest, OutOfFileDescriptorsPausesAndRecovers) {
#ifdef MESHTLS_UBSAN
  // UBSan's vptr check reads the vtable prefix only after sanitizer_common's
  // IsAccessibleMemoryRange says it may, and that function (POSIX) writes the range into a
  // pipe() it opens on the spot: when pipe() fails (EMFILE here) it answers "not accessible",
  // and UBSan reports "invalid vptr ... memory cannot be printed" on a live object (seen in
  // EventLoop::Run). So the report is the runtime's, not a use-after-free: the normal build
  // runs this test, and an ASan-only sidecar ran it clean.
  GTEST_SKIP() << "UBSan cannot check types once the process is out of descriptors";
#endif
  // 40 descriptors: enough to start and serve a few connections, not the 30 held below.
  StartSidecar(app_.port(), {"/usr/bin/prlimit", "--nofile=40:40", "--"});
  std::vector<base::UniqueFd> held;
  for (int i = 0; i < 30; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(outbound_port_);
    if (conn.ok()) {
      held.push_back(*std::move(conn));
    }
  }
  // The sidecar ran out: its log says so (once per pause, rate-limited) and it did not exit.
  EXPECT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(sidecar_->process().Log(), "out of file descriptors"); },
      absl::Seconds(10)))
      << sidecar_->process().Log();
  EXPECT_FALSE(sidecar_->process().WaitForExit(absl::ZeroDuration()).has_value());
  held.clear();
  // Descriptors come back: it serves again, by itself.
  EXPECT_TRUE(testing::WaitFor([&] { return EchoThrough("again").ok(); }, absl::Seconds(20)))
      << sidecar_->process().Log();
  EXPECT_EQ(testing::HttpGet(sidecar_->admin_port(), "/readyz")->status, 200);
}

TEST_F(FaultTest, GarbageAndIdleConnectionsOnCertmgrPorts) {
  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, testing::CertmgrProcess::Start(dir_, "mesh.test"));
  std::vector<base::UniqueFd> idle;
  for (uint16_t port : {certmgr->grpc_port(), certmgr->admin_port()}) {
    for (const std::string& junk :
         {std::string("GET / HTTP/1.1\r\n\r\n"), testing::RandomBytes(8192),
          std::string("\x16\x03\x01\xff\xff", 5) + std::string(70000, 'C'),
          std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + testing::RandomBytes(1024)}) {
      absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(port);
      ASSERT_THAT(conn, IsOk());
      (void)testing::SendAll(conn->get(), junk);
      (void)testing::RecvUntilEof(conn->get(), absl::Seconds(15));
    }
  }
  for (int i = 0; i < 20; ++i) {  // idle TCP connections to the gRPC port
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(certmgr->grpc_port());
    ASSERT_THAT(conn, IsOk());
    idle.push_back(*std::move(conn));
  }
  // certmgr still signs, and still answers its admin port.
  EXPECT_THAT(SignAsWeb(*certmgr), IsOk());
  EXPECT_EQ(testing::HttpGet(certmgr->admin_port(), "/readyz")->status, 200);
  EXPECT_FALSE(certmgr->process().WaitForExit(absl::ZeroDuration()).has_value());
}

// EpollEcho is an echo app for many connections at once: one thread, one epoll set, every
// connection non-blocking (the test's EchoServer has a thread per connection).
class EpollEcho {
 public:
  EpollEcho() : listen_fd_(testing::ListenLoopback(&port_, 4096)) {
    ::fcntl(listen_fd_.get(), F_SETFL, ::fcntl(listen_fd_.get(), F_GETFL) | O_NONBLOCK);
    thread_ = std::thread([this] { Run(); });
  }
  ~EpollEcho() {
    stop_.store(true);
    thread_.join();
  }
  uint16_t port() const { return port_; }

 private:
  void Run() {
    base::UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    epoll_event ev{.events = EPOLLIN, .data = {.fd = listen_fd_.get()}};
    ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listen_fd_.get(), &ev);
    std::vector<epoll_event> events(256);
    char buffer[4096];
    while (!stop_.load()) {
      const int n = ::epoll_wait(epoll.get(), events.data(), events.size(), 50);
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == listen_fd_.get()) {
          int c;
          while ((c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
            epoll_event cev{.events = EPOLLIN, .data = {.fd = c}};
            ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, c, &cev);
          }
          continue;
        }
        const ssize_t got = ::read(fd, buffer, sizeof(buffer));
        if (got <= 0) {
          ::close(fd);  // also leaves the epoll set
          continue;
        }
        // Test messages are small: a loopback socket takes them whole.
        (void)::write(fd, buffer, static_cast<size_t>(got));
      }
    }
  }

  uint16_t port_ = 0;  // declared first: ListenLoopback fills it while listen_fd_ is built
  base::UniqueFd listen_fd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// 10,000 connections open at once through a pair of sidecars (frontend: outbound listener;
// backend: inbound listener in front of the app), each echoing its own message. Each
// connection holds 2 descriptors in each sidecar and 2 in this process (the client's end and
// the app's), so the count is capped where RLIMIT_NOFILE's hard limit would be reached (this
// sandbox allows 20,000 per process, and raising it needs CAP_SYS_RESOURCE); sanitizer builds
// run at most MESHTLS_CONCURRENT_CONNECTIONS (tests/CMakeLists.txt).
TEST_F(FaultTest, TenThousandConcurrentConnectionsThroughAPair) {
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  limit.rlim_cur = limit.rlim_max;  // the soft limit may rise to the hard one without privilege
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &limit), 0);
  const int connections = static_cast<int>(std::min<rlim_t>(
      MESHTLS_CONCURRENT_CONNECTIONS, (std::min<rlim_t>(limit.rlim_max, 1 << 20) - 1000) / 2));
  EpollEcho app;
  const std::string limits = absl::StrCat(
      "limits: {handshake_timeout: 10s, connect_timeout: 5s, max_connections: ", 2 * connections,
      "}\n");
  // The sidecars inherit the raised soft limit from this process.
  const testing::IssuedLeaf backend = ca_.Issue(kBackend, absl::Hours(1));
  const testing::IssuedLeaf frontend = ca_.Issue(kFrontend, absl::Hours(1));
  const std::string bundle = dir_.Write("bundle.pem", ca_.RootPem());
  auto files = [&](const testing::IssuedLeaf& leaf, const std::string& name) {
    return testing::FilesConfigHead(dir_, name, leaf, bundle) + limits;
  };
  // The backend first: the frontend's config names the backend's inbound port.
  std::unique_ptr<SidecarProcess> backend_sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      backend_sidecar,
      SidecarProcess::Start(
          dir_, "backend",
          absl::StrCat(files(backend, "backend"), "inbound:\n  - name: in\n    listen: 127.0.0.1:0",
                       "\n    forward: 127.0.0.1:", app.port(), "\n    allow: [", kFrontend,
                       "]\n")));
  inbound_port_ = backend_sidecar->port("inbound.in");
  std::unique_ptr<SidecarProcess> frontend_sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      frontend_sidecar,
      SidecarProcess::Start(dir_, "frontend",
                            absl::StrCat(files(frontend, "frontend"),
                                         "outbound:\n  - name: out\n    listen: 127.0.0.1:0",
                                         "\n    connect: 127.0.0.1:", inbound_port_,
                                         "\n    expect: [", kBackend, "]\n")));
  outbound_port_ = frontend_sidecar->port("outbound.out");
  ASSERT_TRUE(backend_sidecar->WaitReady()) << backend_sidecar->process().Log();
  ASSERT_TRUE(frontend_sidecar->WaitReady()) << frontend_sidecar->process().Log();

  std::vector<base::UniqueFd> conns;
  conns.reserve(connections);
  const absl::Time start = absl::Now();
  for (int i = 0; i < connections; ++i) {
    absl::StatusOr<base::UniqueFd> c = testing::TcpConnect(outbound_port_, absl::Seconds(10));
    ASSERT_THAT(c, IsOk()) << "connection " << i;
    conns.push_back(*std::move(c));
  }
  for (int i = 0; i < connections; ++i) {
    ASSERT_THAT(testing::SendAll(conns[i].get(), absl::StrCat("message ", 100000 + i)), IsOk());
  }
  for (int i = 0; i < connections; ++i) {
    absl::StatusOr<std::string> back = testing::RecvExactly(conns[i].get(), 14, absl::Seconds(30));
    ASSERT_THAT(back, IsOk()) << "connection " << i << ": " << frontend_sidecar->process().Log();
    ASSERT_EQ(*back, absl::StrCat("message ", 100000 + i));
  }
  const absl::Duration all_echoed = absl::Now() - start;
  // All of them open at once, on both sides of the pair.
  EXPECT_EQ(frontend_sidecar->Metric(R"(meshtls_connections_active{direction="outbound"})"),
            connections);
  EXPECT_EQ(backend_sidecar->Metric(R"(meshtls_connections_active{direction="inbound"})"),
            connections);
  std::printf(
      "%d concurrent connections through the pair, all echoed in %s; RSS frontend %lld KiB, "
      "backend %lld KiB\n",
      connections, absl::FormatDuration(all_echoed).c_str(),
      static_cast<long long>(testing::RssKiB(frontend_sidecar->process().pid())),
      static_cast<long long>(testing::RssKiB(backend_sidecar->process().pid())));
  conns.clear();
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return frontend_sidecar->Metric(R"(meshtls_connections_active{direction="outbound"})") ==
                   0 &&
               backend_sidecar->Metric(R"(meshtls_connections_active{direction="inbound"})") == 0;
      },
      absl::Seconds(60)));
  EXPECT_EQ(backend_sidecar->Metric(Handshakes("inbound", "internal")), 0);
  EXPECT_EQ(backend_sidecar->Metric(Handshakes("inbound", "success")),
            frontend_sidecar->Metric(Handshakes("outbound", "success")));
}

TEST_F(FaultTest, CertmgrKilledAndRestartedUnderTrafficAndRenewals) {
  // A real mesh: certmgr, and one sidecar (its pair loops through itself) renewing 4 s
  // certificates about every 2 s.
  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(
      certmgr, testing::CertmgrProcess::Start(
                   dir_, "mesh.test", "issuance: {default_ttl: 4s, min_ttl: 2s, backdate: 0}\n"));
  MESHTLS_ASSERT_OK_AND_MOVE(
      sidecar_,
      SidecarProcess::Start(
          dir_, "sidecar",
          absl::StrCat("trust_domain: mesh.test\n",
                       certmgr->SidecarIdentityYaml(certmgr->TokenFile(kBackend, "backend.token")),
                       "tls: {close_on_expiry: false}\n", LoopListeners(app_.port(), {kBackend}))));
  ASSERT_NO_FATAL_FAILURE(ListenersStarted());
  ASSERT_TRUE(sidecar_->WaitReady()) << sidecar_->process().Log();
  const std::string renewed = R"(meshtls_cert_renewals_total{result="success"})";
  testing::TrafficLoad load(outbound_port_, /*long_lived=*/2);
  for (int round = 0; round < 3; ++round) {
    const double before = sidecar_->Metric(renewed);
    certmgr->process().Signal(SIGKILL);
    ASSERT_EQ(certmgr->process().WaitForExit(absl::Seconds(10)), 128 + SIGKILL);
    ASSERT_THAT(certmgr->Restart(), IsOk());
    // Renewals go on against the restarted certmgr (same CA directory, same port).
    EXPECT_TRUE(sidecar_->WaitForMetric(renewed, before + 2, absl::Seconds(20)))
        << "round " << round << ": " << sidecar_->process().Log();
  }
  load.Stop();
  std::printf("certmgr killed 3 times: %d new connections, %llu bytes checked, %d failures\n",
              load.new_connections(), static_cast<unsigned long long>(load.bytes_checked()),
              load.failures());
  EXPECT_EQ(load.failures(), 0) << load.first_failure();
  EXPECT_GT(load.new_connections(), 10);
  EXPECT_EQ(testing::HttpGet(sidecar_->admin_port(), "/readyz")->status, 200);
}

}  // namespace
}  // namespace meshtls

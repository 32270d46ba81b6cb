// The pooled transport end to end: real meshtls-sidecar processes on loopback (files identities
// minted at test time), a frontend whose outbound listener has `transport: pooled`, a backend
// whose inbound listener takes the pooled connection (ALPN meshtls-h2), and an echo app; plus
// Debian's python3-h2 (tests/integration/h2_peer.py) as an independent HTTP/2 client and server.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/testing/dns_server.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"
#include "tests/testing/traffic_load.h"

#ifndef MESHTLS_SOURCE_DIR
#error "MESHTLS_SOURCE_DIR must name the source tree (tests/integration/h2_peer.py)"
#endif

namespace meshtls {
namespace {

using testing::Handshakes;
using testing::IsOk;
using testing::SidecarProcess;
using testing::TestCa;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";
// Debian's interpreter, where python3-h2 is installed (not a user's pyenv or venv).
constexpr char kPython[] = "/usr/bin/python3";

std::string Streams(const char* direction, const char* result) {
  return absl::StrCat("meshtls_pooled_streams_total{direction=\"", direction, "\",result=\"",
                      result, "\"}");
}

std::string PooledConnections(const char* direction) {
  return absl::StrCat("meshtls_pooled_connections{direction=\"", direction, "\"}");
}

std::string H2Peer() { return absl::StrCat(MESHTLS_SOURCE_DIR, "/tests/integration/h2_peer.py"); }

class PooledTest : public ::testing::Test {
 protected:
  void SetUp() override { bundle_ = dir_.Write("bundle.pem", ca_.RootPem()); }

  // StartBackend runs the backend sidecar: an inbound listener "http" in front of the echo app
  // (or `app_port`, at `forward_host`), allowing the frontend.
  void StartBackend(const std::string& extra = "", uint16_t app_port = 0,
                    const std::string& forward_host = "127.0.0.1") {
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_,
        SidecarProcess::Start(
            dir_, "backend",
            absl::StrCat(testing::FilesConfigHead(dir_, "backend", backend_leaf_, bundle_),
                         "workers: 1\ninbound:\n  - name: http\n    listen: 127.0.0.1:0",
                         "\n    forward: ", forward_host, ":",
                         app_port == 0 ? app_.port() : app_port, "\n    allow: [", kFrontend, "]\n",
                         extra)));
    backend_port_ = backend_->port("inbound.http");
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
  }

  // StartFrontend runs the frontend sidecar: an outbound listener "backend" with the pooled
  // transport to `connect_ip`:`connect_port` (default: the backend's inbound listener).
  void StartFrontend(const std::string& extra = "", uint16_t connect_port = 0,
                     const std::string& connect_ip = "127.0.0.1") {
    MESHTLS_ASSERT_OK_AND_MOVE(
        frontend_,
        SidecarProcess::Start(
            dir_, "frontend",
            absl::StrCat(testing::FilesConfigHead(dir_, "frontend", frontend_leaf_, bundle_),
                         "workers: 1\noutbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                         "\n    connect: ", connect_ip, ":",
                         connect_port == 0 ? backend_port_ : connect_port, "\n    expect: [",
                         kBackend, "]\n    transport: pooled\n", extra)));
    frontend_port_ = frontend_->port("outbound.backend");
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  void StartMesh(const std::string& extra = "") {
    ASSERT_NO_FATAL_FAILURE(StartBackend(extra));
    ASSERT_NO_FATAL_FAILURE(StartFrontend(extra));
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

  // H2PeerArgs is h2_peer.py's command line: `head` (the mode and where it connects or
  // listens), then `who`'s certificate and key and the trust bundle; the mode's own arguments
  // follow.
  std::vector<std::string> H2PeerArgs(std::vector<std::string> head, const std::string& who,
                                      const testing::IssuedLeaf& leaf) {
    for (std::string& file : Credentials(who, leaf)) {
      head.push_back(std::move(file));
    }
    head.push_back(bundle_);
    return head;
  }

  // StartH2Peer starts h2_peer.py with `args` (null, with a test failure, if it cannot start).
  std::unique_ptr<testing::Subprocess> StartH2Peer(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kPython, H2Peer()};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string log = dir_.File(absl::StrCat("h2_peer.", ++h2_runs_, ".log"));
    absl::StatusOr<std::unique_ptr<testing::Subprocess>> peer =
        testing::Subprocess::Start(argv, log);
    EXPECT_THAT(peer, IsOk());
    return peer.ok() ? *std::move(peer) : nullptr;
  }

  // RunH2Peer runs h2_peer.py with `args` to completion (bounded) and returns its output.
  std::string RunH2Peer(const std::vector<std::string>& args) {
    std::unique_ptr<testing::Subprocess> peer = StartH2Peer(args);
    if (peer == nullptr) {
      return "";
    }
    std::optional<int> code = peer->WaitForExit(absl::Seconds(30));
    EXPECT_EQ(code, 0) << peer->Log();
    return peer->Log();
  }

  // Credentials writes an identity's certificate and key for h2_peer.py: {cert, key}.
  std::vector<std::string> Credentials(const std::string& name, const testing::IssuedLeaf& leaf) {
    return {dir_.Write(name + ".peer.crt", leaf.ChainPem()),
            dir_.Write(name + ".peer.key", leaf.KeyPem(), 0600)};
  }

  std::string Logs() {
    auto metrics = [](SidecarProcess* p) {
      std::string out;
      if (p == nullptr) {
        return out;
      }
      absl::StatusOr<testing::HttpResult> r = testing::HttpGet(p->admin_port(), "/metrics");
      if (r.ok()) {
        for (absl::string_view line : absl::StrSplit(r->body, '\n')) {
          if (absl::StrContains(line, "pooled") || absl::StrContains(line, "handshakes_total")) {
            if (!absl::EndsWith(line, " 0") && !absl::StrContains(line, "_bucket")) {
              absl::StrAppend(&out, line, "\n");
            }
          }
        }
      }
      return out;
    };
    return absl::StrCat("frontend:\n", frontend_ ? frontend_->process().Log() : "",
                        metrics(frontend_.get()), "\nbackend:\n",
                        backend_ ? backend_->process().Log() : "", metrics(backend_.get()));
  }

  testing::TempDir dir_;
  TestCa ca_{"mesh.test"};
  testing::IssuedLeaf frontend_leaf_ = ca_.Issue(kFrontend);
  testing::IssuedLeaf backend_leaf_ = ca_.Issue(kBackend);
  std::string bundle_;
  testing::EchoServer app_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
  uint16_t backend_port_ = 0;
  uint16_t frontend_port_ = 0;
  int h2_runs_ = 0;
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
  EXPECT_EQ(frontend_->Metric(PooledConnections("outbound")), 1);
  EXPECT_EQ(backend_->Metric(PooledConnections("inbound")), 1);
  EXPECT_EQ(app_.connections(), 200);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return backend_->Metric(R"(meshtls_pooled_streams_active{direction="inbound"})") == 0 &&
               frontend_->Metric(R"(meshtls_pooled_streams_active{direction="outbound"})") == 0 &&
               frontend_->Metric(R"(meshtls_connections_active{direction="outbound"})") == 0;
      },
      absl::Seconds(10)))
      << Logs();
  EXPECT_GE(frontend_->Metric(R"(meshtls_pooled_stream_setup_seconds_count{direction="outbound"})"),
            200);
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

// Thousands of streams, many at once, opened and closed: every byte checked, and afterwards
// nothing is left open (under the sanitizers, the exit is checked for leaks too).
TEST_F(PooledTest, ThousandsOfStreamsOpenAndClose) {
  StartMesh("pooled: {max_streams_per_connection: 100, max_connections_per_peer: 3}\n");
  constexpr int kRounds = 10;
  constexpr int kAtOnce = 300;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<base::UniqueFd> open;
    for (int i = 0; i < kAtOnce; ++i) {
      absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
      ASSERT_THAT(conn, IsOk());
      ASSERT_THAT(testing::SendAll(conn->get(), absl::StrCat("stream ", round, " ", i, "\n")),
                  IsOk());
      open.push_back(*std::move(conn));
    }
    for (int i = 0; i < kAtOnce; ++i) {
      const std::string want = absl::StrCat("stream ", round, " ", i, "\n");
      absl::StatusOr<std::string> echoed =
          testing::RecvExactly(open[i].get(), want.size(), absl::Seconds(20));
      ASSERT_THAT(echoed, IsOk()) << "round " << round << " stream " << i << "\n" << Logs();
      ASSERT_EQ(*echoed, want);
    }
  }
  EXPECT_EQ(frontend_->Metric(Streams("outbound", "success")), kRounds * kAtOnce);
  EXPECT_EQ(backend_->Metric(Streams("inbound", "success")), kRounds * kAtOnce);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return backend_->Metric(R"(meshtls_pooled_streams_active{direction="inbound"})") == 0 &&
               frontend_->Metric(R"(meshtls_pooled_streams_active{direction="outbound"})") == 0;
      },
      absl::Seconds(20)))
      << Logs();
  // 300 at once, 100 streams per connection: more connections, as many as the limit allows.
  EXPECT_EQ(frontend_->Metric(PooledConnections("outbound")), 3);
}

// One app that never reads holds back its own stream only: its window fills, and another app
// connection on the same pooled connection still gets through at once.
TEST_F(PooledTest, SlowReaderDoesNotStallOtherStreams) {
  StartMesh("pooled: {max_connections_per_peer: 1}\n");
  absl::StatusOr<base::UniqueFd> stuck = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(stuck, IsOk());
  ASSERT_NO_FATAL_FAILURE(RoundTrip("first"));  // the pooled connection is up
  // Write until nothing moves for 300 ms: the echo app blocks on writing back to us (we never
  // read), stops reading, and the stream's window fills.
  ASSERT_EQ(::fcntl(stuck->get(), F_SETFL, O_NONBLOCK), 0);
  const std::string chunk(64 * 1024, 's');
  size_t sent = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    const ssize_t n = ::send(stuck->get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
    pollfd p{.fd = stuck->get(), .events = POLLOUT, .revents = 0};
    if (::poll(&p, 1, 300) == 0) {
      break;  // stalled
    }
  }
  ASSERT_LT(absl::Now(), give_up) << "the stuck stream never stalled";
  EXPECT_GT(sent, 256u * 1024);  // at least a window's worth went in
  // The other streams on the same connection move.
  for (int i = 0; i < 20; ++i) {
    ASSERT_NO_FATAL_FAILURE(RoundTrip(absl::StrCat("meanwhile ", i)));
  }
  EXPECT_EQ(frontend_->Metric(PooledConnections("outbound")), 1);
  // And the stuck one loses nothing once its reader wakes up.
  ASSERT_EQ(::fcntl(stuck->get(), F_SETFL, 0), 0);
  absl::StatusOr<std::string> echoed = testing::RecvExactly(stuck->get(), sent, absl::Seconds(30));
  ASSERT_THAT(echoed, IsOk()) << Logs();
  EXPECT_EQ(*echoed, std::string(sent, 's'));
}

// python3-h2 as the client of the backend's inbound listener: a CONNECT to the listener's port
// is relayed to the app; anything else gets a status, and is counted.
TEST_F(PooledTest, IndependentClientAndForbiddenTargets) {
  StartBackend();
  std::vector<std::string> args =
      H2PeerArgs({"client", "127.0.0.1", absl::StrCat(backend_port_)}, "frontend", frontend_leaf_);
  const std::string good = absl::StrCat("127.0.0.1:", backend_port_);
  const std::string other_port = absl::StrCat("127.0.0.1:", backend_port_ == 1 ? 2 : 1);
  args.insert(args.end(), {good, other_port, "not-an-address", "app.example:80"});
  const std::string out = RunH2Peer(args);
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("status ", good, " 200"))) << out;
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("echo ", good, " ok"))) << out;
  EXPECT_TRUE(absl::StrContains(out, absl::StrCat("status ", other_port, " 403"))) << out;
  EXPECT_TRUE(absl::StrContains(out, "status not-an-address 400")) << out;
  EXPECT_TRUE(absl::StrContains(out, "status app.example:80 400")) << out;
  EXPECT_EQ(backend_->Metric(Streams("inbound", "success")), 1);
  EXPECT_EQ(backend_->Metric(Streams("inbound", "forbidden_target")), 1);
  EXPECT_EQ(backend_->Metric(Streams("inbound", "malformed")), 2);
  EXPECT_EQ(app_.connections(), 1);  // nothing but the allowed stream reached the app
}

// An HTTP/2 client that is not a sidecar (ALPN h2 alone, an app's own gRPC client with a
// workload certificate, say) reaching an inbound listener is relayed to the app as before: only
// `meshtls-h2` selects the pooled transport outside the pooled port.
TEST_F(PooledTest, PlainH2ClientIsRelayedNotPooled) {
  StartBackend();
  const std::string out = RunH2Peer(
      H2PeerArgs({"h2only", "127.0.0.1", absl::StrCat(backend_port_)}, "frontend", frontend_leaf_));
  EXPECT_TRUE(absl::StrContains(out, "alpn None")) << out;
  EXPECT_TRUE(absl::StrContains(out, "echo ok")) << out;
  EXPECT_EQ(app_.connections(), 1);
}

// A client that opens more streams than the backend allows at once: the extra ones are
// refused (REFUSED_STREAM, which a client may retry), the rest served.
TEST_F(PooledTest, StreamsBeyondTheLimitAreRefused) {
  StartBackend("pooled: {max_streams_per_connection: 4}\n");
  std::vector<std::string> args =
      H2PeerArgs({"client", "127.0.0.1", absl::StrCat(backend_port_)}, "frontend", frontend_leaf_);
  const std::string good = absl::StrCat("127.0.0.1:", backend_port_);
  for (int i = 0; i < 7; ++i) {
    args.push_back(good);
  }
  const std::string out = RunH2Peer(args);
  int ok = 0, refused = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    ok += absl::StartsWith(line, "echo ") && absl::EndsWith(line, " ok") ? 1 : 0;
    refused += absl::EndsWith(line, " RESET:7") ? 1 : 0;  // REFUSED_STREAM
  }
  EXPECT_EQ(ok, 4) << out;
  EXPECT_EQ(refused, 3) << out;
  EXPECT_EQ(app_.connections(), 4);
  // Counted whether meshtls or nghttp2 (beyond the SETTINGS it sent) refused them.
  EXPECT_TRUE(testing::WaitFor([&] { return backend_->Metric(Streams("inbound", "refused")) == 3; },
                               absl::Seconds(5)))
      << Logs();
}

// python3-h2 as the server of the frontend's pooled outbound listener: meshtls' client side
// speaks HTTP/2 another implementation understands.
TEST_F(PooledTest, IndependentServer) {
  std::unique_ptr<testing::Subprocess> server =
      StartH2Peer(H2PeerArgs({"server", "0"}, "backend", backend_leaf_));
  ASSERT_NE(server, nullptr);
  uint16_t port = 0;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        for (absl::string_view line : absl::StrSplit(server->Log(), '\n')) {
          if (absl::ConsumePrefix(&line, "listening ")) {
            int p = 0;
            if (absl::SimpleAtoi(line, &p)) {
              port = static_cast<uint16_t>(p);
              return true;
            }
          }
        }
        return false;
      },
      absl::Seconds(10)))
      << server->Log();
  StartFrontend("", port);
  for (int i = 0; i < 3; ++i) {
    ASSERT_NO_FATAL_FAILURE(RoundTrip(absl::StrCat("to python ", i)));
  }
  EXPECT_TRUE(absl::StrContains(server->Log(), absl::StrCat("connect 127.0.0.1:", port)))
      << server->Log();
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), 1);
  server->Signal(SIGKILL);
  (void)server->WaitForExit(absl::Seconds(5));
}

// SIGTERM on the backend under load: its pooled connection says GOAWAY, the streams it carries
// go on to their end, and every new app connection either completes or is refused cleanly
// (never a short or wrong echo).
TEST_F(PooledTest, GoawayUnderLoad) {
  StartMesh("limits: {drain_timeout: 20s}\n");
  std::vector<base::UniqueFd> held;
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
    ASSERT_THAT(conn, IsOk());
    ASSERT_THAT(testing::SendAll(conn->get(), "before\n"), IsOk());
    ASSERT_THAT(testing::RecvExactly(conn->get(), 7, absl::Seconds(10)), IsOk());
    held.push_back(*std::move(conn));
  }
  // New connections all along: each one's echo is whole, or it is refused before any byte.
  std::atomic<bool> stop{false};
  std::atomic<int> completed{0}, refused{0}, broken{0};
  std::string first_broken;
  std::thread churn([&] {
    for (int i = 0; i < 100000 && !stop.load(); ++i) {
      absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
      if (!conn.ok()) {
        refused.fetch_add(1);
        continue;
      }
      const std::string want = absl::StrCat("churn ", i, "\n");
      if (!testing::SendAll(conn->get(), want).ok()) {
        refused.fetch_add(1);  // reset before we could write: refused
        continue;
      }
      ::shutdown(conn->get(), SHUT_WR);  // the echo app echoes, then closes
      absl::StatusOr<std::string> got = testing::RecvUntilEof(conn->get(), absl::Seconds(10), 64);
      if (got.ok() && got->empty()) {
        refused.fetch_add(1);
      } else if (!got.ok() && absl::StrContains(got.status().message(), "reset")) {
        refused.fetch_add(1);  // reset before any byte came: RecvUntilEof read nothing
      } else if (got.ok() && *got == want) {
        completed.fetch_add(1);
      } else {
        if (broken.fetch_add(1) == 0) {
          first_broken = got.ok() ? *got : std::string(got.status().message());
        }
      }
    }
  });
  auto churn_running = [&] { return completed.load() > 20; };
  ASSERT_TRUE(testing::WaitFor(churn_running, absl::Seconds(10))) << Logs();
  backend_->process().Signal(SIGTERM);
  // Draining (readiness 503): GOAWAY is sent, the held streams are still open.
  ASSERT_TRUE(testing::WaitFor([&] { return !backend_->WaitReady(absl::Milliseconds(1)); },
                               absl::Seconds(10)));
  // The held streams are still served while the backend drains.
  for (base::UniqueFd& conn : held) {
    ASSERT_THAT(testing::SendAll(conn.get(), "during\n"), IsOk());
    absl::StatusOr<std::string> echoed = testing::RecvExactly(conn.get(), 7, absl::Seconds(10));
    ASSERT_THAT(echoed, IsOk()) << Logs();
    EXPECT_EQ(*echoed, "during\n");
    ::shutdown(conn.get(), SHUT_WR);
    absl::StatusOr<std::string> rest = testing::RecvUntilEof(conn.get(), absl::Seconds(10), 16);
    ASSERT_THAT(rest, IsOk());
    EXPECT_EQ(*rest, "");
  }
  std::optional<int> code = backend_->process().WaitForExit(absl::Seconds(30));
  stop.store(true);
  churn.join();
  EXPECT_EQ(code, 0) << backend_->process().Log();
  EXPECT_EQ(broken.load(), 0) << first_broken << "\n" << Logs();
  EXPECT_GT(completed.load(), 20);
  EXPECT_TRUE(absl::StrContains(backend_->process().Log(), "drained")) << Logs();
}

// A peer that stops answering (SIGSTOP: its socket stays open, nothing comes back) is noticed by
// the PING keepalive: the pooled connection closes, and the app connections on it are reset at
// once instead of hanging until some timeout of the app's.
TEST_F(PooledTest, DeadPeerIsNoticedAndItsStreamsFailFast) {
  StartMesh("pooled: {keepalive_interval: 300ms, keepalive_timeout: 300ms}\n");
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "alive?"), IsOk());
  ASSERT_THAT(testing::RecvExactly(conn->get(), 6, absl::Seconds(10)), IsOk());
  backend_->process().Signal(SIGSTOP);
  const absl::Time stopped = absl::Now();
  // Nothing more will come: the connection must end (reset) well within 5 s.
  absl::StatusOr<std::string> rest = testing::RecvUntilEof(conn->get(), absl::Seconds(5), 16);
  const absl::Duration took = absl::Now() - stopped;
  backend_->process().Signal(SIGCONT);
  EXPECT_FALSE(absl::IsDeadlineExceeded(rest.status())) << "the app connection hung";
  // Reset, not a clean FIN: the app must not take a cut connection for a complete one.
  EXPECT_TRUE(absl::IsUnavailable(rest.status())) << rest.status();
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_TRUE(absl::StrContains(frontend_->process().Log(), "did not answer a PING")) << Logs();
  // The gauge follows the close on the worker's thread: poll, with a deadline.
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(PooledConnections("outbound")) == 0; }, absl::Seconds(5)))
      << Logs();
}

// SIGTERM on a sidecar holding a pooled connection, seen frame by frame by an independent
// client: the two-step GOAWAY of RFC 9113 §6.8 (a notice naming stream 2^31-1 and a PING; once
// the PING is answered, or after pooled.keepalive_timeout without an answer, the GOAWAY naming
// the last stream taken), the open stream going on to its end, then the connection's close.
TEST_F(PooledTest, DrainSaysGoawayInTwoSteps) {
  for (const bool ack : {true, false}) {
    SCOPED_TRACE(ack ? "PING answered" : "PING unanswered");
    // No keepalive PING within the test; the drain PING's wait is long when it is answered
    // (so only the answer can end it early) and short when it is not.
    ASSERT_NO_FATAL_FAILURE(StartBackend(
        absl::StrCat("limits: {drain_timeout: 20s}\npooled: {keepalive_interval: 60s, ",
                     "keepalive_timeout: ", ack ? "10s" : "1s", "}\n")));
    std::vector<std::string> args =
        H2PeerArgs({"drain", "127.0.0.1", absl::StrCat(backend_port_)}, "frontend", frontend_leaf_);
    args.push_back(absl::StrCat("127.0.0.1:", backend_port_));
    args.push_back(ack ? "ack" : "noack");
    std::unique_ptr<testing::Subprocess> client = StartH2Peer(args);
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(testing::WaitFor([&] { return absl::StrContains(client->Log(), "established"); },
                                 absl::Seconds(10)))
        << client->Log() << Logs();
    const absl::Time signalled = absl::Now();
    backend_->process().Signal(SIGTERM);
    EXPECT_EQ(client->WaitForExit(absl::Seconds(30)), 0) << client->Log();
    const absl::Duration took = absl::Now() - signalled;
    EXPECT_EQ(client->Log(), "established\ngoaway 2147483647\nping\ngoaway 1\nended\nclosed\n")
        << Logs();
    // Either way well before drain_timeout (20 s): the final GOAWAY ends the wait.
    if (ack) {
      EXPECT_LT(took, absl::Seconds(5)) << "the PING's answer must send the final GOAWAY";
    } else {
      EXPECT_GE(took, absl::Seconds(1)) << "the final GOAWAY must wait for keepalive_timeout";
      EXPECT_LT(took, absl::Seconds(10)) << "keepalive_timeout, not drain_timeout, must end it";
    }
    EXPECT_EQ(backend_->process().WaitForExit(absl::Seconds(30)), 0) << Logs();
    backend_.reset();
  }
}

// An explicit inbound listener whose `forward` is a name: pooled streams resolve it as `tls`
// connections do (the test's own DNS server), try each address in turn, and answer 502 when
// none takes the connection.
TEST_F(PooledTest, ForwardByNameIsResolvedForEachStream) {
  testing::DnsServer dns;
  // 127.0.0.2 has no app listening: a connect there is refused, the next address works.
  dns.SetAnswer("app.mesh.test", {"127.0.0.2", "127.0.0.1"}, 60);
  ASSERT_NO_FATAL_FAILURE(StartBackend(absl::StrCat("dns: {servers: [\"", dns.address(), "\"]}\n"),
                                       0, "app.mesh.test"));
  ASSERT_NO_FATAL_FAILURE(StartFrontend());
  // First, while the name is not cached: a client whose bytes and END_STREAM arrive while the
  // lookup runs (python3-h2 framing by hand). They wait for the app, then reach it.
  std::vector<std::string> early =
      H2PeerArgs({"early", "127.0.0.1", absl::StrCat(backend_port_)}, "frontend", frontend_leaf_);
  early.push_back(absl::StrCat("127.0.0.1:", backend_port_));
  EXPECT_EQ(RunH2Peer(early), "status 200\necho ok\n") << Logs();
  for (int i = 0; i < 3; ++i) {
    ASSERT_NO_FATAL_FAILURE(RoundTrip(absl::StrCat("by name ", i)));
  }
  EXPECT_EQ(backend_->Metric(Streams("inbound", "success")), 4);
  EXPECT_GE(dns.Queries("app.mesh.test"), 1);

  // No address takes it: 502, counted, and the app connection is reset.
  dns.SetAnswer("app.nowhere.test", {"127.0.0.2"}, 60);
  backend_.reset();
  ASSERT_NO_FATAL_FAILURE(StartBackend(absl::StrCat("dns: {servers: [\"", dns.address(), "\"]}\n"),
                                       0, "app.nowhere.test"));
  frontend_.reset();
  ASSERT_NO_FATAL_FAILURE(StartFrontend());
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "nobody\n"), IsOk());
  EXPECT_THAT(testing::ClosedWithoutData(conn->get()), IsOk()) << Logs();
  EXPECT_TRUE(
      testing::WaitFor([&] { return backend_->Metric(Streams("inbound", "app_unavailable")) == 1; },
                       absl::Seconds(10)))
      << Logs();
  EXPECT_TRUE(absl::StrContains(backend_->process().Log(), "127.0.0.2")) << Logs();
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(Streams("outbound", "app_unavailable")) == 1; },
      absl::Seconds(10)))
      << Logs();
}

// The frontend's credentials published again unchanged (a SIGHUP with the same files, or the
// first publish reaching the worker after its first connection) while a pooled connection is
// still handshaking: that connection opens and carries the stream. (It used to be drained as
// "old credentials" the moment it opened, its stream sent to a second connection.) A TCP gate
// in front of the backend holds the handshake until the republish is done.
TEST_F(PooledTest, UnchangedCredentialsRepublishedDuringTheHandshakeKeepTheConnection) {
  StartBackend();
  // The gate listens on 127.0.0.2 with the backend's port: streams name the port they are for.
  absl::StatusOr<base::UniqueFd> gate = testing::ListenOn("127.0.0.2", backend_port_);
  ASSERT_THAT(gate, IsOk());
  std::atomic<bool> release{false};
  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0};
  std::thread relay([&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    base::UniqueFd held;
    while (!held.valid() && !stop.load() && absl::Now() < deadline) {
      pollfd listening = {gate->get(), POLLIN, 0};
      if (::poll(&listening, 1, 50) == 1) {
        held = base::UniqueFd(::accept4(gate->get(), nullptr, nullptr, SOCK_CLOEXEC));
      }
    }
    if (!held.valid()) {
      return;
    }
    accepted.fetch_add(1);
    while (!release.load() && !stop.load() && absl::Now() < deadline) {
      pollfd none = {-1, 0, 0};
      ::poll(&none, 1, 10);  // the test's thread releases the gate
    }
    absl::StatusOr<base::UniqueFd> upstream = testing::TcpConnect(backend_port_);
    if (!upstream.ok()) {
      return;
    }
    // Both ways until either side ends, the test stops or the deadline.
    char buf[16384];
    pollfd fds[2] = {{held.get(), POLLIN, 0}, {upstream->get(), POLLIN, 0}};
    while (!stop.load() && absl::Now() < deadline) {
      if (::poll(fds, 2, 50) <= 0) {
        continue;
      }
      for (int i = 0; i < 2; ++i) {
        if (fds[i].revents == 0) {
          continue;
        }
        const ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
        if (n <= 0 || !testing::SendAll(fds[1 - i].fd, absl::string_view(buf, n)).ok()) {
          return;
        }
      }
    }
  });
  absl::Cleanup join_relay = [&] {
    stop.store(true);
    relay.join();
  };
  ASSERT_NO_FATAL_FAILURE(StartFrontend("", backend_port_, "127.0.0.2"));
  absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(frontend_port_);
  ASSERT_THAT(conn, IsOk());
  ASSERT_THAT(testing::SendAll(conn->get(), "held\n"), IsOk());
  EXPECT_TRUE(testing::WaitFor([&] { return accepted.load() == 1; }, absl::Seconds(10))) << Logs();
  frontend_->process().Signal(SIGHUP);  // the same files: the same credentials, generation 2
  EXPECT_TRUE(testing::WaitFor(
      [&] { return absl::StrContains(frontend_->process().Log(), "generation=2"); },
      absl::Seconds(10)))
      << Logs();
  release.store(true);
  absl::StatusOr<std::string> echoed = testing::RecvExactly(conn->get(), 5, absl::Seconds(10));
  EXPECT_THAT(echoed, IsOk()) << Logs();
  if (echoed.ok()) {
    EXPECT_EQ(*echoed, "held\n");
  }
  EXPECT_EQ(frontend_->Metric(Handshakes("outbound", "success")), 1) << Logs();
  EXPECT_EQ(frontend_->Metric(PooledConnections("outbound")), 1);
}

// New certificates for both sidecars (a renewal with the same CA) under pooled traffic: new
// streams move to a connection made with the new certificates, the old connection drains
// (GOAWAY) and closes once its long-lived streams end, and no byte is lost on the way.
TEST_F(PooledTest, RotationUnderPooledTrafficDropsNothing) {
  StartMesh();
  testing::TrafficLoad load(frontend_port_, /*long_lived=*/3);
  ASSERT_TRUE(testing::WaitFor([&] { return load.new_connections() > 20; }, absl::Seconds(10)))
      << load.first_failure();
  const std::string frontend_serial = frontend_->ServedSerial();
  const std::string backend_serial = backend_->ServedSerial();
  (void)testing::FilesConfigHead(dir_, "frontend", ca_.Issue(kFrontend), bundle_);
  (void)testing::FilesConfigHead(dir_, "backend", ca_.Issue(kBackend), bundle_);
  frontend_->process().Signal(SIGHUP);
  backend_->process().Signal(SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return frontend_->ServedSerial() != frontend_serial &&
               backend_->ServedSerial() != backend_serial;
      },
      absl::Seconds(10)))
      << Logs();
  const int before = load.new_connections();
  ASSERT_TRUE(
      testing::WaitFor([&] { return load.new_connections() > before + 50; }, absl::Seconds(20)))
      << load.first_failure();
  EXPECT_GE(frontend_->Metric(Handshakes("outbound", "success")), 2);
  load.Stop();
  EXPECT_EQ(load.failures(), 0) << load.first_failure() << "\n" << Logs();
  // With the long-lived streams gone, only the new connection is left.
  EXPECT_TRUE(testing::WaitFor(
      [&] { return frontend_->Metric(PooledConnections("outbound")) == 1; }, absl::Seconds(10)))
      << Logs();
}

}  // namespace
}  // namespace meshtls

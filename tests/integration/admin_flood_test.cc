// The admin listener of each binary (certmgr and sidecar) under clients that pipeline requests
// and never read the answers, reconnecting as soon as they are dropped: the kubelet's /healthz
// probe must still be answered every time, and the process's memory must stay bounded. The
// attackers play many pods (an address of their own each, so the per-address share does not
// help) or one pod (one address for all). Every loop is bounded in count and time.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls {
namespace {

using testing::IsOk;

// NeverReadingClients keeps `count` connections to 127.0.0.1:`port` open from its own thread.
// Each connects from its own loopback address (or all from 127.0.1.1 when `one_address`), with
// a small receive buffer, sends many pipelined `GET /metrics` and never reads a byte; when the
// server drops one, it connects again at once. Stops and closes everything on destruction.
class NeverReadingClients {
 public:
  NeverReadingClients(uint16_t port, int count, bool one_address)
      : port_(port), slots_(count), one_address_(one_address) {
    for (int i = 0; i < kRequestsPerConnection; ++i) {
      requests_ += "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~NeverReadingClients() {
    stop_.store(true);
    thread_.join();
    for (Slot& slot : slots_) {
      if (slot.fd >= 0) {
        ::close(slot.fd);
      }
    }
  }
  // connected is how many connections were established; dropped, how many the server closed.
  int connected() const { return connected_.load(); }
  int dropped() const { return dropped_.load(); }

 private:
  static constexpr int kRequestsPerConnection = 1000;

  struct Slot {
    int fd = -1;
    bool established = false;
    size_t sent = 0;  // bytes of requests_ sent on this connection
  };

  std::string Source(size_t i) const {
    return one_address_ ? "127.0.1.1" : absl::StrCat("127.0.", 1 + i / 250, ".", 1 + i % 250);
  }

  void Open(size_t i) {
    Slot& slot = slots_[i];
    slot = Slot{};
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int small = 4096;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    sockaddr_in source{.sin_family = AF_INET, .sin_port = 0, .sin_addr = {}, .sin_zero = {}};
    ::inet_pton(AF_INET, Source(i).c_str(), &source.sin_addr);
    sockaddr_in server{
        .sin_family = AF_INET, .sin_port = htons(port_), .sin_addr = {}, .sin_zero = {}};
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&source), sizeof(source)) != 0 ||
        (::connect(fd, reinterpret_cast<sockaddr*>(&server), sizeof(server)) != 0 &&
         errno != EINPROGRESS)) {
      ::close(fd);
      return;  // tried again on the next round
    }
    slot.fd = fd;
  }

  void Run() {
    std::vector<pollfd> polled(slots_.size());
    while (!stop_.load()) {
      for (size_t i = 0; i < slots_.size(); ++i) {
        if (slots_[i].fd < 0) {
          Open(i);
        }
        const Slot& slot = slots_[i];
        // Never POLLIN: these clients do not read. A close shows as POLLRDHUP, a reset as
        // POLLERR or POLLHUP.
        polled[i] = {
            .fd = slot.fd,
            .events = static_cast<short>(POLLRDHUP | (slot.sent < requests_.size() ? POLLOUT : 0)),
            .revents = 0};
      }
      if (::poll(polled.data(), polled.size(), 20) <= 0) {
        continue;
      }
      for (size_t i = 0; i < slots_.size(); ++i) {
        Slot& slot = slots_[i];
        const short revents = polled[i].revents;
        if (slot.fd < 0 || revents == 0) {
          continue;
        }
        if ((revents & (POLLRDHUP | POLLERR | POLLHUP)) != 0) {
          dropped_.fetch_add(slot.established ? 1 : 0);
          ::close(slot.fd);
          slot.fd = -1;
          continue;
        }
        if ((revents & POLLOUT) != 0) {
          if (!slot.established) {
            slot.established = true;
            connected_.fetch_add(1);
          }
          const ssize_t n = ::send(slot.fd, requests_.data() + slot.sent,
                                   requests_.size() - slot.sent, MSG_NOSIGNAL);
          if (n > 0) {
            slot.sent += static_cast<size_t>(n);
          }
        }
      }
    }
  }

  const uint16_t port_;
  std::vector<Slot> slots_;  // touched only by thread_ (and by ~ after the join)
  const bool one_address_;
  std::string requests_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connected_{0};
  std::atomic<int> dropped_{0};
  std::thread thread_;
};

struct FloodCase {
  const char* binary;  // "certmgr" or "sidecar"
  int clients;
  bool one_address;
};

void PrintTo(const FloodCase& c, std::ostream* os) {
  *os << c.clients << " clients of " << c.binary
      << (c.one_address ? " from one address" : " from many addresses");
}

std::string CaseName(const ::testing::TestParamInfo<FloodCase>& info) {
  return absl::StrCat(info.param.binary, "_", info.param.clients,
                      info.param.one_address ? "_from_one_address" : "_from_many_addresses");
}

class AdminFloodTest : public ::testing::TestWithParam<FloodCase> {
 protected:
  // StartBinary runs the binary under test and returns its admin port and pid.
  void StartBinary() {
    if (std::string(GetParam().binary) == "certmgr") {
      MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, testing::CertmgrProcess::Start(dir_, "mesh.test"));
      ASSERT_TRUE(testing::WaitFor(
          [&] {
            absl::StatusOr<testing::HttpResult> r =
                testing::HttpGet(certmgr_->admin_port(), "/readyz");
            return r.ok() && r->status == 200;
          },
          absl::Seconds(20)));
      admin_port_ = certmgr_->admin_port();
      pid_ = certmgr_->process().pid();
      return;
    }
    const testing::IssuedLeaf own =
        ca_.Issue("spiffe://mesh.test/ns/default/sa/backend", absl::Hours(1));
    const std::string yaml = absl::StrCat(
        testing::FilesConfigHead(dir_, "own", own, dir_.Write("bundle.pem", ca_.RootPem())),
        "inbound:\n  - name: in\n    listen: 127.0.0.1:0\n    forward: 127.0.0.1:", app_.port(),
        "\n    allow: [spiffe://mesh.test/ns/default/sa/frontend]\n");
    MESHTLS_ASSERT_OK_AND_MOVE(sidecar_, testing::SidecarProcess::Start(dir_, "sidecar", yaml));
    ASSERT_TRUE(sidecar_->WaitReady()) << sidecar_->process().Log();
    admin_port_ = sidecar_->admin_port();
    pid_ = sidecar_->process().pid();
  }

  testing::TempDir dir_;
  testing::TestCa ca_{"mesh.test"};
  testing::EchoServer app_;
  std::unique_ptr<testing::CertmgrProcess> certmgr_;
  std::unique_ptr<testing::SidecarProcess> sidecar_;
  uint16_t admin_port_ = 0;
  pid_t pid_ = 0;
};

TEST_P(AdminFloodTest, ProbesAreAnsweredAndMemoryStaysBounded) {
  ASSERT_NO_FATAL_FAILURE(StartBinary());
  // A few scrapes first, so the baseline includes what serving /metrics costs anyway.
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(testing::HttpGet(admin_port_, "/metrics")->status, 200);
  }
  const int64_t baseline_kib = testing::RssKiB(pid_);
  ASSERT_GT(baseline_kib, 0);

  int64_t peak_kib = baseline_kib;
  std::vector<std::string> failures;
  constexpr int kProbes = 15;
  {
    NeverReadingClients attackers(admin_port_, GetParam().clients, GetParam().one_address);
    // Every client has connected once (and started pipelining) before the first probe.
    ASSERT_TRUE(testing::WaitFor([&] { return attackers.connected() >= GetParam().clients; },
                                 absl::Seconds(10)))
        << attackers.connected() << " of " << GetParam().clients << " connected";
    // The kubelet's liveness probe: /healthz every 100 ms, 1 s timeout (its default).
    for (int i = 0; i < kProbes; ++i) {
      const auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      absl::StatusOr<testing::HttpResult> r =
          testing::HttpGet(admin_port_, "/healthz", absl::Seconds(1));
      if (!r.ok()) {
        failures.push_back(absl::StrCat("probe ", i, ": ", r.status().ToString()));
      } else if (r->status != 200) {
        failures.push_back(absl::StrCat("probe ", i, ": HTTP ", r->status));
      }
      peak_kib = std::max(peak_kib, testing::RssKiB(pid_));
      std::this_thread::sleep_until(next);  // the probe period, not a wait for a condition
    }
    std::printf(
        "%d attackers (%s): %d connections made, %d dropped by the server; RSS %lld KiB "
        "before, peak %lld KiB\n",
        GetParam().clients, GetParam().one_address ? "one address" : "many addresses",
        attackers.connected(), attackers.dropped(), static_cast<long long>(baseline_kib),
        static_cast<long long>(peak_kib));
  }
  EXPECT_TRUE(failures.empty()) << failures.size() << " of " << kProbes << " probes failed:\n"
                                << absl::StrJoin(failures, "\n");
  // Each admin connection holds at most one response (a /metrics page of some KiB here) and a
  // bounded input buffer; 16 MiB is far above that for 64 connections, and far below what
  // buffering the pipelined requests or their answers would take.
#if !defined(__SANITIZE_ADDRESS__)  // ASan's quarantine keeps freed memory resident
  EXPECT_LT(peak_kib - baseline_kib, 16 * 1024)
      << "RSS grew from " << baseline_kib << " KiB to " << peak_kib << " KiB";
#endif
  // The attack reached the cap (connections were evicted), and the process still serves.
  EXPECT_GE(testing::ScrapeMetric(admin_port_, R"(meshtls_admin_rejected_total{reason="evicted"})"),
            1);
  EXPECT_EQ(testing::HttpGet(admin_port_, "/healthz")->status, 200);
}

INSTANTIATE_TEST_SUITE_P(Binaries, AdminFloodTest,
                         ::testing::Values(FloodCase{"certmgr", 64, false},
                                           FloodCase{"certmgr", 200, false},
                                           FloodCase{"sidecar", 64, false},
                                           FloodCase{"sidecar", 200, false},
                                           FloodCase{"sidecar", 200, true}),
                         CaseName);

}  // namespace
}  // namespace meshtls

// Outbound `connect:` names resolved through a DNS server of the test's own on loopback
// (testing::DnsServer, set as the sidecar's dns.servers): a name that never gets an answer
// must not delay other names, every address of a name is tried in turn, answers are cached for
// their TTL and NXDOMAIN for dns.negative_ttl, and a changed answer is followed once the TTL
// has passed. Real sidecar processes in files mode; the echo app behind an inbound listener.

#include <gtest/gtest.h>

#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "tests/testing/dns_server.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls {
namespace {

using testing::IsOk;
using testing::SidecarProcess;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

std::string DnsLookups(const std::string& result) {
  return absl::StrCat("meshtls_dns_lookups_total{result=\"", result, "\"}");
}

class DnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(dns_.port(), 0) << "the test's DNS server did not start";
    // The backend's listeners share one port on two addresses, written into the frontend's
    // config before the backend runs (and across its restarts): reserved on both addresses for
    // the whole test (the sidecar's listeners join through SO_REUSEPORT). Where none listens, a
    // connection to that address is refused.
    for (int attempt = 0; attempt < 20 && !second_reservation_.valid(); ++attempt) {
      port_ = 0;
      first_reservation_ = testing::ReserveLoopbackPort(&port_, "127.0.0.1");
      second_reservation_ = testing::ReserveLoopbackPort(&port_, "127.0.0.2");
    }
    ASSERT_TRUE(second_reservation_.valid()) << "no port free on both 127.0.0.1 and 127.0.0.2";
  }

  // StartBackend runs the backend sidecar with an inbound listener on 127.0.0.1:<port_> in
  // front of app_a_ (`on_first`) and one on 127.0.0.2:<port_> in front of app_b_
  // (`on_second`). Where none listens, a connection to that address is refused.
  void StartBackend(bool on_first, bool on_second) {
    std::string yaml = absl::StrCat(Identity("backend", kBackend), "inbound:\n");
    for (const auto& [on, address, app] : {std::tuple(on_first, "127.0.0.1", &app_a_),
                                           std::tuple(on_second, "127.0.0.2", &app_b_)}) {
      if (on) {
        absl::StrAppend(&yaml, "  - name: ", address, "\n    listen: ", address, ":", port_,
                        "\n    forward: 127.0.0.1:", app->port(), "\n    allow: [", kFrontend,
                        "]\n");
      }
    }
    MESHTLS_ASSERT_OK_AND_MOVE(backend_, SidecarProcess::Start(dir_, "backend", yaml));
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
  }

  // StartFrontend runs the frontend sidecar with one outbound listener per name (connecting to
  // <name>:<port_>), resolving through dns_. The listeners' ports are in ports_, by name.
  void StartFrontend(const std::vector<std::string>& names, const std::string& extra) {
    // One worker: each worker keeps its own cache, and these tests count one cache's queries.
    std::string yaml = absl::StrCat(Identity("frontend", kFrontend), "workers: 1\noutbound:\n");
    for (const std::string& name : names) {
      absl::StrAppend(&yaml, "  - name: ", name, "\n    listen: 127.0.0.1:0",
                      "\n    connect: ", name, ":", port_, "\n    expect: [", kBackend, "]\n");
    }
    absl::StrAppend(&yaml, "dns: {servers: [\"", dns_.address(), "\"]", extra, "}\n");
    MESHTLS_ASSERT_OK_AND_MOVE(frontend_, SidecarProcess::Start(dir_, "frontend", yaml));
    for (const std::string& name : names) {
      ports_[name] = frontend_->port("outbound." + name);
    }
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  std::string Identity(const std::string& name, const std::string& id) {
    return testing::FilesConfigHead(dir_, name, ca_.Issue(id),
                                    dir_.Write("bundle.pem", ca_.RootPem()));
  }

  // Echo connects to the outbound listener for `name`, sends a line and waits for its echo.
  absl::Status Echo(const std::string& name, absl::Duration timeout = absl::Seconds(10)) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(ports_[name], timeout);
    if (!fd.ok()) {
      return fd.status();
    }
    const std::string payload = "hello " + name;
    if (absl::Status s = testing::SendAll(fd->get(), payload); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::string> echo = testing::RecvExactly(fd->get(), payload.size(), timeout);
    if (!echo.ok()) {
      return echo.status();
    }
    return *echo == payload ? absl::OkStatus() : absl::InternalError("wrong echo: " + *echo);
  }

  std::string Logs() {
    return absl::StrCat("frontend log:\n", frontend_ ? frontend_->process().Log() : "",
                        "\nbackend log:\n", backend_ ? backend_->process().Log() : "");
  }

  testing::TempDir dir_;
  testing::TestCa ca_{"mesh.test"};
  testing::EchoServer app_a_;
  testing::EchoServer app_b_;
  testing::DnsServer dns_;
  uint16_t port_ = 0;                  // the backend's, on both addresses
  base::UniqueFd first_reservation_;   // port_ on 127.0.0.1
  base::UniqueFd second_reservation_;  // port_ on 127.0.0.2
  std::map<std::string, uint16_t> ports_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
};

// While one name's lookup hangs (the server never answers it), connections to another name
// through the same sidecar, on the same single worker, go through at once.
TEST_F(DnsTest, UnansweredNameDoesNotDelayOtherNames) {
  dns_.SetSilent("stalled.dns.test");
  dns_.SetAnswer("good.dns.test", {"127.0.0.1"}, 60);
  ASSERT_NO_FATAL_FAILURE(StartBackend(/*on_first=*/true, /*on_second=*/false));
  ASSERT_NO_FATAL_FAILURE(StartFrontend({"stalled.dns.test", "good.dns.test"}, ""));

  // The stalled connection waits for its lookup (up to limits.connect_timeout, 5 s).
  absl::StatusOr<base::UniqueFd> stalled = testing::TcpConnect(ports_["stalled.dns.test"]);
  ASSERT_TRUE(stalled.ok()) << stalled.status();
  ASSERT_TRUE(
      testing::WaitFor([&] { return dns_.Queries("stalled.dns.test") > 0; }, absl::Seconds(5)))
      << "the sidecar never asked for stalled.dns.test; " << Logs();

  for (int i = 0; i < 5; ++i) {
    const absl::Time start = absl::Now();
    ASSERT_TRUE(Echo("good.dns.test", absl::Seconds(4)).ok())
        << "connection " << i << "; " << Logs();
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(1500))
        << "connection " << i << " to good.dns.test waited behind the stalled lookup";
  }
  EXPECT_GT(dns_.Queries("good.dns.test"), 0);
  EXPECT_EQ(app_a_.connections(), 5);
}

// The first address of the name refuses connections (nothing listens there); the sidecar
// falls through to the second. (127.0.0.1 stays first under RFC 6724 sorting too: it is the
// source address's longest match.)
TEST_F(DnsTest, RefusedFirstAddressFallsThroughToTheNext) {
  dns_.SetAnswer("two.dns.test", {"127.0.0.1", "127.0.0.2"}, 60);
  ASSERT_NO_FATAL_FAILURE(StartBackend(/*on_first=*/false, /*on_second=*/true));
  ASSERT_NO_FATAL_FAILURE(StartFrontend({"two.dns.test"}, ""));
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Echo("two.dns.test").ok()) << "connection " << i << "; " << Logs();
  }
  EXPECT_EQ(app_b_.connections(), 3);
  EXPECT_EQ(frontend_->Metric(
                "meshtls_connections_refused_total{direction=\"outbound\",reason=\"upstream_"
                "unavailable\"}"),
            0);
}

// Within the TTL the cached answer is used (no new query); after it, the new answer is.
TEST_F(DnsTest, FollowsAnswerChangesAfterTheTtl) {
  constexpr int kTtlSeconds = 4;
  dns_.SetAnswer("moving.dns.test", {"127.0.0.1"}, kTtlSeconds);
  ASSERT_NO_FATAL_FAILURE(StartBackend(/*on_first=*/true, /*on_second=*/true));
  ASSERT_NO_FATAL_FAILURE(StartFrontend({"moving.dns.test"}, ""));

  const absl::Time first_lookup = absl::Now();
  ASSERT_TRUE(Echo("moving.dns.test").ok()) << Logs();
  const int queries = dns_.Queries("moving.dns.test");
  EXPECT_GT(queries, 0);
  dns_.SetAnswer("moving.dns.test", {"127.0.0.2"}, kTtlSeconds);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Echo("moving.dns.test").ok()) << Logs();
  }
  if (absl::Now() - first_lookup < absl::Seconds(kTtlSeconds)) {
    EXPECT_EQ(dns_.Queries("moving.dns.test"), queries) << "the cached answer was not used";
    EXPECT_EQ(app_a_.connections(), 4);
    EXPECT_EQ(app_b_.connections(), 0);
  }
  // Bounded: the TTL plus a margin, one connection every 100 ms.
  const bool moved =
      testing::WaitFor([&] { return Echo("moving.dns.test").ok() && app_b_.connections() > 0; },
                       absl::Seconds(kTtlSeconds + 10));
  ASSERT_TRUE(moved) << "the new answer was never used; " << Logs();
  EXPECT_GE(absl::Now() - first_lookup, absl::Seconds(kTtlSeconds) - absl::Milliseconds(500))
      << "the answer changed before its TTL ran out";
  EXPECT_GT(dns_.Queries("moving.dns.test"), queries);
  EXPECT_GE(frontend_->Metric(DnsLookups("cache_hit")), 3);
  EXPECT_GE(frontend_->Metric(DnsLookups("success")), 2);
}

// NXDOMAIN is remembered for dns.negative_ttl: connections in that time are refused without a
// query, and once it has passed a name that now exists is found.
TEST_F(DnsTest, NxdomainIsCachedForTheNegativeTtl) {
  ASSERT_NO_FATAL_FAILURE(StartBackend(/*on_first=*/true, /*on_second=*/false));
  ASSERT_NO_FATAL_FAILURE(StartFrontend({"later.dns.test"}, ", negative_ttl: 3s"));

  const absl::Time first_lookup = absl::Now();
  // Refused: the sidecar accepts, then closes (or resets, possibly before connect() returns).
  EXPECT_THAT(testing::RefusedWithoutData(ports_["later.dns.test"]), IsOk());
  const int queries = dns_.Queries("later.dns.test");
  EXPECT_GT(queries, 0);
  EXPECT_GE(frontend_->Metric(DnsLookups("nxdomain")), 1);

  dns_.SetAnswer("later.dns.test", {"127.0.0.1"}, 60);
  ASSERT_TRUE(frontend_->WaitForMetric(
      "meshtls_connections_refused_total{direction=\"outbound\",reason=\"upstream_unavailable\"}",
      1));
  if (absl::Now() - first_lookup < absl::Milliseconds(2500)) {
    EXPECT_THAT(testing::RefusedWithoutData(ports_["later.dns.test"]), IsOk())
        << "NXDOMAIN was not cached";
    EXPECT_EQ(dns_.Queries("later.dns.test"), queries) << "NXDOMAIN was not cached";
    EXPECT_GE(frontend_->Metric(DnsLookups("cache_hit")), 1);
  }
  const bool found =
      testing::WaitFor([&] { return Echo("later.dns.test").ok(); }, absl::Seconds(13));
  ASSERT_TRUE(found) << "the name was never found after the negative TTL; " << Logs();
  EXPECT_GE(absl::Now() - first_lookup, absl::Milliseconds(2500))
      << "the NXDOMAIN answer was not kept for negative_ttl";
  EXPECT_EQ(app_a_.connections(), 1);
}

}  // namespace
}  // namespace meshtls

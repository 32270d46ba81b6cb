// AdminServer over real loopback sockets: what a scraper and a probe get, what malformed and
// oversized requests get, and the bounds that keep slow or hostile clients from starving them
// (request deadline from the first byte, connection cap with eviction, write deadline).

#include "common/admin/admin_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/base/status_macros.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::admin {
namespace {

using ::meshtls::testing::IsOk;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class AdminServerTest : public ::testing::Test {
 protected:
  void Start(const AdminLimits& limits = AdminLimits{}) {
    auto registry = std::make_shared<prometheus::Registry>();
    prometheus::BuildCounter()
        .Name("test_counter_total")
        .Help("a test")
        .Register(*registry)
        .Add({});
    std::vector<AdminRoute> routes = {
        {"/readyz", [] { return HttpResponse{.status = 200, .body = "ready\n"}; }},
        {"/slow",
         [this] {
           calls_.fetch_add(1);
           return HttpResponse{.status = 200, .body = std::string(8 << 20, 'x')};
         }},
        {"/large",
         [this] {
           large_calls_.fetch_add(1);
           return HttpResponse{.status = 200, .body = std::string(1 << 20, 'l')};
         }},
        // Answered when the test calls the Reply it keeps, from the test's own thread.
        {.path = "/later", .async_handler = [this](Reply reply) {
           std::lock_guard<std::mutex> lock(replies_mu_);
           replies_.push_back(std::move(reply));
         }}};
    auto server = AdminServer::Start("127.0.0.1:0", std::move(routes), {registry}, limits);
    ASSERT_THAT(server, IsOk());
    server_ = *std::move(server);
  }

  // Ask sends `request` on a new connection and reads the whole answer (the server closes).
  std::string Ask(const std::string& request) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
    EXPECT_THAT(fd, IsOk());
    EXPECT_THAT(testing::SendAll(fd->get(), request), IsOk());
    absl::StatusOr<std::string> answer = testing::RecvUntilEof(fd->get(), absl::Seconds(5));
    EXPECT_THAT(answer, IsOk());
    return answer.value_or("");
  }

  double Rejected(const std::string& reason) {
    return testing::ScrapeMetric(
        server_->port(), absl::StrCat("meshtls_admin_rejected_total{reason=\"", reason, "\"}"));
  }

  // TakeReply waits for the next request of /later and returns its Reply.
  Reply TakeReply() {
    Reply reply;
    EXPECT_TRUE(testing::WaitFor(
        [&] {
          std::lock_guard<std::mutex> lock(replies_mu_);
          if (replies_.empty()) {
            return false;
          }
          reply = std::move(replies_.front());
          replies_.erase(replies_.begin());
          return true;
        },
        absl::Seconds(5)));
    return reply;
  }

  std::atomic<int> calls_{0};
  std::atomic<int> large_calls_{0};
  std::mutex replies_mu_;
  std::vector<Reply> replies_;  // guarded by replies_mu_
  std::unique_ptr<AdminServer> server_;
};

TEST_F(AdminServerTest, ServesRoutesMetricsHeadAndNotFound) {
  Start();
  absl::StatusOr<testing::HttpResult> ready = testing::HttpGet(server_->port(), "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");
  absl::StatusOr<testing::HttpResult> metrics = testing::HttpGet(server_->port(), "/metrics?x=1");
  ASSERT_THAT(metrics, IsOk());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body, HasSubstr("test_counter_total 0"));
  EXPECT_THAT(metrics->body, HasSubstr("meshtls_admin_rejected_total{reason=\"timeout\"} 0"));
  EXPECT_EQ(testing::HttpGet(server_->port(), "/nope")->status, 404);
  // An HTTP/1.1 client asking for an unknown path is answered and closed (no keep-alive slot).
  EXPECT_THAT(Ask("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"), StartsWith("HTTP/1.1 404"));
  const std::string head = Ask("HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(head, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(head, HasSubstr("Content-Length: 6\r\n"));
  EXPECT_TRUE(absl::EndsWith(head, "\r\n\r\n")) << "a HEAD answer has no body";
}

TEST_F(AdminServerTest, KeepAliveAndPipelinedRequestsShareOneConnection) {
  Start();
  absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
  ASSERT_THAT(fd, IsOk());
  const std::string request = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_THAT(testing::SendAll(fd->get(), request + request +
                                              "GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n"),
              IsOk());
  absl::StatusOr<std::string> answers = testing::RecvUntilEof(fd->get(), absl::Seconds(5));
  ASSERT_THAT(answers, IsOk());
  size_t count = 0;
  for (size_t at = answers->find("HTTP/1.1 200"); at != std::string::npos;
       at = answers->find("HTTP/1.1 200", at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, 3u) << *answers;
}

TEST_F(AdminServerTest, MalformedAndOversizedRequestsGetAnErrorAndAClose) {
  Start();
  struct Case {
    std::string request;
    std::string status_line;
  };
  const std::vector<Case> cases = {
      {"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 400"},
      {"DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"},
      {"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 505"},
      {"GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400"},
      {"GET /metrics HTTP/1.1\r\n folded: header\r\n\r\n", "HTTP/1.1 400"},
      {"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 501"},
      {std::string("\x16\x03\x01\x00\x05hello\r\n\r\n", 14), "HTTP/1.1 400"},
      {"GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n", "HTTP/1.1 431"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(Ask(c.request), StartsWith(c.status_line)) << c.request.substr(0, 60);
  }
  EXPECT_EQ(Rejected("malformed"), 7);
  EXPECT_EQ(Rejected("too_large"), 1);
  EXPECT_EQ(testing::HttpGet(server_->port(), "/readyz")->status, 200);
}

TEST_F(AdminServerTest, TricklingARequestDoesNotExtendItsDeadline) {
  Start({.request_timeout = absl::Milliseconds(600)});
  absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
  ASSERT_THAT(fd, IsOk());
  // One byte every 100 ms: each arrives well within any per-read timeout, but the head is
  // never whole; the server must close within its request deadline anyway.
  const std::string request = "GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
  const absl::Time start = absl::Now();
  bool closed = false;
  for (size_t i = 0; i < request.size() && !closed; ++i) {
    if (!testing::SendAll(fd->get(), request.substr(i, 1)).ok()) {
      closed = true;
      break;
    }
    closed = testing::ClosedWithoutData(fd->get(), absl::Milliseconds(100)).ok();
  }
  EXPECT_TRUE(closed) << "the server waited for the whole trickled request";
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_TRUE(testing::WaitFor([&] { return Rejected("timeout") >= 1; }, absl::Seconds(5)));
}

TEST_F(AdminServerTest, SlowlorisConnectionsDoNotStarveAScraper) {
  Start({.max_connections = 16, .request_timeout = absl::Seconds(30)});
  // Many more half-sent requests than the cap, held open: each new one evicts the oldest.
  std::vector<base::UniqueFd> slow;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
    ASSERT_THAT(fd, IsOk());
    ASSERT_THAT(testing::SendAll(fd->get(), "GET /metrics HTTP/1.1\r\nHost: x\r\n"), IsOk());
    slow.push_back(*std::move(fd));
  }
  for (int i = 0; i < 20; ++i) {
    const absl::Time start = absl::Now();
    absl::StatusOr<testing::HttpResult> r = testing::HttpGet(server_->port(), "/readyz");
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  }
  EXPECT_GE(Rejected("evicted"), 84);
}

TEST_F(AdminServerTest, AClientThatNeverReadsIsCutOffAtTheWriteDeadline) {
  Start({.write_timeout = absl::Milliseconds(500)});
  absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
  ASSERT_THAT(fd, IsOk());
  const int small = 4096;
  ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_THAT(testing::SendAll(fd->get(), "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  // 8 MiB that nobody reads: the server stops trying after the write deadline.
  EXPECT_TRUE(testing::WaitFor([&] { return Rejected("timeout") >= 1; }, absl::Seconds(5)));
  EXPECT_EQ(calls_.load(), 1);
  EXPECT_EQ(testing::HttpGet(server_->port(), "/readyz")->status, 200);
}

TEST_F(AdminServerTest, AnAsyncRouteAnswersFromAnotherThreadWithoutBlockingTheOthers) {
  Start();
  absl::StatusOr<testing::HttpResult> later;
  std::thread client([&] { later = testing::HttpGet(server_->port(), "/later"); });
  Reply reply = TakeReply();
  // While /later waits, the server answers everyone else.
  EXPECT_EQ(testing::HttpGet(server_->port(), "/readyz")->status, 200);
  std::thread([&] { reply(HttpResponse{.status = 503, .body = "app down\n"}); }).join();
  client.join();
  ASSERT_THAT(later, IsOk());
  EXPECT_EQ(later->status, 503);
  EXPECT_EQ(later->body, "app down\n");
}

TEST_F(AdminServerTest, AnAsyncRouteThatNeverRepliesIsClosedAtTheWriteDeadline) {
  Start({.write_timeout = absl::Milliseconds(300)});
  absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
  ASSERT_THAT(fd, IsOk());
  ASSERT_THAT(testing::SendAll(fd->get(), "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  Reply reply = TakeReply();
  absl::StatusOr<std::string> answer = testing::RecvUntilEof(fd->get(), absl::Seconds(5));
  ASSERT_THAT(answer, IsOk());
  EXPECT_EQ(*answer, "");                     // closed without an answer
  reply(HttpResponse{.body = "too late\n"});  // the connection is gone: nothing happens

  // A Reply that comes after the server stopped does nothing either.
  absl::StatusOr<base::UniqueFd> second = testing::TcpConnect(server_->port());
  ASSERT_THAT(second, IsOk());
  ASSERT_THAT(testing::SendAll(second->get(), "GET /later HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  Reply orphan = TakeReply();
  server_.reset();
  orphan(HttpResponse{.body = "after the stop\n"});
}

// PeerClosed reads and discards what `fd` receives until the peer closes it (FIN or reset):
// true, or the connection is still open after `timeout`: false.
bool PeerClosed(int fd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  char buffer[65536];
  while (absl::Now() < deadline) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())) + 1;
    if (::poll(&p, 1, ms) <= 0) {
      continue;
    }
    const ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
      return true;
    }
  }
  return false;
}

// A client stuck with an unread response waits too: at the cap, the connection whose wait
// (for a request, or for its peer to read) began first is the one evicted, whatever it waits
// for. Each client has an address of its own, so no per-address share comes into play.
TEST_F(AdminServerTest, AtTheCapTheOldestWaitIsEvictedEvenMidResponse) {
  Start({.max_connections = 4});
  absl::StatusOr<base::UniqueFd> stuck = testing::TcpConnectFrom("127.0.0.2", server_->port());
  ASSERT_THAT(stuck, IsOk());
  const int small = 4096;
  ::setsockopt(stuck->get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_THAT(testing::SendAll(stuck->get(), "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  ASSERT_TRUE(testing::WaitFor([&] { return calls_.load() == 1; }, absl::Seconds(5)));
  // Three connections that have not asked yet: each began waiting after `stuck` did.
  std::vector<base::UniqueFd> idle;
  for (const char* source : {"127.0.0.3", "127.0.0.4", "127.0.0.5"}) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnectFrom(source, server_->port());
    ASSERT_THAT(fd, IsOk());
    idle.push_back(*std::move(fd));
  }
  // The fifth connection (a probe) is answered, and `stuck` makes room for it.
  absl::StatusOr<testing::HttpResult> probe = testing::HttpGet(server_->port(), "/readyz");
  ASSERT_THAT(probe, IsOk());
  EXPECT_EQ(probe->status, 200);
  EXPECT_TRUE(PeerClosed(stuck->get(), absl::Seconds(5))) << "the writer was not evicted";
  EXPECT_FALSE(PeerClosed(idle[0].get(), absl::Milliseconds(300)))
      << "a younger waiting connection was evicted instead of the writer";
  EXPECT_EQ(Rejected("evicted"), 1);
}

// One address past its share evicts its own connections, never another address's, even
// when that other connection has waited longer.
TEST_F(AdminServerTest, OneAddressPastItsShareEvictsOnlyItsOwnConnections) {
  Start({.max_connections = 8, .max_connections_per_address = 4});
  absl::StatusOr<base::UniqueFd> other = testing::TcpConnectFrom("127.0.0.3", server_->port());
  ASSERT_THAT(other, IsOk());
  std::vector<base::UniqueFd> flood;
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnectFrom("127.0.0.2", server_->port());
    ASSERT_THAT(fd, IsOk());
    flood.push_back(*std::move(fd));
  }
  // The server has taken every connection once the evictions are counted.
  ASSERT_TRUE(testing::WaitFor([&] { return Rejected("evicted") >= 6; }, absl::Seconds(5)));
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(PeerClosed(flood[i].get(), absl::Seconds(5))) << "flood connection " << i;
  }
  for (int i = 6; i < 10; ++i) {
    EXPECT_FALSE(PeerClosed(flood[i].get(), absl::Milliseconds(100))) << "flood connection " << i;
  }
  EXPECT_FALSE(PeerClosed(other->get(), absl::Milliseconds(100)))
      << "another address's connection was evicted";
  EXPECT_EQ(Rejected("evicted"), 6);
  // And that other client is served on the connection it kept.
  ASSERT_THAT(testing::SendAll(other->get(), "GET /readyz HTTP/1.0\r\n\r\n"), IsOk());
  absl::StatusOr<std::string> answer = testing::RecvUntilEof(other->get(), absl::Seconds(5));
  ASSERT_THAT(answer, IsOk());
  EXPECT_THAT(*answer, StartsWith("HTTP/1.1 200"));
}

// A client that pipelines requests and never reads gets one response at a time: the next
// request is parsed only once the kernel has sent all of the previous response, so the
// requests wait in the socket's receive buffer and the server holds one response per
// connection, in memory and in the kernel's send queue.
TEST_F(AdminServerTest, PipelinedRequestsWaitUntilTheResponseBeforeIsSent) {
  Start();
  absl::StatusOr<base::UniqueFd> fd = testing::TcpConnect(server_->port());
  ASSERT_THAT(fd, IsOk());
  constexpr int kRequests = 20;
  std::string requests;
  for (int i = 0; i < kRequests - 1; ++i) {
    requests += "GET /large HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  requests += "GET /large HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_THAT(testing::SendAll(fd->get(), requests), IsOk());
  ASSERT_TRUE(testing::WaitFor([&] { return large_calls_.load() >= 1; }, absl::Seconds(5)));
  // 1 MiB does not fit the receive window of a client that has not read (about 128 KiB), while
  // the server's send buffer takes several: the second request must not be parsed.
  EXPECT_FALSE(testing::WaitFor([&] { return large_calls_.load() >= 2; }, absl::Seconds(1)))
      << large_calls_.load() << " responses made for a client that read none";
  // Reading lets every request through, in order.
  absl::StatusOr<std::string> answers = testing::RecvUntilEof(fd->get(), absl::Seconds(10));
  ASSERT_THAT(answers, IsOk());
  size_t count = 0;
  for (size_t at = answers->find("HTTP/1.1 200"); at != std::string::npos;
       at = answers->find("HTTP/1.1 200", at + 1)) {
    ++count;
  }
  EXPECT_EQ(count, static_cast<size_t>(kRequests));
  EXPECT_EQ(large_calls_.load(), kRequests);
}

// GetOverIpv6 asks `path` of the server at [::1]:port over HTTP/1.0 and returns the whole
// answer (the server closes).
absl::StatusOr<std::string> GetOverIpv6(uint16_t port, const std::string& path) {
  base::UniqueFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 server{};
  server.sin6_family = AF_INET6;
  server.sin6_port = htons(port);
  server.sin6_addr = in6addr_loopback;
  // Blocking, but bounded: a loopback connect to a listening socket completes or is refused
  // at once.
  if (!fd.valid() ||
      ::connect(fd.get(), reinterpret_cast<sockaddr*>(&server), sizeof(server)) != 0) {
    return absl::UnavailableError(absl::StrCat("connect [::1]: ", std::strerror(errno)));
  }
  MESHTLS_RETURN_IF_ERROR(
      testing::SendAll(fd.get(), absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: x\r\n\r\n")));
  return testing::RecvUntilEof(fd.get(), absl::Seconds(5));
}

TEST(AdminServerListenTest, ServesAnIpv6Address) {
  std::vector<AdminRoute> routes = {
      {"/readyz", [] { return HttpResponse{.status = 200, .body = "ready\n"}; }}};
  absl::StatusOr<std::unique_ptr<AdminServer>> server =
      AdminServer::Start("[::1]:0", std::move(routes), {});
  ASSERT_THAT(server, IsOk());
  ASSERT_NE((*server)->port(), 0);
  absl::StatusOr<std::string> answer = GetOverIpv6((*server)->port(), "/readyz");
  ASSERT_THAT(answer, IsOk());
  EXPECT_THAT(*answer, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_TRUE(absl::EndsWith(*answer, "\r\n\r\nready\n")) << *answer;
  // Only ::1 is bound: nothing answers on 127.0.0.1 at that port.
  EXPECT_FALSE(testing::TcpConnect((*server)->port(), absl::Seconds(2)).ok());
}

// An IPv6 listener takes IPv4 clients too (as "[::]" does for a kubelet probing the pod's IPv4
// address). Bound to 127.0.0.1 in its IPv4-mapped form, which Linux allows only on a socket that
// is not IPv6-only, so the test stays on loopback. Clients count by their IPv4 address: the
// per-address share applies to them as to any other.
TEST(AdminServerListenTest, AnIpv6ListenerServesIpv4ClientsByTheirIpv4Address) {
  std::vector<AdminRoute> routes = {
      {"/readyz", [] { return HttpResponse{.status = 200, .body = "ready\n"}; }}};
  absl::StatusOr<std::unique_ptr<AdminServer>> server =
      AdminServer::Start("[::ffff:127.0.0.1]:0", std::move(routes), {},
                         AdminLimits{.max_connections = 8, .max_connections_per_address = 2});
  ASSERT_THAT(server, IsOk());
  const uint16_t port = (*server)->port();
  absl::StatusOr<testing::HttpResult> ready = testing::HttpGet(port, "/readyz");
  ASSERT_THAT(ready, IsOk());
  EXPECT_EQ(ready->status, 200);
  std::vector<base::UniqueFd> held;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<base::UniqueFd> fd = testing::TcpConnectFrom("127.0.0.2", port);
    ASSERT_THAT(fd, IsOk());
    held.push_back(*std::move(fd));
  }
  // The third connection from 127.0.0.2 is past its share of two: the first makes room.
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return testing::ScrapeMetric(port, "meshtls_admin_rejected_total{reason=\"evicted\"}") == 1;
      },
      absl::Seconds(5)));
  EXPECT_TRUE(PeerClosed(held[0].get(), absl::Seconds(5)));
}

// Destroying the server while clients hold connections (idle, mid-request, and stuck with an
// unread response) returns at once, closes every one of them and the listening socket.
TEST_F(AdminServerTest, StoppingClosesEveryClientConnection) {
  Start();
  const uint16_t port = server_->port();
  std::vector<base::UniqueFd> clients;
  absl::StatusOr<base::UniqueFd> idle = testing::TcpConnect(port);
  ASSERT_THAT(idle, IsOk());
  clients.push_back(*std::move(idle));
  absl::StatusOr<base::UniqueFd> half = testing::TcpConnect(port);
  ASSERT_THAT(half, IsOk());
  ASSERT_THAT(testing::SendAll(half->get(), "GET /readyz HTTP/1.1\r\nHost"), IsOk());
  clients.push_back(*std::move(half));
  absl::StatusOr<base::UniqueFd> stuck = testing::TcpConnect(port);
  ASSERT_THAT(stuck, IsOk());
  const int small = 4096;
  ::setsockopt(stuck->get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  ASSERT_THAT(testing::SendAll(stuck->get(), "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"), IsOk());
  clients.push_back(*std::move(stuck));
  ASSERT_TRUE(testing::WaitFor([&] { return calls_.load() == 1; }, absl::Seconds(5)));

  const absl::Time start = absl::Now();
  server_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "the server waited for its clients";
  for (size_t i = 0; i < clients.size(); ++i) {
    EXPECT_TRUE(PeerClosed(clients[i].get(), absl::Seconds(5))) << "client " << i;
  }
  EXPECT_FALSE(testing::TcpConnect(port, absl::Seconds(2)).ok()) << "still listening";
}

TEST_F(AdminServerTest, APortInUseIsAnErrorNamingTheAddress) {
  Start();
  const std::string taken = absl::StrCat("127.0.0.1:", server_->port());
  absl::StatusOr<std::unique_ptr<AdminServer>> second = AdminServer::Start(taken, {}, {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(absl::StrCat("admin endpoint: cannot listen on ", taken)));
}

TEST_F(AdminServerTest, RefusesANameAsListenAddress) {
  absl::StatusOr<std::unique_ptr<AdminServer>> server = AdminServer::Start("localhost:0", {}, {});
  EXPECT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("must be an IP address"));
}

}  // namespace
}  // namespace meshtls::admin

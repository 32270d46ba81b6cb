// dns::Resolver against testing::DnsServer on loopback, stepping a real EventLoop.

#include "sidecar/dns/resolver.h"

#include <gtest/gtest.h>

#include <optional>

#include "tests/testing/dns_server.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::sidecar::dns {
namespace {

using testing::StatusIs;

class ResolverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NE(dns_.port(), 0);
    auto loop = net::EventLoop::Create();
    ASSERT_TRUE(loop.ok());
    loop_ = *std::move(loop);
    MakeResolver({});
  }

  void MakeResolver(ResolverOptions options) {
    resolver_.reset();
    options.servers = {*base::ParseHostPort(dns_.address())};
    auto resolver = Resolver::Create(*loop_, options);
    ASSERT_TRUE(resolver.ok()) << resolver.status();
    resolver_ = *std::move(resolver);
    resolver_->set_observer([this](LookupOutcome o) { ++outcomes_[static_cast<int>(o)]; });
  }

  // Start resolves `host:port` into `*out` (set when the callback runs) for as long as
  // `owner` lives (the fixture's own token by default).
  void Start(const std::string& host_port, std::optional<absl::StatusOr<Resolver::Addresses>>* out,
             std::weak_ptr<const void> owner = {}) {
    if (owner.expired()) {
      owner = owner_;
    }
    resolver_->Resolve(*base::ParseHostPort(host_port), std::move(owner),
                       [out](absl::StatusOr<Resolver::Addresses> r) { *out = std::move(r); });
  }

  // Run steps the loop until `done` holds or `timeout` passes; false on timeout.
  bool Run(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(5)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done()) {
      if (absl::Now() > deadline) {
        return false;
      }
      loop_->RunOnce(/*max_wait_ms=*/20);
    }
    return true;
  }

  absl::StatusOr<Resolver::Addresses> ResolveNow(const std::string& host_port) {
    std::optional<absl::StatusOr<Resolver::Addresses>> out;
    Start(host_port, &out);
    if (!Run([&] { return out.has_value(); })) {
      return absl::DeadlineExceededError("no answer within 5 s");
    }
    return *out;
  }

  static std::vector<std::string> Texts(const Resolver::Addresses& addresses) {
    std::vector<std::string> out;
    for (const net::SocketAddress& a : addresses) {
      out.push_back(a.ToString());
    }
    return out;
  }

  int outcome(LookupOutcome o) const { return outcomes_[static_cast<int>(o)]; }

  std::shared_ptr<int> owner_ = std::make_shared<int>(0);
  meshtls::testing::DnsServer dns_;
  std::unique_ptr<net::EventLoop> loop_;
  std::unique_ptr<Resolver> resolver_;
  int outcomes_[kLookupOutcomeCount] = {};
};

TEST_F(ResolverTest, IpLiteralsNeverTouchDns) {
  std::optional<absl::StatusOr<Resolver::Addresses>> out;
  Start("127.0.0.9:80", &out);
  ASSERT_TRUE(out.has_value()) << "an IP literal must be answered at once";
  ASSERT_TRUE(out->ok());
  EXPECT_EQ(Texts(**out), std::vector<std::string>{"127.0.0.9:80"});
  EXPECT_EQ(outcome(LookupOutcome::kSuccess) + outcome(LookupOutcome::kCacheHit), 0);
}

TEST_F(ResolverTest, ReturnsEveryAddressInOrderWithThePort) {
  dns_.SetAnswer("multi.dns.test", {"127.0.0.3", "127.0.0.1", "::1"}, 60);
  absl::StatusOr<Resolver::Addresses> r = ResolveNow("multi.dns.test:8443");
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> texts = Texts(*r);
  ASSERT_EQ(texts.size(), 3u);
  // IPv4 keeps the server's order (RFC 6724 sorting may put ::1 first: same scope, preferred).
  std::vector<std::string> v4;
  for (const std::string& t : texts) {
    if (t.front() != '[') {
      v4.push_back(t);
    }
  }
  EXPECT_EQ(v4, (std::vector<std::string>{"127.0.0.3:8443", "127.0.0.1:8443"}));
  EXPECT_NE(std::find(texts.begin(), texts.end(), "[::1]:8443"), texts.end());
  EXPECT_EQ(outcome(LookupOutcome::kSuccess), 1);
}

TEST_F(ResolverTest, CachesForTheTtlAndCoalescesConcurrentLookups) {
  dns_.SetAnswer("cached.dns.test", {"127.0.0.1"}, 60);
  std::optional<absl::StatusOr<Resolver::Addresses>> a, b, c;
  Start("cached.dns.test:1", &a);
  Start("cached.dns.test:2", &b);
  Start("cached.dns.test:3", &c);
  ASSERT_TRUE(Run([&] { return a.has_value() && b.has_value() && c.has_value(); }));
  ASSERT_TRUE(a->ok() && b->ok() && c->ok());
  EXPECT_EQ(Texts(**b), std::vector<std::string>{"127.0.0.1:2"});
  EXPECT_EQ(outcome(LookupOutcome::kSuccess), 1);
  EXPECT_EQ(outcome(LookupOutcome::kCoalesced), 2);
  const int queries = dns_.Queries("cached.dns.test");
  EXPECT_LE(queries, 2);  // A and AAAA, once

  dns_.SetAnswer("cached.dns.test", {"127.0.0.2"}, 60);
  absl::StatusOr<Resolver::Addresses> again = ResolveNow("cached.dns.test:4");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Texts(*again), std::vector<std::string>{"127.0.0.1:4"}) << "the cache was not used";
  EXPECT_EQ(dns_.Queries("cached.dns.test"), queries);
  EXPECT_EQ(outcome(LookupOutcome::kCacheHit), 1);
}

TEST_F(ResolverTest, CapsTheTtl) {
  ResolverOptions options;
  options.max_ttl = absl::Seconds(1);
  MakeResolver(options);
  dns_.SetAnswer("capped.dns.test", {"127.0.0.1"}, 3600);
  ASSERT_TRUE(ResolveNow("capped.dns.test:1").ok());
  dns_.SetAnswer("capped.dns.test", {"127.0.0.2"}, 3600);
  // Bounded: max_ttl plus a margin.
  bool changed = Run(
      [&] {
        absl::StatusOr<Resolver::Addresses> r = ResolveNow("capped.dns.test:1");
        return r.ok() && Texts(*r) == std::vector<std::string>{"127.0.0.2:1"};
      },
      absl::Seconds(5));
  EXPECT_TRUE(changed) << "an answer with a TTL of an hour outlived max_ttl (1 s)";
}

TEST_F(ResolverTest, CachesNxdomainForTheNegativeTtl) {
  absl::StatusOr<Resolver::Addresses> r = ResolveNow("nowhere.dns.test:1");
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_NE(r.status().message().find("nowhere.dns.test"), std::string::npos) << r.status();
  EXPECT_EQ(outcome(LookupOutcome::kNxdomain), 1);
  const int queries = dns_.Queries("nowhere.dns.test");
  EXPECT_GT(queries, 0);
  dns_.SetAnswer("nowhere.dns.test", {"127.0.0.1"}, 60);
  EXPECT_THAT(ResolveNow("nowhere.dns.test:1").status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(dns_.Queries("nowhere.dns.test"), queries);
  EXPECT_EQ(outcome(LookupOutcome::kCacheHit), 1);
}

TEST_F(ResolverTest, AnUnansweredNameDoesNotDelayOthers) {
  dns_.SetSilent("silent.dns.test");
  dns_.SetAnswer("quick.dns.test", {"127.0.0.1"}, 60);
  std::optional<absl::StatusOr<Resolver::Addresses>> silent;
  Start("silent.dns.test:1", &silent);
  ASSERT_TRUE(Run([&] { return dns_.Queries("silent.dns.test") > 0; }));
  const absl::Time start = absl::Now();
  absl::StatusOr<Resolver::Addresses> quick = ResolveNow("quick.dns.test:1");
  ASSERT_TRUE(quick.ok()) << quick.status();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_FALSE(silent.has_value());
  // Destroying the resolver with the lookup in flight drops its callback without a call.
  resolver_.reset();
  loop_->RunOnce(0);
  EXPECT_FALSE(silent.has_value());
}

TEST_F(ResolverTest, TheCacheIsBounded) {
  ResolverOptions options;
  options.max_names = 2;
  MakeResolver(options);
  for (const char* name : {"one.dns.test", "two.dns.test", "three.dns.test"}) {
    dns_.SetAnswer(name, {"127.0.0.1"}, 60);
    ASSERT_TRUE(ResolveNow(std::string(name) + ":1").ok());
    EXPECT_LE(resolver_->cached_names_for_test(), 2u);
  }
}

TEST_F(ResolverTest, ASilentNameTimesOutWithinTheLookupTimeout) {
  ResolverOptions options;
  options.lookup_timeout = absl::Seconds(1);
  MakeResolver(options);
  dns_.SetSilent("silent.dns.test");
  const absl::Time start = absl::Now();
  std::optional<absl::StatusOr<Resolver::Addresses>> out;
  Start("silent.dns.test:1", &out);
  // c-ares's own defaults (5 s per try, 4 tries, doubling) would take over a minute.
  ASSERT_TRUE(Run([&] { return out.has_value(); }, absl::Seconds(10)))
      << "no answer within 10 s for a lookup bounded by 1 s";
  const absl::Duration took = absl::Now() - start;
  EXPECT_LE(took, absl::Milliseconds(1500));
  EXPECT_THAT(out->status(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_NE(out->status().message().find("did not answer"), std::string::npos) << out->status();
  EXPECT_EQ(outcome(LookupOutcome::kTimeout), 1);
  EXPECT_GE(dns_.Queries("silent.dns.test"), 2) << "the query was not tried again";
}

TEST_F(ResolverTest, WaitersOfClosedConnectionsDoNotAccumulate) {
  dns_.SetSilent("silent.dns.test");
  std::optional<absl::StatusOr<Resolver::Addresses>> out;
  // 1000 connections in turn wait for the name and go away before it answers.
  for (int i = 0; i < 1000; ++i) {
    auto connection = std::make_shared<int>(i);
    Start("silent.dns.test:1", &out, connection);
  }
  EXPECT_LE(resolver_->waiters_for_test("silent.dns.test"), 32u);
  // The live ones are kept, and a waiter over the cap is refused at once with a clear error.
  ResolverOptions options;
  options.max_waiters_per_name = 4;
  MakeResolver(options);
  std::vector<std::optional<absl::StatusOr<Resolver::Addresses>>> live(5);
  for (auto& o : live) {
    Start("silent.dns.test:1", &o);
  }
  EXPECT_EQ(resolver_->waiters_for_test("silent.dns.test"), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(live[i].has_value()) << i;
  }
  ASSERT_TRUE(live[4].has_value()) << "the fifth waiter was neither held nor refused";
  EXPECT_THAT(live[4]->status(), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(live[4]->status().message().find("silent.dns.test"), std::string::npos)
      << live[4]->status();
}

TEST_F(ResolverTest, AnAnswerIsNotDeliveredToAGoneOwner) {
  dns_.SetAnswer("late.dns.test", {"127.0.0.1"}, 60);
  std::optional<absl::StatusOr<Resolver::Addresses>> gone, live;
  auto connection = std::make_shared<int>(0);
  Start("late.dns.test:1", &gone, connection);
  Start("late.dns.test:2", &live);
  connection.reset();  // closed while the lookup is in flight
  ASSERT_TRUE(Run([&] { return live.has_value(); }));
  loop_->RunOnce(0);  // any deferred callback of the same batch
  EXPECT_FALSE(gone.has_value()) << "the answer reached a connection that had gone";
}

}  // namespace
}  // namespace meshtls::sidecar::dns

#include "sidecar/tls/server_session_store.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace meshtls::sidecar {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

ServerSessionStore::Entry MakeEntry(absl::string_view peer, absl::Time expires) {
  return ServerSessionStore::Entry{.session = SslSessionPtr(SSL_SESSION_new()),
                                   .peer = *pki::SpiffeId::Parse(peer),
                                   .expires = expires};
}

TEST(ServerSessionStoreTest, ATicketResumesOnceWithItsIdentity) {
  ServerSessionStore store;
  store.Put("ticket-a", MakeEntry("spiffe://mesh.test/ns/a/sa/one", kNow + absl::Hours(1)));
  std::optional<ServerSessionStore::Entry> first = store.Take("ticket-a", kNow);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->peer.str(), "spiffe://mesh.test/ns/a/sa/one");
  EXPECT_NE(first->session, nullptr);
  EXPECT_FALSE(store.Take("ticket-a", kNow).has_value()) << "a ticket resumed twice";
  EXPECT_EQ(store.size(), 0u);
}

TEST(ServerSessionStoreTest, UnknownAndExpiredTicketsDoNotResume) {
  ServerSessionStore store;
  store.Put("ticket-a", MakeEntry("spiffe://mesh.test/ns/a/sa/one", kNow + absl::Seconds(1)));
  EXPECT_FALSE(store.Take("ticket-b", kNow).has_value());
  EXPECT_FALSE(store.Take("ticket-a", kNow + absl::Seconds(1)).has_value());
  EXPECT_EQ(store.size(), 0u) << "an expired session is dropped when presented";
}

TEST(ServerSessionStoreTest, BeyondCapacityTheOldestSessionIsDropped) {
  ServerSessionStore store(/*capacity=*/3);
  for (int i = 0; i < 5; ++i) {
    store.Put(absl::StrCat("t", i),
              MakeEntry("spiffe://mesh.test/ns/a/sa/one", kNow + absl::Hours(1)));
  }
  EXPECT_EQ(store.size(), 3u);
  EXPECT_FALSE(store.Take("t0", kNow).has_value());
  EXPECT_FALSE(store.Take("t1", kNow).has_value());
  EXPECT_TRUE(store.Take("t2", kNow).has_value());
  EXPECT_TRUE(store.Take("t4", kNow).has_value());
}

// Tickets that are taken as fast as they are issued never fill the store, and the bookkeeping
// of their order does not grow either: the store stays usable and bounded over many rounds.
TEST(ServerSessionStoreTest, SteadyIssueAndResumeStaysBounded) {
  ServerSessionStore store(/*capacity=*/4);
  store.Put("never-used", MakeEntry("spiffe://mesh.test/ns/a/sa/one", kNow + absl::Hours(1)));
  for (int i = 0; i < 10'000; ++i) {
    const std::string ticket = absl::StrCat("t", i);
    store.Put(ticket, MakeEntry("spiffe://mesh.test/ns/a/sa/one", kNow + absl::Hours(1)));
    ASSERT_TRUE(store.Take(ticket, kNow).has_value()) << i;
    ASSERT_LE(store.order_size(), 8u) << i;
  }
  EXPECT_EQ(store.size(), 1u);
  EXPECT_TRUE(store.Take("never-used", kNow).has_value()) << "a live session was evicted";
}

}  // namespace
}  // namespace meshtls::sidecar

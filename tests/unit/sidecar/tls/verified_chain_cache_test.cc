#include "sidecar/tls/verified_chain_cache.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

constexpr char kPeer[] = "spiffe://mesh.test/ns/a/sa/one";
const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

class VerifiedChainCacheTest : public ::testing::Test {
 protected:
  std::string KeyOf(const testing::IssuedLeaf& leaf, uint64_t verifier = 1,
                    pki::PeerRole role = pki::PeerRole::kClient) {
    std::optional<std::string> key =
        VerifiedChainCache::MakeKey(verifier, role, leaf.chain[0].get(), nullptr);
    EXPECT_TRUE(key.has_value());
    return key.value_or("");
  }

  testing::TestCa ca_{"mesh.test", kNow};
  testing::IssuedLeaf leaf_ = ca_.Issue(kPeer, absl::Hours(1), kNow);
  pki::ValidityWindow window_{.not_before = kNow - absl::Minutes(1),
                              .not_after = kNow + absl::Hours(1)};
};

TEST_F(VerifiedChainCacheTest, TheSameChainHitsInsideItsValidityWindowOnly) {
  VerifiedChainCache cache;
  cache.Insert(KeyOf(leaf_), *pki::SpiffeId::Parse(kPeer), window_);
  std::optional<pki::SpiffeId> hit = cache.Find(KeyOf(leaf_), kNow);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->str(), kPeer);
  EXPECT_FALSE(cache.Find(KeyOf(leaf_), kNow + absl::Hours(1)).has_value()) << "expired";
  EXPECT_FALSE(cache.Find(KeyOf(leaf_), kNow - absl::Minutes(2)).has_value()) << "not yet valid";
}

TEST_F(VerifiedChainCacheTest, KeyCoversEveryCertificateTheRoleAndTheVerifier) {
  VerifiedChainCache cache;
  cache.Insert(KeyOf(leaf_), *pki::SpiffeId::Parse(kPeer), window_);
  // Another certificate for the same identity (a renewal, or a forgery of the name).
  testing::IssuedLeaf renewed = ca_.Issue(kPeer, absl::Hours(1), kNow);
  EXPECT_FALSE(cache.Find(KeyOf(renewed), kNow).has_value());
  // The same certificate verified for the other role, or against another trust bundle.
  EXPECT_FALSE(cache.Find(KeyOf(leaf_, 1, pki::PeerRole::kServer), kNow).has_value());
  EXPECT_FALSE(cache.Find(KeyOf(leaf_, 2), kNow).has_value());
  // The same leaf sent with an extra certificate is another chain.
  pki::X509StackPtr sent(sk_X509_new_null());
  ASSERT_EQ(sk_X509_push(sent.get(), ca_.root().get()), 1);
  std::optional<std::string> with_extra =
      VerifiedChainCache::MakeKey(1, pki::PeerRole::kClient, leaf_.chain[0].get(), sent.get());
  (void)sk_X509_pop(sent.get());  // the stack does not own the root
  ASSERT_TRUE(with_extra.has_value());
  EXPECT_FALSE(cache.Find(*with_extra, kNow).has_value());
}

TEST_F(VerifiedChainCacheTest, BeyondCapacityTheOldestChainIsForgotten) {
  VerifiedChainCache cache(/*capacity=*/2);
  for (uint64_t verifier = 1; verifier <= 3; ++verifier) {
    cache.Insert(KeyOf(leaf_, verifier), *pki::SpiffeId::Parse(kPeer), window_);
  }
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_FALSE(cache.Find(KeyOf(leaf_, 1), kNow).has_value());
  EXPECT_TRUE(cache.Find(KeyOf(leaf_, 2), kNow).has_value());
  EXPECT_TRUE(cache.Find(KeyOf(leaf_, 3), kNow).has_value());
}

}  // namespace
}  // namespace meshtls::sidecar

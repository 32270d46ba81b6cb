#include "sidecar/identity/rotator.h"

#include <gtest/gtest.h>

#include <deque>

#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kId[] = "spiffe://mesh.test/ns/a/sa/b";

// FakeCaClient signs each CSR with a TestCa (so the certificate matches the CSR's key), or
// returns a queued error. It records the credentials of every call.
class FakeCaClient final : public CaClient {
 public:
  FakeCaClient(testing::TestCa& ca, testing::FakeClock& clock) : ca_(ca), clock_(clock) {}

  absl::StatusOr<SignedCredentials> Sign(const std::string& csr_der,
                                         const CallCredentials& credentials,
                                         absl::Duration) override {
    calls.push_back(credentials);
    if (!errors.empty()) {
      absl::Status e = errors.front();
      errors.pop_front();
      return e;
    }
    absl::StatusOr<pki::Certificate> signed_leaf =
        ca_.SignCsr(csr_der, kId, clock_.Now() - absl::Minutes(2), clock_.Now() + ttl);
    if (!signed_leaf.ok()) {
      return signed_leaf.status();
    }
    const pki::Certificate& leaf = *signed_leaf;
    return SignedCredentials{.chain = {leaf},
                             .roots = {ca_.root()},
                             .bundle_sequence = 1,
                             .not_after = leaf.not_after()};
  }
  absl::Status WatchTrustBundle(
      const CallCredentials&,
      const std::function<void(std::vector<pki::Certificate>, uint64_t)>&) override {
    return absl::CancelledError("not used");
  }
  void CancelWatch() override {}
  void SetExtraRoots(std::vector<pki::Certificate>) override {}

  absl::Duration ttl = absl::Hours(1);
  std::deque<absl::Status> errors;
  std::vector<CallCredentials> calls;

 private:
  testing::TestCa& ca_;
  testing::FakeClock& clock_;
};

class RecordingSink final : public CredentialSink {
 public:
  absl::Status Publish(const pki::CredentialBundle& bundle) override {
    published.push_back(bundle);
    return absl::OkStatus();
  }
  std::vector<pki::CredentialBundle> published;
};

class RotatorTest : public ::testing::Test {
 protected:
  RotatorOptions Options() {
    RotatorOptions o;
    o.jitter = 0;
    o.token_file = token_path_;
    return o;
  }
  testing::FakeClock clock_{absl::FromUnixSeconds(1'800'000'000)};
  testing::TestCa ca_{"mesh.test", clock_.Now()};
  testing::TempDir dir_;
  std::string token_path_ = dir_.Write("token", "first-token\n");
  FakeCaClient client_{ca_, clock_};
  RecordingSink sink_;
};

TEST_F(RotatorTest, RenewsAtHalfTheLifetimeWithANewKeyEachTime) {
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  EXPECT_EQ(rotator.NextRefresh(), clock_.Now() + absl::Minutes(30));
  ASSERT_EQ(sink_.published.size(), 1u);
  // First contact: bootstrap token only.
  EXPECT_TRUE(client_.calls[0].chain.empty());
  EXPECT_EQ(client_.calls[0].bearer_token, "first-token");

  clock_.Advance(absl::Minutes(30));
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  ASSERT_EQ(sink_.published.size(), 2u);
  // Renewal presents the current certificate (and still the token, the fallback).
  ASSERT_EQ(client_.calls[1].chain.size(), 1u);
  EXPECT_EQ(client_.calls[1].chain[0].SerialHex(), sink_.published[0].chain[0].SerialHex());
  EXPECT_EQ(EVP_PKEY_eq(sink_.published[0].key.get(), sink_.published[1].key.get()), 0)
      << "each renewal must use a new key";
}

TEST_F(RotatorTest, KeepsOldCredentialsAndBacksOffWhenCaIsDown) {
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 8; ++i) {
    client_.errors.push_back(absl::UnavailableError("ca down"));
    clock_.Set(rotator.NextRefresh());
    EXPECT_THAT(rotator.RefreshOnce(), StatusIs(absl::StatusCode::kUnavailable));
    delays.push_back(rotator.NextRefresh() - clock_.Now());
  }
  EXPECT_EQ(sink_.published.size(), 1u) << "a failed renewal never replaces the credentials";
  // Backoff doubles from 1 s up to the 30 s cap; each delay carries +-20% jitter.
  absl::Duration expected = absl::Seconds(1);
  for (size_t i = 0; i < delays.size(); ++i) {
    EXPECT_GE(delays[i], expected * 0.8) << "attempt " << i;
    EXPECT_LE(delays[i], expected * 1.2) << "attempt " << i;
    expected = std::min(expected * 2, absl::Seconds(30));
  }
  EXPECT_EQ(rotator.status().last_error, "ca down");
}

TEST_F(RotatorTest, ShortLivedCertificatesRetryWithinATenthOfTheirLifetime) {
  client_.ttl = absl::Seconds(60);
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  for (int i = 0; i < 10; ++i) {
    client_.errors.push_back(absl::UnavailableError("ca down"));
    clock_.Set(rotator.NextRefresh());
    ASSERT_THAT(rotator.RefreshOnce(), StatusIs(absl::StatusCode::kUnavailable));
    // The lifetime is 180 s (60 s TTL plus the 2 min backdate); a tenth of it caps retries.
    EXPECT_LE(rotator.NextRefresh() - clock_.Now(), absl::Seconds(18) * 1.2) << "attempt " << i;
  }
}

TEST_F(RotatorTest, BundleWithoutOurRootTriggersAnImmediateRenewal) {
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  ASSERT_GT(rotator.NextRefresh(), clock_.Now() + absl::Minutes(10));
  testing::TestCa next("mesh.test", clock_.Now());
  rotator.OnTrustBundle({ca_.root(), next.root()}, 2);  // still has our root: nothing to do
  EXPECT_GT(rotator.NextRefresh(), clock_.Now() + absl::Minutes(10));
  rotator.OnTrustBundle({next.root()}, 3);  // our root is gone
  EXPECT_EQ(rotator.NextRefresh(), clock_.Now());
  EXPECT_EQ(sink_.published.back().bundle_sequence, 3u);
}

TEST_F(RotatorTest, ReReadsTheTokenOnEveryAttemptAndRecoversAfterExpiry) {
  client_.ttl = absl::Minutes(10);
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  // certmgr is down past the certificate's expiry.
  clock_.Advance(absl::Minutes(11));
  client_.errors.push_back(absl::UnavailableError("ca down"));
  EXPECT_THAT(rotator.RefreshOnce(), StatusIs(absl::StatusCode::kUnavailable));
  dir_.Write("token", "rotated-token");
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  const CallCredentials& last = client_.calls.back();
  EXPECT_TRUE(last.chain.empty()) << "an expired certificate is not presented";
  EXPECT_EQ(last.bearer_token, "rotated-token");
  EXPECT_EQ(sink_.published.size(), 2u);
}

TEST_F(RotatorTest, NoCredentialAtAllIsAClearError) {
  RotatorOptions o = Options();
  o.token_file = dir_.File("missing-token");
  Rotator rotator(o, client_, sink_, clock_);
  EXPECT_THAT(rotator.RefreshOnce(), StatusIs(absl::StatusCode::kUnauthenticated,
                                              "no valid certificate and no bootstrap token"));
  EXPECT_TRUE(client_.calls.empty());
}

TEST_F(RotatorTest, TrustBundleUpdatesArePublishedWithTheCurrentCertificate) {
  Rotator rotator(Options(), client_, sink_, clock_);
  ASSERT_THAT(rotator.RefreshOnce(), IsOk());
  testing::TestCa next("mesh.test", clock_.Now());
  rotator.OnTrustBundle({ca_.root(), next.root()}, 2);
  ASSERT_EQ(sink_.published.size(), 2u);
  EXPECT_EQ(sink_.published[1].trust_bundle.size(), 2u);
  EXPECT_EQ(sink_.published[1].bundle_sequence, 2u);
  EXPECT_EQ(sink_.published[1].chain[0].SerialHex(), sink_.published[0].chain[0].SerialHex());
  rotator.OnTrustBundle({ca_.root()}, 2);  // stale sequence: ignored
  EXPECT_EQ(sink_.published.size(), 2u);
}

}  // namespace
}  // namespace meshtls::sidecar

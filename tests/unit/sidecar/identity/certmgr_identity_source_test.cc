#include "sidecar/identity/certmgr_identity_source.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kId[] = "spiffe://mesh.test/ns/a/sa/b";
constexpr uint64_t kWatchedSequence = 5;

// FakeCaClient signs each CSR with a TestCa (bundle sequence 1), or fails every Sign while
// `sign_error` is set. Its watch stream sends the same root as sequence 5, then stays open
// until cancelled. Thread-safe: the Rotator's two threads call it.
class FakeCaClient final : public CaClient {
 public:
  FakeCaClient(const testing::TestCa& ca, const testing::FakeClock& clock, absl::Status sign_error)
      : ca_(ca), clock_(clock), sign_error_(std::move(sign_error)) {}

  absl::StatusOr<SignedCredentials> Sign(const std::string& csr_der, const CallCredentials&,
                                         absl::Duration) override {
    absl::MutexLock lock(&mu_);
    if (!sign_error_.ok()) {
      return sign_error_;
    }
    absl::StatusOr<pki::Certificate> signed_leaf =
        ca_.SignCsr(csr_der, kId, clock_.Now() - absl::Minutes(2), clock_.Now() + absl::Hours(1));
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
      const std::function<void(std::vector<pki::Certificate>, uint64_t)>& on_bundle) override {
    on_bundle({ca_.root()}, kWatchedSequence);
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&cancelled_));
    return absl::CancelledError("watch cancelled");
  }
  void CancelWatch() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
  }
  void SetExtraRoots(std::vector<pki::Certificate>) override {}

 private:
  const testing::TestCa& ca_;
  const testing::FakeClock& clock_;
  absl::Mutex mu_;
  absl::Status sign_error_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// RecordingSink keeps the sequence of every bundle published, from the Rotator's threads.
class RecordingSink final : public CredentialSink {
 public:
  absl::Status Publish(const pki::CredentialBundle& bundle) override {
    absl::MutexLock lock(&mu_);
    sequences_.push_back(bundle.bundle_sequence);
    return absl::OkStatus();
  }
  std::vector<uint64_t> sequences() const {
    absl::MutexLock lock(&mu_);
    return sequences_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<uint64_t> sequences_ ABSL_GUARDED_BY(mu_);
};

class CertmgrIdentitySourceTest : public ::testing::Test {
 protected:
  std::unique_ptr<CertmgrIdentitySource> MakeSource(absl::Status sign_error) {
    return std::make_unique<CertmgrIdentitySource>(
        std::make_unique<FakeCaClient>(ca_, clock_, std::move(sign_error)), RotatorOptions{}, sink_,
        clock_);
  }

  testing::FakeClock clock_{absl::FromUnixSeconds(1'800'000'000)};
  testing::TestCa ca_{"mesh.test", clock_.Now()};
  RecordingSink sink_;
};

TEST_F(CertmgrIdentitySourceTest, PublishesTheCertificateAndTheWatchedBundleAndCountsRenewals) {
  std::unique_ptr<CertmgrIdentitySource> source = MakeSource(absl::OkStatus());
  ASSERT_THAT(source->Start(), IsOk());
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        const std::vector<uint64_t> s = sink_.sequences();
        return !s.empty() && s.back() == kWatchedSequence && source->status().successes == 1;
      },
      absl::Seconds(10)))
      << "published " << sink_.sequences().size() << " bundles";
  const IdentityStatus status = source->status();
  EXPECT_EQ(status.failures, 0u);
  EXPECT_EQ(status.last_success, clock_.Now());
  EXPECT_GT(status.renewal_due, clock_.Now()) << "the next renewal is scheduled";
  EXPECT_TRUE(status.last_error.empty()) << status.last_error;
  EXPECT_THAT(source->Reload(), IsOk()) << "certmgr mode has nothing to re-read";

  source->Stop();
  const size_t published = sink_.sequences().size();
  source->Stop();  // idempotent, as the destructor stops again
  EXPECT_EQ(sink_.sequences().size(), published) << "nothing is published after Stop";
}

TEST_F(CertmgrIdentitySourceTest, CountsFailedRenewalsAndKeepsTheirError) {
  std::unique_ptr<CertmgrIdentitySource> source = MakeSource(absl::UnavailableError("ca down"));
  ASSERT_THAT(source->Start(), IsOk()) << "certmgr being down does not stop the sidecar";
  ASSERT_TRUE(testing::WaitFor([&] { return source->status().failures >= 1; }, absl::Seconds(10)));
  const IdentityStatus status = source->status();
  EXPECT_EQ(status.successes, 0u);
  EXPECT_EQ(status.last_success, absl::InfinitePast());
  EXPECT_EQ(status.last_error, "ca down");
  source->Stop();
  EXPECT_TRUE(sink_.sequences().empty());
}

TEST(CertmgrIdentitySourceCreateTest, AnUnreadableServerCaIsAConfigurationError) {
  RecordingSink sink;
  testing::TempDir dir;
  CertmgrIdentityOptions options;
  options.addresses = {"127.0.0.1:1"};
  options.server_ca = dir.File("missing-ca.pem");
  absl::StatusOr<std::unique_ptr<CertmgrIdentitySource>> source =
      CertmgrIdentitySource::Create(options, sink);
  EXPECT_THAT(source, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(source.status().message().find("identity.certmgr.server_ca: "), std::string::npos)
      << source.status();
}

}  // namespace
}  // namespace meshtls::sidecar

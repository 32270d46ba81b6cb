#include "sidecar/identity/files_identity_source.h"

#include <gtest/gtest.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kId[] = "spiffe://mesh.test/ns/a/sa/b";

// RecordingSink keeps what was published (serial and bundle sequence), or refuses everything
// while `refuse` is set. Thread-safe: the file watcher's thread publishes too.
class RecordingSink final : public CredentialSink {
 public:
  struct Published {
    std::string serial;
    uint64_t sequence;
    size_t roots;
  };

  absl::Status Publish(const pki::CredentialBundle& bundle) override {
    absl::MutexLock lock(&mu_);
    if (refuse_) {
      return absl::PermissionDeniedError("refused by the test");
    }
    published_.push_back(
        {bundle.chain[0].SerialHex(), bundle.bundle_sequence, bundle.trust_bundle.size()});
    return absl::OkStatus();
  }
  void set_refuse(bool refuse) {
    absl::MutexLock lock(&mu_);
    refuse_ = refuse;
  }
  std::vector<Published> published() const {
    absl::MutexLock lock(&mu_);
    return published_;
  }
  Published last() const {
    absl::MutexLock lock(&mu_);
    return published_.empty() ? Published{"", 0, 0} : published_.back();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<Published> published_ ABSL_GUARDED_BY(mu_);
  bool refuse_ ABSL_GUARDED_BY(mu_) = false;
};

class FilesIdentitySourceTest : public ::testing::Test {
 protected:
  void WriteLeaf(const testing::IssuedLeaf& leaf) {
    dir_.Write("tls.crt", leaf.ChainPem());
    dir_.Write("tls.key", leaf.KeyPem(), 0600);
  }
  void WriteBundle(const std::string& pem) { dir_.Write("ca.crt", pem); }
  FilesIdentityOptions Options() const {
    return {.cert = dir_.File("tls.crt"),
            .key = dir_.File("tls.key"),
            .trust_bundle = dir_.File("ca.crt"),
            .poll_interval = absl::Milliseconds(10)};
  }

  testing::TempDir dir_;
  testing::TestCa ca_{"mesh.test"};
  testing::TestCa other_ca_{"mesh.test"};
  RecordingSink sink_;
};

TEST_F(FilesIdentitySourceTest, CountsTrustBundleChangesNotRewritesOrLeafChanges) {
  const testing::IssuedLeaf first = ca_.Issue(kId);
  WriteLeaf(first);
  WriteBundle(ca_.RootPem());
  FilesIdentitySource source(Options(), sink_);
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 1u) << "the first bundle loaded";

  // The same roots written again, re-encoded with text around them: the same bundle.
  WriteBundle(absl::StrCat("# the mesh root\n", ca_.RootPem(), "\n\n"));
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 1u);

  // A new certificate and key under the same roots: still the same bundle.
  const testing::IssuedLeaf second = ca_.Issue(kId);
  WriteLeaf(second);
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().serial, second.chain[0].SerialHex());
  EXPECT_EQ(sink_.last().sequence, 1u);

  // A root added: a new bundle. The same two roots in the other order: not a new one.
  WriteBundle(ca_.RootPem() + other_ca_.RootPem());
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 2u);
  EXPECT_EQ(sink_.last().roots, 2u);
  WriteBundle(other_ca_.RootPem() + ca_.RootPem());
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 2u);

  // Back to the first bundle: a change again, so the sequence moves on, never back.
  WriteBundle(ca_.RootPem());
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 3u);
  EXPECT_EQ(sink_.published().size(), 6u) << "every load publishes, changed or not";
  const IdentityStatus status = source.status();
  EXPECT_EQ(status.successes, 6u);
  EXPECT_EQ(status.failures, 0u);
  EXPECT_NE(status.last_success, absl::InfinitePast());
  EXPECT_EQ(status.renewal_due, absl::InfinitePast()) << "files are followed, not renewed";
}

TEST_F(FilesIdentitySourceTest, ABundleNotPublishedDoesNotCount) {
  WriteLeaf(ca_.Issue(kId));
  WriteBundle(ca_.RootPem());
  FilesIdentitySource source(Options(), sink_);
  ASSERT_THAT(source.Reload(), IsOk());

  // An unreadable bundle is refused, named, and changes nothing.
  WriteBundle("not a certificate\n");
  EXPECT_THAT(source.Reload(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(std::string(source.Reload().message()).find("identity.files.trust_bundle"),
            std::string::npos);
  // A new bundle the sink refuses was never in use.
  WriteBundle(other_ca_.RootPem());
  sink_.set_refuse(true);
  EXPECT_THAT(source.Reload(), StatusIs(absl::StatusCode::kPermissionDenied));
  sink_.set_refuse(false);
  ASSERT_EQ(sink_.published().size(), 1u);
  EXPECT_EQ(sink_.last().sequence, 1u);

  // Once accepted, that bundle is the second one published.
  ASSERT_THAT(source.Reload(), IsOk());
  EXPECT_EQ(sink_.last().sequence, 2u);
  const IdentityStatus status = source.status();
  EXPECT_EQ(status.successes, 2u);
  EXPECT_EQ(status.failures, 3u);
}

TEST_F(FilesIdentitySourceTest, StartFailsWithoutTheFilesAndPublishesNothing) {
  WriteLeaf(ca_.Issue(kId));
  FilesIdentitySource source(Options(), sink_);
  absl::Status s = source.Start();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_NE(std::string(s.message()).find(dir_.File("ca.crt")), std::string::npos) << s;
  EXPECT_TRUE(sink_.published().empty());
  EXPECT_EQ(source.status().failures, 1u);
}

TEST_F(FilesIdentitySourceTest, FollowsTheFilesAfterStart) {
  WriteLeaf(ca_.Issue(kId));
  WriteBundle(ca_.RootPem());
  FilesIdentitySource source(Options(), sink_);
  ASSERT_THAT(source.Start(), IsOk());
  ASSERT_EQ(sink_.published().size(), 1u) << "Start publishes before it returns";

  WriteBundle(ca_.RootPem() + other_ca_.RootPem());
  EXPECT_TRUE(testing::WaitFor([&] { return sink_.last().sequence == 2; }, absl::Seconds(10)))
      << "the watcher did not publish the new bundle";
  EXPECT_EQ(sink_.last().roots, 2u);

  source.Stop();
  const size_t published = sink_.published().size();
  WriteBundle(other_ca_.RootPem());
  ASSERT_THAT(source.Reload(), IsOk()) << "Reload still works without the watcher";
  EXPECT_EQ(sink_.published().size(), published + 1);
  EXPECT_EQ(sink_.last().sequence, 3u);
}

}  // namespace
}  // namespace meshtls::sidecar

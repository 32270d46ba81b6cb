#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "certmgr/ca/ca_material.h"
#include "certmgr/ca/signer.h"
#include "common/base/file.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr absl::Duration kCaTtl = absl::Hours(100);
constexpr absl::Duration kLeafLife = absl::Hours(24);

class CaRotationTest : public ::testing::Test {
 protected:
  absl::Status Step(CaRotationStep step, bool force = false) {
    return RotateCa(dir_.path() + "/ca", "mesh.test", step, kCaTtl, kLeafLife, force, clock_);
  }
  CaMaterial Load() { return *LoadCaDir(dir_.path() + "/ca", "mesh.test", clock_); }

  testing::TempDir dir_;
  testing::FakeClock clock_{absl::FromUnixSeconds(1'800'000'000)};
};

TEST_F(CaRotationTest, PrepareActivateRetire) {
  CaMaterial first = *LoadOrCreateCaInDir(dir_.path() + "/ca", "mesh.test", kCaTtl, clock_);
  EXPECT_EQ(first.roots.size(), 1u);
  // The sequence starts at the clock (microseconds) and rises with every step.
  EXPECT_EQ(first.bundle_sequence, static_cast<uint64_t>(absl::ToUnixMicros(clock_.Now())));

  EXPECT_THAT(Step(CaRotationStep::kActivate),
              StatusIs(absl::StatusCode::kFailedPrecondition, "prepare first"));
  EXPECT_THAT(Step(CaRotationStep::kRetire), StatusIs(absl::StatusCode::kFailedPrecondition));

  ASSERT_THAT(Step(CaRotationStep::kPrepare), IsOk());
  CaMaterial prepared = Load();
  EXPECT_EQ(prepared.roots.size(), 2u);  // trusted before it signs
  EXPECT_EQ(prepared.bundle_sequence, first.bundle_sequence + 1);
  EXPECT_EQ(prepared.cert.Sha256Fingerprint(), first.cert.Sha256Fingerprint());
  EXPECT_THAT(Step(CaRotationStep::kPrepare), StatusIs(absl::StatusCode::kFailedPrecondition));

  ASSERT_THAT(Step(CaRotationStep::kActivate), IsOk());
  CaMaterial active = Load();
  EXPECT_EQ(active.cert.Sha256Fingerprint(), prepared.next->Sha256Fingerprint());
  EXPECT_TRUE(active.cert.MatchesKey(active.key.get()));
  ASSERT_TRUE(active.previous.has_value());
  EXPECT_EQ(active.previous->Sha256Fingerprint(), first.cert.Sha256Fingerprint());
  EXPECT_EQ(active.roots.size(), 2u);
  EXPECT_EQ(active.bundle_sequence, prepared.bundle_sequence + 1);

  // The old root stays until every leaf it signed has expired.
  EXPECT_THAT(Step(CaRotationStep::kRetire),
              StatusIs(absl::StatusCode::kFailedPrecondition, "valid until"));
  clock_.Advance(kLeafLife + absl::Seconds(2));
  ASSERT_THAT(Step(CaRotationStep::kRetire), IsOk());
  CaMaterial retired = Load();
  EXPECT_EQ(retired.roots.size(), 1u);
  EXPECT_EQ(retired.bundle_sequence,  // the clock moved on further than the steps
            static_cast<uint64_t>(absl::ToUnixMicros(clock_.Now())));
  EXPECT_FALSE(retired.previous.has_value());
}

TEST_F(CaRotationTest, ARecreatedDirectoryStartsAboveEveryEarlierSequence) {
  const std::string ca_dir = dir_.path() + "/ca";
  ASSERT_THAT(LoadOrCreateCaInDir(ca_dir, "mesh.test", kCaTtl, clock_), IsOk());
  ASSERT_THAT(Step(CaRotationStep::kPrepare), IsOk());
  ASSERT_THAT(Step(CaRotationStep::kActivate), IsOk());
  const uint64_t before = Load().bundle_sequence;
  // After a compromise the operator wipes the directory and certmgr creates a new root a
  // moment later: sidecars apply only a higher sequence, so it must be one.
  std::filesystem::remove_all(ca_dir);
  clock_.Advance(absl::Seconds(1));
  absl::StatusOr<CaMaterial> recreated = LoadOrCreateCaInDir(ca_dir, "mesh.test", kCaTtl, clock_);
  ASSERT_THAT(recreated, IsOk());
  EXPECT_GT(recreated->bundle_sequence, before);
}

TEST_F(CaRotationTest, ForcedEarlyRetire) {
  ASSERT_THAT(LoadOrCreateCaInDir(dir_.path() + "/ca", "mesh.test", kCaTtl, clock_), IsOk());
  ASSERT_THAT(Step(CaRotationStep::kPrepare), IsOk());
  ASSERT_THAT(Step(CaRotationStep::kActivate), IsOk());
  EXPECT_THAT(Step(CaRotationStep::kRetire, /*force=*/true), IsOk());
}

TEST_F(CaRotationTest, AutomaticScheduleFollowsTheRootsLifetime) {
  CaMaterial ca = *LoadOrCreateCaInDir(dir_.path() + "/ca", "mesh.test", kCaTtl, clock_);
  const absl::Time start = ca.cert.not_before();
  const absl::Duration life = ca.cert.not_after() - start;
  EXPECT_EQ(DueRotationStep(ca, start + life * 0.5, 0.6, 0.8), std::nullopt);
  EXPECT_EQ(DueRotationStep(ca, start + life * 0.61, 0.6, 0.8), CaRotationStep::kPrepare);
  clock_.Set(start + life * 0.61);
  ASSERT_THAT(Step(CaRotationStep::kPrepare), IsOk());
  ca = Load();
  EXPECT_EQ(DueRotationStep(ca, start + life * 0.7, 0.6, 0.8), std::nullopt);
  EXPECT_EQ(DueRotationStep(ca, start + life * 0.81, 0.6, 0.8), CaRotationStep::kActivate);
  clock_.Set(start + life * 0.81);
  ASSERT_THAT(Step(CaRotationStep::kActivate), IsOk());
  ca = Load();
  EXPECT_EQ(DueRotationStep(ca, clock_.Now() + kLeafLife / 2, 0.6, 0.8), std::nullopt);
  EXPECT_EQ(DueRotationStep(ca, clock_.Now() + kLeafLife + absl::Seconds(2), 0.6, 0.8),
            CaRotationStep::kRetire);
}

// A CA directory that group or others may write lets them swap ca.pem/ca.key or plant files
// the CA then reads: certmgr refuses it, at creation, load and rotation, and says how to fix it.
TEST_F(CaRotationTest, RefusesACaDirWritableByGroupOrOthers) {
  const std::string ca_dir = dir_.path() + "/ca";
  ASSERT_THAT(LoadOrCreateCaInDir(ca_dir, "mesh.test", kCaTtl, clock_), IsOk());
  const struct {
    mode_t mode;
    const char* octal;
  } loose_modes[] = {{0770, "0770"}, {0702, "0702"}, {01777, "1777"}};
  for (const auto& [mode, octal] : loose_modes) {
    ASSERT_EQ(::chmod(ca_dir.c_str(), mode), 0);
    for (const absl::Status& s :
         {LoadOrCreateCaInDir(ca_dir, "mesh.test", kCaTtl, clock_).status(),
          LoadCaDir(ca_dir, "mesh.test", clock_).status(), Step(CaRotationStep::kPrepare)}) {
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition, ca_dir)) << octal;
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition, octal));
      EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition, "chmod go-w"));
    }
  }
  // A fresh directory made by someone else with a loose mode is refused before anything is
  // written into it.
  const std::string loose = dir_.path() + "/loose";
  ASSERT_EQ(::mkdir(loose.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(loose.c_str(), 0777), 0);
  EXPECT_THAT(LoadOrCreateCaInDir(loose, "mesh.test", kCaTtl, clock_),
              StatusIs(absl::StatusCode::kFailedPrecondition, "chmod go-w"));
  EXPECT_FALSE(base::FileExists(loose + "/ca.key"));
  // Group- and world-readable is not writable: accepted, as is 0700.
  for (const mode_t mode : {0755, 0700}) {
    ASSERT_EQ(::chmod(ca_dir.c_str(), mode), 0);
    EXPECT_THAT(LoadCaDir(ca_dir, "mesh.test", clock_), IsOk());
    EXPECT_THAT(Step(CaRotationStep::kPrepare), IsOk());
    ASSERT_THAT(Step(CaRotationStep::kActivate), IsOk());
    ASSERT_THAT(Step(CaRotationStep::kRetire, /*force=*/true), IsOk());
  }
}

}  // namespace
}  // namespace meshtls::certmgr

#include "common/pki/spiffe_id.h"

#include <gtest/gtest.h>

#include "tests/testing/status_matchers.h"

namespace meshtls::pki {
namespace {

using testing::IsOk;
using testing::StatusIs;

TEST(SpiffeIdTest, ParsesWorkloadId) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse("spiffe://example.org/ns/default/sa/frontend");
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->trust_domain(), "example.org");
  EXPECT_EQ(id->path(), "/ns/default/sa/frontend");
  EXPECT_EQ(id->str(), "spiffe://example.org/ns/default/sa/frontend");
}

TEST(SpiffeIdTest, ParsesTrustDomainId) {
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse("spiffe://mesh-1.example_2.org");
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->path(), "");
}

TEST(SpiffeIdTest, ForWorkloadBuildsTheMeshShape) {
  absl::StatusOr<SpiffeId> id = SpiffeId::ForWorkload("td", "ops", "api");
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->str(), "spiffe://td/ns/ops/sa/api");
  EXPECT_THAT(SpiffeId::ForWorkload("td", "a/b", "c"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

struct InvalidCase {
  const char* id;
  const char* why;  // a fragment of the expected message
};

class InvalidSpiffeIdTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidSpiffeIdTest, IsRejectedWithAReason) {
  EXPECT_THAT(SpiffeId::Parse(GetParam().id),
              StatusIs(absl::StatusCode::kInvalidArgument, GetParam().why));
}

INSTANTIATE_TEST_SUITE_P(
    EachInvalidForm, InvalidSpiffeIdTest,
    ::testing::Values(InvalidCase{"", "must start with spiffe://"},
                      InvalidCase{"http://example.org/a", "must start with spiffe://"},
                      InvalidCase{"SPIFFE://example.org/a", "lower-case"},
                      InvalidCase{"spiffe://", "trust domain is empty"},
                      InvalidCase{"spiffe:///ns/a", "trust domain is empty"},
                      InvalidCase{"spiffe://Example.org/a", "lower case"},
                      InvalidCase{"spiffe://example.org:8443/a", "port"},
                      InvalidCase{"spiffe://user@example.org/a", "user info"},
                      InvalidCase{"spiffe://exa$mple.org/a", "character"},
                      InvalidCase{"spiffe://example.org/", "trailing"},
                      InvalidCase{"spiffe://example.org/ns//sa", "empty segment"},
                      InvalidCase{"spiffe://example.org/ns/./sa", "'.'"},
                      InvalidCase{"spiffe://example.org/ns/../sa", "'..'"},
                      InvalidCase{"spiffe://example.org/ns/a b", "character"},
                      InvalidCase{"spiffe://example.org/ns/a%20b", "character"},
                      InvalidCase{"spiffe://example.org/a?x=1", "query"},
                      InvalidCase{"spiffe://example.org/a#frag", "fragment"}));

TEST(SpiffeIdTest, RejectsOverlongId) {
  std::string id = "spiffe://example.org/" + std::string(2100, 'a');
  EXPECT_THAT(SpiffeId::Parse(id), StatusIs(absl::StatusCode::kInvalidArgument, "2048"));
}

TEST(SpiffeIdMatcherTest, ExactAndPrefix) {
  auto exact = SpiffeIdMatcher::Parse("spiffe://td/ns/default/sa/frontend");
  auto prefix = SpiffeIdMatcher::Parse("spiffe://td/ns/ops/*");
  ASSERT_THAT(exact, IsOk());
  ASSERT_THAT(prefix, IsOk());
  auto id = [](const char* s) { return *SpiffeId::Parse(s); };
  EXPECT_TRUE(exact->Matches(id("spiffe://td/ns/default/sa/frontend")));
  EXPECT_FALSE(exact->Matches(id("spiffe://td/ns/default/sa/frontend2")));
  EXPECT_TRUE(prefix->Matches(id("spiffe://td/ns/ops/sa/deployer")));
  EXPECT_FALSE(prefix->Matches(id("spiffe://td/ns/ops")));
  EXPECT_FALSE(prefix->Matches(id("spiffe://td/ns/opsx/sa/a")));  // segment boundary
  EXPECT_FALSE(prefix->Matches(id("spiffe://other/ns/ops/sa/a")));
}

TEST(SpiffeIdMatcherTest, RejectsWildcardsElsewhere) {
  EXPECT_THAT(SpiffeIdMatcher::Parse("spiffe://td/ns/*/sa/a"),
              StatusIs(absl::StatusCode::kInvalidArgument, "last segment"));
  EXPECT_THAT(SpiffeIdMatcher::Parse("spiffe://td/ns/a*"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(SpiffeIdMatcher::Parse("spiffe://TD/*"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace meshtls::pki

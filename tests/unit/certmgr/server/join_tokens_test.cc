#include "certmgr/server/join_tokens.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "certmgr/base/file.h"
#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/mesh_authenticator.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

pki::SpiffeId Id(const char* s) { return *pki::SpiffeId::Parse(s); }

TEST(JoinTokensTest, CreateStoresOnlyAHashAndAuthenticates) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  absl::StatusOr<std::string> token =
      CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/b"), std::nullopt);
  ASSERT_THAT(token, IsOk());
  std::string file = *base::ReadFileToString(path);
  EXPECT_EQ(file.find(*token), std::string::npos) << "the token itself must not be stored";
  EXPECT_NE(file.find(TokenSha256Hex(*token)), std::string::npos);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  JoinTokenAuthenticator auth(path, clock);
  absl::StatusOr<pki::SpiffeId> id = auth.Authenticate({.bearer_token = *token, .peer_chain = {}});
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->str(), "spiffe://mesh.test/ns/a/sa/b");
  EXPECT_THAT(auth.Authenticate({.bearer_token = "mjt_wrong", .peer_chain = {}}),
              StatusIs(absl::StatusCode::kUnauthenticated, "unknown join token"));
  // No token, or another kind of token: not this authenticator's to judge.
  EXPECT_THAT(auth.Authenticate({}), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(auth.Authenticate({.bearer_token = "eyJ.a.b", .peer_chain = {}}),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(JoinTokensTest, ExpiresAndPicksUpNewTokensWithoutRestart) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  std::string first =
      *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/b"), clock.Now() + absl::Hours(1));
  JoinTokenAuthenticator auth(path, clock);
  EXPECT_THAT(auth.Authenticate({.bearer_token = first, .peer_chain = {}}), IsOk());
  std::string second = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/c"), std::nullopt);
  EXPECT_THAT(auth.Authenticate({.bearer_token = second, .peer_chain = {}}), IsOk());
  clock.Advance(absl::Hours(2));
  EXPECT_THAT(auth.Authenticate({.bearer_token = first, .peer_chain = {}}),
              StatusIs(absl::StatusCode::kUnauthenticated, "expired"));
}

TEST(JoinTokensTest, MalformedFileKeepsPreviousTokens) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  std::string token = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/b"), std::nullopt);
  JoinTokenAuthenticator auth(path, clock);
  ASSERT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}), IsOk());
  std::string text = *base::ReadFileToString(path);
  ASSERT_THAT(base::WriteFileAtomically(path, text + "garbage line\n", 0600), IsOk());
  EXPECT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}), IsOk());
}

TEST(MeshAuthenticatorTest, CertificateFirstThenTokenAndTrustDomainPolicy) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  testing::TestCa ca("mesh.test", clock.Now());
  TrustBundleSource bundle("mesh.test", {ca.root()});
  const std::string path = dir.File("tokens");
  std::string token =
      *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/token-id"), std::nullopt);
  std::string foreign = *CreateJoinToken(path, Id("spiffe://other.test/ns/a/sa/x"), std::nullopt);
  std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap;
  bootstrap.push_back(std::make_unique<JoinTokenAuthenticator>(path, clock));
  MeshAuthenticator auth("mesh.test", bundle, std::move(bootstrap), clock);

  testing::IssuedLeaf current =
      ca.Issue("spiffe://mesh.test/ns/a/sa/cert-id", absl::Hours(1), clock.Now());
  // A valid certificate wins over the token: renewal keeps the certificate's identity.
  EXPECT_EQ(auth.Authenticate({.bearer_token = token, .peer_chain = current.chain})->str(),
            "spiffe://mesh.test/ns/a/sa/cert-id");
  // Once it expired, the token still works (self-recovery after an outage).
  clock.Advance(absl::Hours(2));
  EXPECT_EQ(auth.Authenticate({.bearer_token = token, .peer_chain = current.chain})->str(),
            "spiffe://mesh.test/ns/a/sa/token-id");
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = current.chain}),
              StatusIs(absl::StatusCode::kUnauthenticated, "expired"));
  // A certificate from another CA is no credential.
  testing::TestCa other("mesh.test", clock.Now());
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt,
                                 .peer_chain = other.Issue("spiffe://mesh.test/ns/a/sa/x").chain}),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // A valid token for an identity outside the trust domain is denied.
  EXPECT_THAT(auth.Authenticate({.bearer_token = foreign, .peer_chain = {}}),
              StatusIs(absl::StatusCode::kPermissionDenied, "trust domain"));
}

}  // namespace
}  // namespace meshtls::certmgr

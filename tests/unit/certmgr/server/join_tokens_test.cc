#include "certmgr/server/join_tokens.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "certmgr/ca/trust_bundle_source.h"
#include "certmgr/server/kubernetes_authenticator.h"
#include "certmgr/server/mesh_authenticator.h"
#include "common/base/file.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/jwt.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

pki::SpiffeId Id(const char* s) { return *pki::SpiffeId::Parse(s); }

// An expiry beyond every test's fake clock.
const absl::Time kFarFuture = absl::Now() + absl::Hours(24 * 365);

TEST(JoinTokensTest, CreateStoresOnlyAHashAndAuthenticates) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  absl::StatusOr<std::string> token =
      CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/b"), kFarFuture);
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
  std::string second = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/c"), kFarFuture);
  EXPECT_THAT(auth.Authenticate({.bearer_token = second, .peer_chain = {}}), IsOk());
  clock.Advance(absl::Hours(2));
  EXPECT_THAT(auth.Authenticate({.bearer_token = first, .peer_chain = {}}),
              StatusIs(absl::StatusCode::kUnauthenticated, "expired"));
}

TEST(JoinTokensTest, AMalformedLineNeverKeepsADeletedTokenValid) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  std::string deleted = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/old"), kFarFuture);
  const std::string first_line = *base::ReadFileToString(path);
  std::string kept = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/kept"), kFarFuture);
  JoinTokenAuthenticator auth(path, clock);
  ASSERT_THAT(auth.Authenticate({.bearer_token = deleted, .peer_chain = {}}), IsOk());
  // The operator deletes the first token and, in the same edit, breaks another line.
  std::string text = *base::ReadFileToString(path);
  text.erase(0, first_line.size());
  ASSERT_THAT(base::WriteFileAtomically(path, text + "garbage line\n", 0600), IsOk());
  EXPECT_THAT(auth.Authenticate({.bearer_token = deleted, .peer_chain = {}}),
              StatusIs(absl::StatusCode::kUnauthenticated, "unknown join token"));
  // The well-formed lines still count; only the broken one is refused, and reported.
  EXPECT_THAT(auth.Authenticate({.bearer_token = kept, .peer_chain = {}}), IsOk());
  const JoinTokenFileState state = auth.Reload();
  EXPECT_TRUE(state.usable);
  EXPECT_EQ(state.rejected_lines, 1);
  EXPECT_EQ(state.tokens, 1u);
}

TEST(JoinTokensTest, AFileWritableByGroupOrOthersIsRefused) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  const std::string path = dir.File("tokens");
  std::string token = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/b"), kFarFuture);
  JoinTokenAuthenticator auth(path, clock);
  ASSERT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}), IsOk());
  for (mode_t mode : {0620, 0602, 0666}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    EXPECT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}),
                StatusIs(absl::StatusCode::kUnauthenticated, "writable by group or others"))
        << std::oct << mode;
    // The identities of the last good version still renew: a chmod mistake must not take
    // every join-token workload out of the mesh.
    EXPECT_THAT(auth.CheckRenewal(Id("spiffe://mesh.test/ns/a/sa/b")), IsOk());
    EXPECT_FALSE(auth.Reload().usable);
  }
  ASSERT_EQ(::chmod(path.c_str(), 0640), 0);
  EXPECT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}), IsOk());
  EXPECT_EQ(auth.Reload().usable, true);
}

TEST(MeshAuthenticatorTest, CertificateFirstThenTokenAndTrustDomainPolicy) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  testing::TestCa ca("mesh.test", clock.Now());
  TrustBundleSource bundle("mesh.test", {ca.root()});
  const std::string path = dir.File("tokens");
  std::string token = *CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/token-id"), kFarFuture);
  std::string foreign = *CreateJoinToken(path, Id("spiffe://other.test/ns/a/sa/x"), kFarFuture);
  // cert-id bootstrapped with a token of its own; renewal needs that token's line to remain.
  (void)*CreateJoinToken(path, Id("spiffe://mesh.test/ns/a/sa/cert-id"), kFarFuture);
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

TEST(MeshAuthenticatorTest, RenewalNeedsTheIdentityToStillHaveAJoinToken) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  testing::TestCa ca("mesh.test", clock.Now());
  TrustBundleSource bundle("mesh.test", {ca.root()});
  const std::string path = dir.File("tokens");
  (void)*CreateJoinToken(path, Id("spiffe://mesh.test/vm/db-1"), kFarFuture);
  const std::string db1_line = *base::ReadFileToString(path);
  (void)*CreateJoinToken(path, Id("spiffe://mesh.test/vm/db-2"), kFarFuture);
  std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap;
  bootstrap.push_back(std::make_unique<JoinTokenAuthenticator>(path, clock));
  MeshAuthenticator auth("mesh.test", bundle, std::move(bootstrap), clock);
  const testing::IssuedLeaf db1 =
      ca.Issue("spiffe://mesh.test/vm/db-1", absl::Hours(1), clock.Now());
  const testing::IssuedLeaf db2 =
      ca.Issue("spiffe://mesh.test/vm/db-2", absl::Hours(1), clock.Now());
  ASSERT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = db1.chain}), IsOk());
  // The operator deletes db-1's token: db-1 may no longer renew; db-2 still may.
  std::string text = *base::ReadFileToString(path);
  ASSERT_THAT(base::WriteFileAtomically(path, text.substr(db1_line.size()), 0600), IsOk());
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = db1.chain}),
              StatusIs(absl::StatusCode::kPermissionDenied, "spiffe://mesh.test/vm/db-1"));
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = db2.chain}), IsOk());
}

TEST(MeshAuthenticatorTest, RenewalFollowsTheNamespaceAllowList) {
  testing::TempDir dir;
  testing::FakeClock clock(absl::Now());
  testing::TestCa ca("mesh.test", clock.Now());
  TrustBundleSource bundle("mesh.test", {ca.root()});
  testing::JwtSigner signer = testing::NewEs256Signer("k");
  std::vector<std::unique_ptr<CallerAuthenticator>> bootstrap;
  bootstrap.push_back(std::make_unique<KubernetesAuthenticator>(
      KubernetesAuthOptions{.trust_domain = "mesh.test",
                            .issuer = "https://issuer.test",
                            .audience = "meshtls",
                            .jwks_file = dir.Write("jwks.json", testing::Jwks({signer})),
                            .allowed_namespaces = {"default"},
                            .clock_skew = absl::Seconds(30)},
      clock));
  MeshAuthenticator auth("mesh.test", bundle, std::move(bootstrap), clock);
  // A certificate issued while `shop` was allowed, presented after it left the list.
  const testing::IssuedLeaf shop =
      ca.Issue("spiffe://mesh.test/ns/shop/sa/cart", absl::Hours(1), clock.Now());
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = shop.chain}),
              StatusIs(absl::StatusCode::kPermissionDenied, "namespace shop"));
  const testing::IssuedLeaf web =
      ca.Issue("spiffe://mesh.test/ns/default/sa/web", absl::Hours(1), clock.Now());
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = web.chain}), IsOk());
  // An identity no authenticator could issue today (not of the ns/sa shape) is not renewed.
  const testing::IssuedLeaf odd = ca.Issue("spiffe://mesh.test/vm/x", absl::Hours(1), clock.Now());
  EXPECT_THAT(auth.Authenticate({.bearer_token = std::nullopt, .peer_chain = odd.chain}),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

}  // namespace
}  // namespace meshtls::certmgr

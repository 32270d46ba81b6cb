#include "certmgr/server/kubernetes_authenticator.h"

#include <gtest/gtest.h>
#include <openssl/rsa.h>

#include "absl/strings/str_replace.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/harness.h"
#include "tests/testing/jwt.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

constexpr char kIssuer[] = "https://kubernetes.default.svc.cluster.local";

class KubernetesAuthenticatorTest : public ::testing::Test {
 protected:
  KubernetesAuthenticatorTest() { dir_.Write("jwks.json", testing::Jwks({rsa_, ec_})); }
  KubernetesAuthOptions Options() {
    return {.trust_domain = "mesh.test",
            .issuer = kIssuer,
            .audience = "meshtls",
            .jwks_file = dir_.File("jwks.json"),
            .allowed_namespaces = {},
            .clock_skew = absl::Seconds(30)};
  }
  std::string Claims(absl::Duration exp_in = absl::Hours(1), const std::string& aud = "meshtls",
                     const std::string& iss = kIssuer) {
    return testing::ServiceAccountClaims(iss, aud, "shop", "cart", clock_.Now() + exp_in,
                                         clock_.Now() - absl::Minutes(1));
  }
  absl::StatusOr<pki::SpiffeId> Auth(const std::string& token,
                                     std::optional<KubernetesAuthOptions> options = std::nullopt) {
    KubernetesAuthenticator auth(options.value_or(Options()), clock_);
    return auth.Authenticate({.bearer_token = token, .peer_chain = {}});
  }

  testing::FakeClock clock_{absl::FromUnixSeconds(1'800'000'000)};
  testing::TempDir dir_;
  testing::JwtSigner rsa_ = testing::NewRs256Signer("rsa-1");
  testing::JwtSigner ec_ = testing::NewEs256Signer("ec-1");
};

TEST_F(KubernetesAuthenticatorTest, GoodRs256AndEs256TokensMapToTheServiceAccount) {
  for (const testing::JwtSigner* signer : {&rsa_, &ec_}) {
    absl::StatusOr<pki::SpiffeId> id = Auth(testing::SignJwt(*signer, Claims()));
    ASSERT_THAT(id, IsOk()) << signer->alg;
    EXPECT_EQ(id->str(), "spiffe://mesh.test/ns/shop/sa/cart");
  }
}

TEST_F(KubernetesAuthenticatorTest, EachBadTokenKindIsRefused) {
  const auto unauthenticated = [](const char* why) {
    return StatusIs(absl::StatusCode::kUnauthenticated, why);
  };
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims(-absl::Minutes(5)))), unauthenticated("expired"));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims(absl::Hours(1), "someone-else"))),
              unauthenticated("audience"));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims(absl::Hours(1), "meshtls", "https://evil"))),
              unauthenticated("issuer"));
  testing::JwtSigner stranger = testing::NewRs256Signer("rsa-1");  // same kid, other key
  EXPECT_THAT(Auth(testing::SignJwt(stranger, Claims())), unauthenticated("does not verify"));
  EXPECT_THAT(Auth(testing::SignJwt(testing::NewEs256Signer("unknown"), Claims())),
              unauthenticated("no key"));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims(), "none")), unauthenticated("algorithm"));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims(), "HS256")), unauthenticated("algorithm"));
  EXPECT_THAT(Auth("a.b.c"), unauthenticated("malformed"));
  EXPECT_THAT(Auth("e30.e30.AAAA"), unauthenticated("algorithm"));  // {} header
  std::string token = testing::SignJwt(rsa_, Claims());
  token[token.rfind('.') - 3] ^= 1;  // tamper with the claims
  EXPECT_THAT(Auth(token), StatusIs(absl::StatusCode::kUnauthenticated));
  const std::string future =
      testing::ServiceAccountClaims(kIssuer, "meshtls", "shop", "cart",
                                    clock_.Now() + absl::Hours(2), clock_.Now() + absl::Hours(1));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, future)), unauthenticated("nbf"));
  const std::string mismatched = absl::StrReplaceAll(
      Claims(), {{"system:serviceaccount:shop:cart", "system:serviceaccount:kube-system:admin"}});
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, mismatched)),
              unauthenticated("different service accounts"));
  const std::string no_identity =
      absl::StrCat(R"({"aud":["meshtls"],"iss":")", kIssuer, R"(","exp":)",
                   absl::ToUnixSeconds(clock_.Now() + absl::Hours(1)), R"(,"iat":)",
                   absl::ToUnixSeconds(clock_.Now()), "}");
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, no_identity)), unauthenticated("namespace"));
}

TEST_F(KubernetesAuthenticatorTest, NotAJwtIsLeftToOtherAuthenticators) {
  EXPECT_THAT(Auth("mjt_abc"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(KubernetesAuthenticatorTest, NamespacePolicy) {
  KubernetesAuthOptions options = Options();
  options.allowed_namespaces = {"payments"};
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims()), options),
              StatusIs(absl::StatusCode::kPermissionDenied, "namespace shop"));
  options.allowed_namespaces = {"payments", "shop"};
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims()), options), IsOk());
}

TEST_F(KubernetesAuthenticatorTest, LongLivedUnboundOrUndatedTokensAreRefused) {
  // A token valid for ten years: a stolen one would mint identities for a decade.
  const std::string ten_years = testing::ServiceAccountClaims(
      kIssuer, "meshtls", "shop", "cart", clock_.Now() + absl::Hours(24 * 3650), clock_.Now());
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, ten_years)),
              StatusIs(absl::StatusCode::kUnauthenticated, "lifetime"));
  // Without iat the lifetime cannot be checked.
  const std::string no_iat = absl::StrReplaceAll(Claims(), {{"\"iat\":", "\"issued\":"}});
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, no_iat)),
              StatusIs(absl::StatusCode::kUnauthenticated, "iat"));
  // A token bound to no pod (a legacy or TokenRequest token for the ServiceAccount alone).
  const std::string unbound =
      absl::StrReplaceAll(Claims(), {{R"("pod":{"name":"p-1","uid":"u-1"},)", ""}});
  ASSERT_NE(unbound, Claims());
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, unbound)),
              StatusIs(absl::StatusCode::kUnauthenticated, "pod"));
  // Nor can the cap be dodged by dating the token in the future.
  const std::string future_dated = testing::ServiceAccountClaims(
      kIssuer, "meshtls", "shop", "cart", clock_.Now() + absl::Hours(24 * 3650 + 1),
      clock_.Now() + absl::Hours(24 * 3650));
  EXPECT_THAT(
      Auth(testing::SignJwt(rsa_, absl::StrReplaceAll(future_dated, {{"\"nbf\":", "\"x_nbf\":"}}))),
      StatusIs(absl::StatusCode::kUnauthenticated, "future"));
  // A token of exactly the default cap (24 h) still passes.
  const std::string day =
      testing::ServiceAccountClaims(kIssuer, "meshtls", "shop", "cart",
                                    clock_.Now() + absl::Hours(23), clock_.Now() - absl::Hours(1));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, day)), IsOk());
}

TEST_F(KubernetesAuthenticatorTest, RsaKeysShorterThan2048BitsAreNotTrusted) {
  testing::JwtSigner weak{"rsa-weak", "RS256",
                          std::shared_ptr<EVP_PKEY>(EVP_RSA_gen(1024), EVP_PKEY_free)};
  dir_.Write("jwks.json", testing::Jwks({weak, rsa_}));
  EXPECT_THAT(Auth(testing::SignJwt(weak, Claims())),
              StatusIs(absl::StatusCode::kUnauthenticated, "no key"));
  EXPECT_THAT(Auth(testing::SignJwt(rsa_, Claims())), IsOk());
}

TEST_F(KubernetesAuthenticatorTest, PicksUpRotatedSigningKeys) {
  KubernetesAuthenticator auth(Options(), clock_);
  testing::JwtSigner next = testing::NewEs256Signer("ec-2");
  const std::string token = testing::SignJwt(next, Claims());
  EXPECT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}),
              StatusIs(absl::StatusCode::kUnauthenticated));
  dir_.Write("jwks.json", testing::Jwks({rsa_, ec_, next}));
  EXPECT_THAT(auth.Authenticate({.bearer_token = token, .peer_chain = {}}), IsOk());
}

}  // namespace
}  // namespace meshtls::certmgr

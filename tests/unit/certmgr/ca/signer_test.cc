#include "certmgr/ca/signer.h"

#include <gtest/gtest.h>
#include <openssl/x509v3.h>

#include "common/pki/chain_verifier.h"
#include "common/pki/csr.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::certmgr {
namespace {

using testing::IsOk;
using testing::StatusIs;

class SignerTest : public ::testing::Test {
 protected:
  SignerTest()
      : clock_(absl::FromUnixSeconds(1'800'000'000)),
        ca_("mesh.test", clock_.Now()),
        signer_(CaMaterial{.cert = ca_.root(),
                           .key = ca_.root_key(),
                           .intermediates = {},
                           .roots = {ca_.root()}},
                IssuancePolicy{}, clock_) {}

  pki::VerifiedCsr NewCsr() {
    pki::PrivateKey key = *pki::PrivateKey::GenerateEcP256();
    return *pki::ParseAndVerifyCsr(*pki::CreateCsrDer(key));
  }

  testing::FakeClock clock_;
  testing::TestCa ca_;
  Signer signer_;
  pki::SpiffeId id_ = *pki::SpiffeId::Parse("spiffe://mesh.test/ns/default/sa/frontend");
};

TEST_F(SignerTest, IssuesAnX509SvidWithTheMeshProfile) {
  absl::StatusOr<IssuedCertificate> issued = signer_.SignWorkload(NewCsr(), id_, std::nullopt);
  ASSERT_THAT(issued, IsOk());
  ASSERT_EQ(issued->chain.size(), 1u);
  const pki::Certificate& leaf = issued->chain[0];
  EXPECT_EQ(leaf.UriSans(), std::vector<std::string>{id_.str()});
  EXPECT_FALSE(leaf.IsCa());
  EXPECT_EQ(X509_get_key_usage(leaf.get()) & (KU_DIGITAL_SIGNATURE | KU_KEY_CERT_SIGN),
            static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(leaf.get()) & (XKU_SSL_SERVER | XKU_SSL_CLIENT),
            static_cast<uint32_t>(XKU_SSL_SERVER | XKU_SSL_CLIENT));
  EXPECT_EQ(leaf.not_before(), clock_.Now() - absl::Minutes(2));  // backdated
  EXPECT_EQ(leaf.not_after(), clock_.Now() + absl::Hours(24));    // default TTL
  // And it passes our own strict verification for both roles.
  auto verifier = *pki::ChainVerifier::Create("mesh.test", {ca_.root()});
  EXPECT_THAT(verifier->VerifyChain(issued->chain, pki::PeerRole::kClient, clock_.Now()), IsOk());
  EXPECT_THAT(verifier->VerifyChain(issued->chain, pki::PeerRole::kServer, clock_.Now()), IsOk());
}

TEST_F(SignerTest, CapsAndFloorsTheRequestedTtl) {
  auto ttl_of = [&](absl::Duration requested) {
    IssuedCertificate c = *signer_.SignWorkload(NewCsr(), id_, requested);
    return c.chain[0].not_after() - clock_.Now();
  };
  EXPECT_EQ(ttl_of(absl::Hours(1)), absl::Hours(1));
  EXPECT_EQ(ttl_of(absl::Hours(24 * 365)), absl::Hours(24));    // max_ttl
  EXPECT_EQ(ttl_of(absl::Milliseconds(10)), absl::Seconds(5));  // min_ttl
}

TEST_F(SignerTest, NeverIssuesPastTheCaNotAfter) {
  clock_.Set(ca_.root().not_after() - absl::Hours(1));
  IssuedCertificate c = *signer_.SignWorkload(NewCsr(), id_, std::nullopt);
  EXPECT_EQ(c.chain[0].not_after(), ca_.root().not_after());
  clock_.Set(ca_.root().not_after() + absl::Seconds(1));
  EXPECT_THAT(signer_.SignWorkload(NewCsr(), id_, std::nullopt),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(SignerTest, UniqueSerials) {
  std::set<std::string> serials;
  for (int i = 0; i < 20; ++i) {
    serials.insert(signer_.SignWorkload(NewCsr(), id_, std::nullopt)->chain[0].SerialHex());
  }
  EXPECT_EQ(serials.size(), 20u);
}

TEST(IssuancePolicyTest, Validates) {
  IssuancePolicy p;
  EXPECT_THAT(p.Validate(), IsOk());
  p.default_ttl = absl::Hours(48);
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "default_ttl"));
}

}  // namespace
}  // namespace meshtls::certmgr

#include "certmgr/pki/chain_verifier.h"

#include <gtest/gtest.h>
#include <openssl/x509_vfy.h>

#include <algorithm>

#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls::pki {
namespace {

using testing::IsOk;
using testing::StatusIs;
using testing::TestCa;

constexpr char kId[] = "spiffe://mesh.test/ns/default/sa/frontend";

class ChainVerifierTest : public ::testing::Test {
 protected:
  void SetUp() override { verifier_ = *ChainVerifier::Create("mesh.test", {ca_.root()}); }
  absl::StatusOr<SpiffeId> Verify(const testing::IssuedLeaf& leaf,
                                  PeerRole role = PeerRole::kClient) {
    return verifier_->VerifyChain(leaf.chain, role, now_, &x509_error_);
  }

  absl::Time now_ = absl::Now();
  TestCa ca_{"mesh.test", now_};
  std::shared_ptr<const ChainVerifier> verifier_;
  int x509_error_ = -1;
};

TEST_F(ChainVerifierTest, AcceptsAnSvidForBothRoles) {
  testing::IssuedLeaf leaf = ca_.Issue(kId, absl::Hours(1), now_);
  absl::StatusOr<SpiffeId> id = Verify(leaf, PeerRole::kClient);
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->str(), kId);
  EXPECT_EQ(x509_error_, X509_V_OK);
  EXPECT_THAT(Verify(leaf, PeerRole::kServer), IsOk());
}

// The window a verification reports is where every certificate of the built path (leaf and
// root here) is valid: the later of their notBefore, the earlier of their notAfter.
TEST_F(ChainVerifierTest, ReportsTheValidityWindowOfThePathItBuilt) {
  testing::IssuedLeaf leaf = ca_.Issue(kId, absl::Hours(1), now_);
  ValidityWindow window;
  ASSERT_THAT(
      verifier_->Verify(leaf.chain[0].get(), nullptr, PeerRole::kClient, now_, nullptr, &window),
      IsOk());
  EXPECT_EQ(window.not_before, std::max(leaf.chain[0].not_before(), ca_.root().not_before()));
  EXPECT_EQ(window.not_after, std::min(leaf.chain[0].not_after(), ca_.root().not_after()));
  EXPECT_LT(window.not_after, ca_.root().not_after()) << "the leaf expires first here";
}

TEST_F(ChainVerifierTest, RejectsCaTrueLeaf) {
  // OpenSSL 3.0 alone accepts this chain; the X.509-SVID rule must not.
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  p.is_ca = true;
  p.common_name = "leaf";  // so that OpenSSL's strict empty-subject rule is not what fails
  EXPECT_THAT(Verify(ca_.IssueWith(p)),
              StatusIs(absl::StatusCode::kUnauthenticated, "must be CA:FALSE"));
}

TEST_F(ChainVerifierTest, RejectsKeyCertSignOnLeaf) {
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  p.key_cert_sign = true;
  EXPECT_THAT(Verify(ca_.IssueWith(p)),
              StatusIs(absl::StatusCode::kUnauthenticated, "keyCertSign"));
}

TEST_F(ChainVerifierTest, RejectsTwoUriSans) {
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  p.uri_sans.push_back("spiffe://mesh.test/ns/default/sa/admin");
  EXPECT_THAT(Verify(ca_.IssueWith(p)), StatusIs(absl::StatusCode::kUnauthenticated, "2 URI SANs"));
}

TEST_F(ChainVerifierTest, RejectsNoUriSan) {
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  p.uri_sans.clear();
  p.dns_sans = {"frontend.default.svc"};
  EXPECT_THAT(Verify(ca_.IssueWith(p)), StatusIs(absl::StatusCode::kUnauthenticated, "0 URI SANs"));
}

TEST_F(ChainVerifierTest, RejectsForeignTrustDomainEvenWhenSignedByOurRoot) {
  testing::IssuedLeaf leaf =
      ca_.Issue("spiffe://other.test/ns/default/sa/frontend", absl::Hours(1), now_);
  EXPECT_THAT(Verify(leaf), StatusIs(absl::StatusCode::kUnauthenticated, "trust domain"));
}

TEST_F(ChainVerifierTest, RejectsMalformedSpiffeUri) {
  CertificateProfile p = TestCa::LeafProfile("spiffe://mesh.test/ns//sa", now_ - absl::Minutes(1),
                                             now_ + absl::Hours(1));
  EXPECT_THAT(Verify(ca_.IssueWith(p)),
              StatusIs(absl::StatusCode::kUnauthenticated, "empty segment"));
}

TEST_F(ChainVerifierTest, RejectsMissingRoleEku) {
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  p.client_auth = false;
  testing::IssuedLeaf server_only = ca_.IssueWith(p);
  EXPECT_THAT(Verify(server_only, PeerRole::kClient), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Verify(server_only, PeerRole::kServer), IsOk());
  p.client_auth = true;
  p.server_auth = false;
  EXPECT_THAT(Verify(ca_.IssueWith(p), PeerRole::kServer),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(ChainVerifierTest, RejectsExpiredAndNotYetValid) {
  EXPECT_THAT(
      Verify(ca_.IssueWith(TestCa::LeafProfile(kId, now_ - absl::Hours(2), now_ - absl::Hours(1)))),
      StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(x509_error_, X509_V_ERR_CERT_HAS_EXPIRED);
  EXPECT_THAT(
      Verify(ca_.IssueWith(TestCa::LeafProfile(kId, now_ + absl::Hours(1), now_ + absl::Hours(2)))),
      StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(x509_error_, X509_V_ERR_CERT_NOT_YET_VALID);
}

TEST_F(ChainVerifierTest, RejectsAnotherCa) {
  TestCa other("mesh.test", now_);
  EXPECT_THAT(Verify(other.Issue(kId, absl::Hours(1), now_)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(x509_error_, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

TEST_F(ChainVerifierTest, TrustsEveryRootOfTheBundle) {
  TestCa next("mesh.test", now_);
  auto both = *ChainVerifier::Create("mesh.test", {ca_.root(), next.root()});
  EXPECT_THAT(
      both->VerifyChain(ca_.Issue(kId, absl::Hours(1), now_).chain, PeerRole::kClient, now_),
      IsOk());
  EXPECT_THAT(
      both->VerifyChain(next.Issue(kId, absl::Hours(1), now_).chain, PeerRole::kClient, now_),
      IsOk());
}

TEST(ChainVerifierCreateTest, RefusesBadBundles) {
  TestCa ca("mesh.test");
  EXPECT_THAT(ChainVerifier::Create("mesh.test", {}), StatusIs(absl::StatusCode::kInvalidArgument));
  testing::IssuedLeaf leaf = ca.Issue(kId);
  EXPECT_THAT(ChainVerifier::Create("mesh.test", {leaf.chain[0]}),
              StatusIs(absl::StatusCode::kInvalidArgument, "not a CA"));
  EXPECT_THAT(ChainVerifier::Create("Bad_TD!", {ca.root()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace meshtls::pki

#include "common/pki/chain_verifier.h"

#include <gtest/gtest.h>
#include <openssl/x509_vfy.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
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

// RFC 5280 4.1.2.5: the validity period includes its notAfter second (OpenSSL alone calls the
// certificate expired then).
TEST_F(ChainVerifierTest, NotAfterIsInclusive) {
  testing::IssuedLeaf leaf = ca_.Issue(kId, absl::Hours(1), now_);
  const absl::Time not_after = leaf.chain[0].not_after();
  EXPECT_THAT(verifier_->VerifyChain(leaf.chain, PeerRole::kClient, not_after), IsOk());
  EXPECT_THAT(
      verifier_->VerifyChain(leaf.chain, PeerRole::kClient, not_after + absl::Seconds(1),
                             &x509_error_),
      StatusIs(absl::StatusCode::kFailedPrecondition, "at depth 0: certificate has expired"));
  EXPECT_EQ(x509_error_, X509_V_ERR_CERT_HAS_EXPIRED);
  const absl::Time not_before = leaf.chain[0].not_before();
  EXPECT_THAT(verifier_->VerifyChain(leaf.chain, PeerRole::kClient, not_before), IsOk());
  EXPECT_THAT(verifier_->VerifyChain(leaf.chain, PeerRole::kClient, not_before - absl::Seconds(1)),
              StatusIs(absl::StatusCode::kFailedPrecondition, "not yet valid"));
}

// CrossSigned is one intermediate CA (one subject, one key) certified by two roots.
struct CrossSigned {
  PrivateKey key;
  Certificate by_trusted;
  Certificate by_other;
};

CrossSigned CrossSign(const TestCa& trusted, const TestCa& other, absl::Time now) {
  PrivateKey key = *PrivateKey::GenerateEcP256();
  CertificateProfile p;
  p.common_name = "cross-signed intermediate";
  p.is_ca = true;
  p.key_cert_sign = true;
  p.not_before = now - absl::Hours(1);
  p.not_after = now + absl::Hours(2);
  Certificate by_trusted =
      *BuildCertificate(p, key.get(), &trusted.root(), trusted.root_key().get());
  Certificate by_other = *BuildCertificate(p, key.get(), &other.root(), other.root_key().get());
  return CrossSigned{.key = key, .by_trusted = by_trusted, .by_other = by_other};
}

// The peer sends first the copy of its intermediate that leads nowhere we trust: OpenSSL would
// build that one path and fail; the verifier tries the other copy too.
TEST_F(ChainVerifierTest, FindsTheValidPathThroughACrossSignedIntermediate) {
  TestCa other("mesh.test", now_);
  CrossSigned ica = CrossSign(ca_, other, now_);
  CertificateProfile p = TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  PrivateKey leaf_key = *PrivateKey::GenerateEcP256();
  Certificate leaf = *BuildCertificate(p, leaf_key.get(), &ica.by_trusted, ica.key.get());
  EXPECT_THAT(verifier_->VerifyChain({leaf, ica.by_other, ica.by_trusted}, PeerRole::kClient, now_),
              IsOk());
  EXPECT_THAT(verifier_->VerifyChain({leaf, ica.by_other}, PeerRole::kClient, now_, &x509_error_),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(x509_error_, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

// A hostile peer sends many copies of intermediates that certify each other: the search is
// bounded (and refuses), it does not loop or explode.
TEST_F(ChainVerifierTest, CrossSignedCycleIsRefusedWithBoundedWork) {
  std::vector<PrivateKey> keys;
  std::vector<Certificate> cas;
  for (int i = 0; i < 6; ++i) {
    keys.push_back(*PrivateKey::GenerateEcP256());
  }
  // Every CA certifies every other one (6 x 5 certificates), none chains to our root.
  CertificateProfile p;
  p.is_ca = true;
  p.key_cert_sign = true;
  p.not_before = now_ - absl::Hours(1);
  p.not_after = now_ + absl::Hours(2);
  std::vector<Certificate> self;
  for (int i = 0; i < 6; ++i) {
    p.common_name = absl::StrCat("ca-", i);
    self.push_back(*BuildCertificate(p, keys[i].get(), nullptr, keys[i].get()));
  }
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 6; ++j) {
      if (i != j) {
        p.common_name = absl::StrCat("ca-", i);
        cas.push_back(*BuildCertificate(p, keys[i].get(), &self[j], keys[j].get()));
      }
    }
  }
  CertificateProfile leaf_profile =
      TestCa::LeafProfile(kId, now_ - absl::Minutes(1), now_ + absl::Hours(1));
  PrivateKey leaf_key = *PrivateKey::GenerateEcP256();
  std::vector<Certificate> chain = {
      *BuildCertificate(leaf_profile, leaf_key.get(), &self[0], keys[0].get())};
  chain.insert(chain.end(), cas.begin(), cas.end());
  const absl::Time start = absl::Now();
  EXPECT_THAT(verifier_->VerifyChain(chain, PeerRole::kClient, now_, &x509_error_),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(x509_error_, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
  // Not a timing assertion: a generous ceiling that only an unbounded search would break.
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
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

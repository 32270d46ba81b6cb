#include "certmgr/pki/csr.h"

#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>

#include "certmgr/pki/openssl_ptr.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::pki {
namespace {

using testing::IsOk;
using testing::StatusIs;

std::string CsrFor(EVP_PKEY* key, const EVP_MD* md) {
  X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_version(req.get(), 0);
  X509_REQ_set_pubkey(req.get(), key);
  X509_REQ_sign(req.get(), key, md);
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

TEST(CsrTest, CreatedCsrVerifiesAndCarriesTheKey) {
  absl::StatusOr<PrivateKey> key = PrivateKey::GenerateEcP256();
  ASSERT_THAT(key, IsOk());
  absl::StatusOr<std::string> der = CreateCsrDer(*key);
  ASSERT_THAT(der, IsOk());
  absl::StatusOr<VerifiedCsr> csr = ParseAndVerifyCsr(*der);
  ASSERT_THAT(csr, IsOk());
  EXPECT_EQ(EVP_PKEY_eq(csr->public_key.get(), key->get()), 1);
}

TEST(CsrTest, RejectsATamperedSignature) {
  PrivateKey key = *PrivateKey::GenerateEcP256();
  std::string der = *CreateCsrDer(key);
  der[der.size() - 5] ^= 0x01;  // inside the signature value
  EXPECT_THAT(ParseAndVerifyCsr(der), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CsrTest, RejectsAKeySwappedIn) {
  // A CSR whose public key is replaced no longer matches its signature.
  PrivateKey a = *PrivateKey::GenerateEcP256();
  PrivateKey b = *PrivateKey::GenerateEcP256();
  X509ReqPtr req(X509_REQ_new());
  X509_REQ_set_pubkey(req.get(), a.get());
  X509_REQ_sign(req.get(), b.get(), EVP_sha256());
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  EXPECT_THAT(ParseAndVerifyCsr(bytes),
              StatusIs(absl::StatusCode::kInvalidArgument, "signature does not verify"));
}

TEST(CsrTest, RejectsWrongCurve) {
  EvpPkeyPtr p384(EVP_EC_gen("P-384"));
  EXPECT_THAT(ParseAndVerifyCsr(CsrFor(p384.get(), EVP_sha384())),
              StatusIs(absl::StatusCode::kInvalidArgument, "P-256"));
}

TEST(CsrTest, RejectsSmallRsaAndAcceptsRsa2048) {
  EvpPkeyPtr rsa1024(EVP_RSA_gen(1024));
  EXPECT_THAT(ParseAndVerifyCsr(CsrFor(rsa1024.get(), EVP_sha256())),
              StatusIs(absl::StatusCode::kInvalidArgument, "1024 bits"));
  EvpPkeyPtr rsa2048(EVP_RSA_gen(2048));
  EXPECT_THAT(ParseAndVerifyCsr(CsrFor(rsa2048.get(), EVP_sha256())), IsOk());
}

TEST(CsrTest, RejectsSha1Signature) {
  PrivateKey key = *PrivateKey::GenerateEcP256();
  EXPECT_THAT(ParseAndVerifyCsr(CsrFor(key.get(), EVP_sha1())),
              StatusIs(absl::StatusCode::kInvalidArgument, "SHA1"));
}

TEST(CsrTest, RejectsGarbageEmptyOversizedAndTrailingBytes) {
  EXPECT_THAT(ParseAndVerifyCsr(""), StatusIs(absl::StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(ParseAndVerifyCsr("not a csr"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseAndVerifyCsr(std::string(20000, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument, "limit"));
  std::string der = *CreateCsrDer(*PrivateKey::GenerateEcP256());
  EXPECT_THAT(ParseAndVerifyCsr(der + "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, "trailing"));
}

}  // namespace
}  // namespace meshtls::pki

#include "common/pki/csr.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rsa.h>

#include "common/pki/openssl_ptr.h"
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

// P256WithEncoding makes a P-256 key whose public key is written with its curve named by OID
// ("named_curve") or spelled out as explicit parameters ("explicit").
EvpPkeyPtr P256WithEncoding(const char* encoding) {
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, const_cast<char*>("P-256"), 0),
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, const_cast<char*>(encoding), 0),
      OSSL_PARAM_construct_end()};
  std::unique_ptr<EVP_PKEY_CTX, OpenSslFree<EVP_PKEY_CTX_free>> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* key = nullptr;
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_params(ctx.get(), params) != 1 || EVP_PKEY_generate(ctx.get(), &key) != 1) {
    return nullptr;
  }
  return EvpPkeyPtr(key);
}

// RFC 5480 section 2.1.1: specifiedCurve and implicitCurve MUST NOT be used in PKIX. Explicit
// parameters equal to P-256 are still refused: the policy names curves, it does not compare them.
TEST(CsrTest, RejectsExplicitCurveParametersAndAcceptsTheNamedCurve) {
  EvpPkeyPtr named = P256WithEncoding(OSSL_PKEY_EC_ENCODING_GROUP);
  EvpPkeyPtr explicit_params = P256WithEncoding(OSSL_PKEY_EC_ENCODING_EXPLICIT);
  ASSERT_NE(named, nullptr);
  ASSERT_NE(explicit_params, nullptr);
  const std::string explicit_csr = CsrFor(explicit_params.get(), EVP_sha256());
  // The CSR really carries the parameters (an OID would make it much shorter).
  ASSERT_GT(explicit_csr.size(), CsrFor(named.get(), EVP_sha256()).size() + 100);
  EXPECT_THAT(ParseAndVerifyCsr(CsrFor(named.get(), EVP_sha256())), IsOk());
  EXPECT_THAT(ParseAndVerifyCsr(explicit_csr),
              StatusIs(absl::StatusCode::kInvalidArgument, "explicit curve parameters"));
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

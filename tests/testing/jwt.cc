#include "tests/testing/jwt.h"

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/base/check.h"

namespace meshtls::testing {
namespace {

std::string B64(absl::string_view s) { return absl::WebSafeBase64Escape(s); }

std::string BnParam(EVP_PKEY* key, const char* name, int pad_to = 0) {
  BIGNUM* bn = nullptr;
  MESHTLS_CHECK(EVP_PKEY_get_bn_param(key, name, &bn) == 1, name);
  std::string out(static_cast<size_t>(std::max(BN_num_bytes(bn), pad_to)), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

}  // namespace

JwtSigner NewRs256Signer(const std::string& kid) {
  return {kid, "RS256", std::shared_ptr<EVP_PKEY>(EVP_RSA_gen(2048), EVP_PKEY_free)};
}

JwtSigner NewEs256Signer(const std::string& kid) {
  return {kid, "ES256", std::shared_ptr<EVP_PKEY>(EVP_EC_gen("P-256"), EVP_PKEY_free)};
}

std::string Jwks(const std::vector<JwtSigner>& signers) {
  std::string keys;
  for (const JwtSigner& s : signers) {
    if (!keys.empty()) {
      keys += ",";
    }
    if (s.alg == "RS256") {
      absl::StrAppend(&keys, R"({"kty":"RSA","use":"sig","alg":"RS256","kid":")", s.kid,
                      R"(","n":")", B64(BnParam(s.key.get(), OSSL_PKEY_PARAM_RSA_N)), R"(","e":")",
                      B64(BnParam(s.key.get(), OSSL_PKEY_PARAM_RSA_E)), R"("})");
    } else {
      absl::StrAppend(&keys, R"({"kty":"EC","crv":"P-256","use":"sig","alg":"ES256","kid":")",
                      s.kid, R"(","x":")", B64(BnParam(s.key.get(), OSSL_PKEY_PARAM_EC_PUB_X, 32)),
                      R"(","y":")", B64(BnParam(s.key.get(), OSSL_PKEY_PARAM_EC_PUB_Y, 32)),
                      R"("})");
    }
  }
  return absl::StrCat(R"({"keys":[)", keys, "]}");
}

std::string SignJwt(const JwtSigner& signer, const std::string& claims_json,
                    const std::string& header_alg) {
  const std::string alg = header_alg.empty() ? signer.alg : header_alg;
  const std::string signing_input =
      absl::StrCat(B64(absl::StrCat(R"({"alg":")", alg, R"(","kid":")", signer.kid, R"("})")), ".",
                   B64(claims_json));
  pki::EvpMdCtxPtr md(EVP_MD_CTX_new());
  size_t len = 0;
  MESHTLS_CHECK(EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, signer.key.get()) == 1,
                "sign init");
  MESHTLS_CHECK(EVP_DigestSign(md.get(), nullptr, &len,
                               reinterpret_cast<const unsigned char*>(signing_input.data()),
                               signing_input.size()) == 1,
                "sign size");
  std::string sig(len, '\0');
  MESHTLS_CHECK(EVP_DigestSign(md.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                               reinterpret_cast<const unsigned char*>(signing_input.data()),
                               signing_input.size()) == 1,
                "sign");
  sig.resize(len);
  if (signer.alg == "ES256") {  // DER ECDSA-Sig-Value -> JWS r||s
    const unsigned char* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* ecdsa = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(ecdsa), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(ecdsa), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    ECDSA_SIG_free(ecdsa);
    sig = raw;
  }
  return absl::StrCat(signing_input, ".", B64(sig));
}

std::string ServiceAccountClaims(const std::string& issuer, const std::string& audience,
                                 const std::string& ns, const std::string& sa, absl::Time exp,
                                 absl::Time nbf) {
  return absl::StrCat(R"({"aud":[")", audience, R"("],"exp":)", absl::ToUnixSeconds(exp),
                      R"(,"iat":)", absl::ToUnixSeconds(nbf), R"(,"iss":")", issuer,
                      R"(","kubernetes.io":{"namespace":")", ns,
                      R"(","pod":{"name":"p-1","uid":"u-1"},"serviceaccount":{"name":")", sa,
                      R"(","uid":"u-2"}},"nbf":)", absl::ToUnixSeconds(nbf),
                      R"(,"sub":"system:serviceaccount:)", ns, ":", sa, R"("})");
}

}  // namespace meshtls::testing

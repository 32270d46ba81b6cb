#include "common/pki/key.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "absl/strings/str_cat.h"
#include "common/pki/openssl_error.h"

namespace meshtls::pki {

absl::StatusOr<PrivateKey> PrivateKey::GenerateEcP256() {
  EVP_PKEY* raw = EVP_EC_gen("P-256");
  if (raw == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "generating an ECDSA P-256 key");
  }
  return PrivateKey(EvpPkeyPtr(raw));
}

absl::StatusOr<PrivateKey> PrivateKey::FromPem(absl::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "BIO_new_mem_buf");
  }
  // An empty passphrase callback: an encrypted key fails instead of prompting on a terminal.
  EVP_PKEY* raw = PEM_read_bio_PrivateKey(
      bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr);
  if (raw == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument,
                        "not a PEM private key (or it is encrypted)");
  }
  return PrivateKey(EvpPkeyPtr(raw));
}

absl::StatusOr<std::string> PrivateKey::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_PKCS8PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0,
                                                      nullptr, nullptr) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "writing a private key as PEM");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  std::string out(data, static_cast<size_t>(len));
  return out;
}

absl::Status CheckKeyAcceptable(EVP_PKEY* key) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_EC: {
      // Named curves only (RFC 5480 section 2.1.1 forbids the others in PKIX): OpenSSL maps
      // explicit parameters equal to P-256 to its name, so the group name alone would accept
      // them, and explicit parameters have been the way to attacks on curve validation.
      char encoding[32] = {0};
      size_t encoding_len = 0;
      if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_EC_ENCODING, encoding,
                                         sizeof(encoding), &encoding_len) != 1 ||
          absl::string_view(encoding, encoding_len) != OSSL_PKEY_EC_ENCODING_GROUP) {
        ERR_clear_error();
        return absl::InvalidArgumentError(
            "EC key with explicit curve parameters; want the named curve P-256");
      }
      char group[64] = {0};
      size_t len = 0;
      if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                         &len) != 1) {
        return OpenSslError(absl::StatusCode::kInvalidArgument, "EC key without a named curve");
      }
      if (absl::string_view(group, len) != SN_X9_62_prime256v1) {
        return absl::InvalidArgumentError(
            absl::StrCat("EC key on curve ", absl::string_view(group, len), "; want P-256"));
      }
      return absl::OkStatus();
    }
    case EVP_PKEY_RSA: {
      int bits = EVP_PKEY_get_bits(key);
      if (bits < 2048) {
        return absl::InvalidArgumentError(
            absl::StrCat("RSA key of ", bits, " bits; want 2048 or more"));
      }
      if (bits > 8192) {
        return absl::InvalidArgumentError(
            absl::StrCat("RSA key of ", bits, " bits; want 8192 or fewer"));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "key type ", OBJ_nid2sn(EVP_PKEY_get_base_id(key)), "; want ECDSA P-256 or RSA"));
  }
}

}  // namespace meshtls::pki

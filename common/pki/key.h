#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::pki {

// PrivateKey is a shared, immutable handle to an EVP_PKEY (copies share the key). Thread-safe
// for concurrent use once built.
class PrivateKey {
 public:
  // GenerateEcP256 makes a fresh ECDSA P-256 key.
  static absl::StatusOr<PrivateKey> GenerateEcP256();
  // FromPem parses a PEM private key (PKCS#8 or traditional, unencrypted).
  static absl::StatusOr<PrivateKey> FromPem(absl::string_view pem);

  PrivateKey(const PrivateKey& other) : key_(UpRef(other.key_.get())) {}
  PrivateKey& operator=(const PrivateKey& other) {
    key_ = UpRef(other.key_.get());
    return *this;
  }
  PrivateKey(PrivateKey&&) = default;
  PrivateKey& operator=(PrivateKey&&) = default;

  EVP_PKEY* get() const { return key_.get(); }
  // ToPem returns the key as unencrypted PKCS#8 PEM. Handle the result as a secret.
  absl::StatusOr<std::string> ToPem() const;

 private:
  explicit PrivateKey(EvpPkeyPtr key) : key_(std::move(key)) {}
  EvpPkeyPtr key_;
};

// CheckKeyAcceptable accepts ECDSA P-256 (as a named curve, never explicit parameters) and RSA
// of 2048 to 8192 bits: the keys the mesh allows in certificates. The error names what is wrong
// with the key.
absl::Status CheckKeyAcceptable(EVP_PKEY* key);

}  // namespace meshtls::pki

#include "sidecar/tls/verified_chain_cache.h"

#include <openssl/evp.h>

namespace meshtls::sidecar {

std::optional<std::string> VerifiedChainCache::MakeKey(uint64_t verifier, pki::PeerRole role,
                                                       X509* leaf, STACK_OF(X509) * untrusted) {
  // Fetched once: the implicit fetch behind EVP_sha256() costs a method-store lookup per use.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (sha256 == nullptr || leaf == nullptr) {
    return std::nullopt;
  }
  std::string key(reinterpret_cast<const char*>(&verifier), sizeof(verifier));
  key.push_back(role == pki::PeerRole::kClient ? 'c' : 's');
  auto append_digest = [&](X509* cert) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (X509_digest(cert, sha256, digest, &length) != 1) {
      return false;
    }
    key.append(reinterpret_cast<const char*>(digest), length);
    return true;
  };
  if (!append_digest(leaf)) {
    return std::nullopt;
  }
  for (int i = 0; untrusted != nullptr && i < sk_X509_num(untrusted); ++i) {
    if (!append_digest(sk_X509_value(untrusted, i))) {
      return std::nullopt;
    }
  }
  return key;
}

}  // namespace meshtls::sidecar

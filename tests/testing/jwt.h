#pragma once

// Test-only JWTs: signing keys, their JWKS, and tokens shaped like Kubernetes projected
// ServiceAccount tokens, all made at test time.

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::testing {

struct JwtSigner {
  std::string kid;
  std::string alg;  // "RS256" or "ES256"
  std::shared_ptr<EVP_PKEY> key;
};

JwtSigner NewRs256Signer(const std::string& kid);
JwtSigner NewEs256Signer(const std::string& kid);
// Jwks returns the public JWKS document for the signers.
std::string Jwks(const std::vector<JwtSigner>& signers);

// Sign makes header.payload.signature; `header_alg` overrides the header's alg (for "none").
std::string SignJwt(const JwtSigner& signer, const std::string& claims_json,
                    const std::string& header_alg = "");

// ServiceAccountClaims returns claims like the kubelet's projected tokens carry.
std::string ServiceAccountClaims(const std::string& issuer, const std::string& audience,
                                 const std::string& ns, const std::string& sa, absl::Time exp,
                                 absl::Time nbf);

}  // namespace meshtls::testing

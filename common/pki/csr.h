#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/pki/key.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::pki {

// CreateCsrDer builds a PKCS#10 request for `key`, signed with it (SHA-256). The subject is
// empty: certmgr takes the identity from the caller's credential, never from the CSR.
absl::StatusOr<std::string> CreateCsrDer(const PrivateKey& key);

// VerifiedCsr is the part of a CSR that certmgr uses: its public key, after every check.
struct VerifiedCsr {
  EvpPkeyPtr public_key;
};

// ParseAndVerifyCsr parses a DER CSR (at most 16 KiB, no trailing bytes), verifies its
// self-signature, refuses MD5/SHA-1 signatures, and accepts only ECDSA P-256 keys (named curve;
// explicit curve parameters are refused) or RSA >= 2048 keys.
// Errors are InvalidArgument and name what was wrong.
absl::StatusOr<VerifiedCsr> ParseAndVerifyCsr(absl::string_view der);

}  // namespace meshtls::pki

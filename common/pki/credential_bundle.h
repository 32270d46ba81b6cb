#pragma once

#include <cstdint>
#include <vector>

#include "common/pki/certificate.h"
#include "common/pki/key.h"

namespace meshtls::pki {

// CredentialBundle is everything a workload needs to speak mTLS: its certificate chain (leaf
// first, then intermediates), the private key of the leaf, and the trust bundle (roots) with
// its sequence number. A plain value: the CA client produces it, the sidecar consumes it.
struct CredentialBundle {
  std::vector<Certificate> chain;
  PrivateKey key;
  std::vector<Certificate> trust_bundle;
  uint64_t bundle_sequence = 0;
};

}  // namespace meshtls::pki

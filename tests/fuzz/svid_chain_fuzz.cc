// Fuzz target: X.509-SVID validation of a DER chain a peer sends (the sidecar's inbound and
// outbound handshakes, certmgr's renewal path), trust bundle included in the input so that the
// path builder sees chains that really do lead somewhere.
//
// Input: one byte N, then DER certificates back to back: the first N % 4 + 1 are the trust
// bundle, the next is the leaf, the rest the peer's intermediates. Validation runs at a fixed
// time (the seeds' certificates are valid then), for both roles.

#include <openssl/err.h>
#include <openssl/x509.h>

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "common/pki/chain_verifier.h"

namespace {

using namespace meshtls;

// ParseDerSequence reads certificates until the bytes run out or stop parsing.
std::vector<pki::Certificate> ParseDerSequence(const uint8_t* data, size_t size) {
  std::vector<pki::Certificate> out;
  const unsigned char* p = data;
  const unsigned char* end = data + size;
  while (p < end && out.size() < 24) {
    X509* raw = d2i_X509(nullptr, &p, end - p);
    if (raw == nullptr) {
      break;
    }
    out.push_back(pki::Certificate::Wrap(pki::X509Ptr(raw)));
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) {
    return 0;
  }
  const size_t bundle_size = data[0] % 4 + 1;
  std::vector<pki::Certificate> certs = ParseDerSequence(data + 1, size - 1);
  ERR_clear_error();
  if (certs.size() <= bundle_size) {
    return 0;
  }
  std::vector<pki::Certificate> roots(certs.begin(), certs.begin() + bundle_size);
  std::vector<pki::Certificate> chain(certs.begin() + bundle_size, certs.end());
  absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> verifier =
      pki::ChainVerifier::Create("fuzz.test", roots);
  if (!verifier.ok()) {
    return 0;  // a bundle entry that is not a CA
  }
  const absl::Time at = absl::FromUnixSeconds(1'700'000'000);
  for (pki::PeerRole role : {pki::PeerRole::kClient, pki::PeerRole::kServer}) {
    int x509_error = 0;
    (void)(*verifier)->VerifyChain(chain, role, at, &x509_error);
    (void)(*verifier)->VerifyChainPath(chain, role, at);
  }
  return 0;
}

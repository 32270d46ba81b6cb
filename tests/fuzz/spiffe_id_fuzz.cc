// Fuzz target: SPIFFE IDs and allow-list patterns (peer certificates' URI SANs, operator
// config). Every accepted ID must print back as itself and match itself exactly.

#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/pki/spiffe_id.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<meshtls::pki::SpiffeId> id = meshtls::pki::SpiffeId::Parse(text);
  if (id.ok()) {
    if (id->str() != text || id->trust_domain().empty()) {
      std::abort();  // a parsed ID must be the input, with a trust domain
    }
    absl::StatusOr<meshtls::pki::SpiffeIdMatcher> exact =
        meshtls::pki::SpiffeIdMatcher::Parse(text);
    if (!exact.ok() || !exact->Matches(*id)) {
      std::abort();  // an ID is a pattern that matches itself
    }
  }
  absl::StatusOr<meshtls::pki::SpiffeIdMatcher> pattern =
      meshtls::pki::SpiffeIdMatcher::Parse(text);
  if (pattern.ok() && id.ok()) {
    (void)pattern->Matches(*id);
  }
  (void)meshtls::pki::SpiffeId::ValidateTrustDomain(text);
  return 0;
}

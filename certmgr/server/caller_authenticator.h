#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/pki/certificate.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::certmgr {

// CallerCredentials is what a caller presented, as plain values (no gRPC types).
struct CallerCredentials {
  std::optional<std::string> bearer_token;   // from "authorization: Bearer <token>"
  std::vector<pki::Certificate> peer_chain;  // the mTLS client chain, leaf first (may be empty)
};

// CallerAuthenticator decides the caller's identity from its credential. Implementations are
// thread-safe. Errors: NotFound (no credential of this authenticator's kind: ask the next one),
// Unauthenticated (a bad credential of its kind), PermissionDenied (a valid credential for an
// identity that may not obtain certificates).
class CallerAuthenticator {
 public:
  virtual ~CallerAuthenticator() = default;
  virtual absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) = 0;
  // CheckRenewal says whether this authenticator's current policy would still issue `id`, for
  // a caller that renews with a certificate instead of a bootstrap credential: OK (it would),
  // PermissionDenied (the identity is of its kind but its policy no longer allows it), NotFound
  // (not an identity this authenticator issues). MeshAuthenticator allows a renewal when any
  // bootstrap authenticator answers OK, as a bootstrap succeeds with any one credential.
  virtual absl::Status CheckRenewal(const pki::SpiffeId& id) = 0;
};

}  // namespace meshtls::certmgr

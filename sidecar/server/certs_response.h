#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "sidecar/identity/identity_source.h"
#include "sidecar/tls/tls_context.h"

namespace meshtls::sidecar {

// CertsJson renders the body of GET /certs, a meshtls.admin.v1.CertsResponse printed as one
// line of JSON ending in a newline, for `context` (the TLS context served now; null before the
// first certificate) and the identity source's `status`. Fails only if protobuf cannot print
// the message. Any thread.
absl::StatusOr<std::string> CertsJson(const TlsContext* context, const IdentityStatus& status);

}  // namespace meshtls::sidecar

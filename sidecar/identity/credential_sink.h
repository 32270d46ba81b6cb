#pragma once

#include "absl/status/status.h"
#include "common/pki/credential_bundle.h"

namespace meshtls::sidecar {

// CredentialSink is the one seam between certificate rotation and TLS: the rotator hands it a
// complete bundle; the sidecar builds and swaps in a new TLS context, or returns an error and
// keeps the old one. Publish is called from the rotator's threads, one call at a time.
class CredentialSink {
 public:
  virtual ~CredentialSink() = default;
  virtual absl::Status Publish(const pki::CredentialBundle& bundle) = 0;
};

}  // namespace meshtls::sidecar

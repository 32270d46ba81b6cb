#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "sidecar/config/sidecar_config.h"
#include "sidecar/identity/credential_sink.h"

namespace meshtls::sidecar {

// Server is a running sidecar: workers with their listeners, the admin endpoint, and the
// identity source (certmgr rotation or files). It implements CredentialSink: each published
// bundle becomes a new immutable TlsContext swapped in atomically; a bundle that cannot be
// used is refused and the previous context stays.
//
// Create/Drain/Stop/ReloadFiles run on the main thread. Publish runs where the identity source
// loads credentials (files: the main thread at start and on SIGHUP, and the file watcher;
// certmgr: the rotator's renewal and trust bundle watch threads), one call at a time.
class Server : public CredentialSink {
 public:
  // With a `bound_ports_file`, Create writes the address of every listener it bound (admin,
  // inbound.<name>, outbound.<name>; see base::FormatBoundPorts) to that path once all are
  // bound, before readiness can turn 200, so a caller that asked for port 0 learns its ports.
  static absl::StatusOr<std::unique_ptr<Server>> Create(const SidecarConfig& config,
                                                        const std::string& bound_ports_file = "");
  ~Server() override = default;

  // Drain: readiness 503 at once, stop accepting, let connections finish up to
  // limits.drain_timeout, then close what is left.
  virtual void Drain() = 0;
  // ReloadFiles re-reads the files of identity.files (SIGHUP). No-op in certmgr mode.
  virtual absl::Status ReloadFiles() = 0;
  virtual uint16_t admin_port() const = 0;
};

}  // namespace meshtls::sidecar

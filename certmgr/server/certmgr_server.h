#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "certmgr/server/certmgr_config.h"
#include "common/base/clock.h"

namespace meshtls::certmgr {

// CertmgrServer is a running certmgr: the CA, the gRPC CertificateAuthority service over TLS
// and the admin listener. Create() starts everything; Shutdown() (or destruction) stops it,
// closing open WatchTrustBundle streams. Create/Shutdown run on the main thread.
//
// With a `config_path`, certmgr follows that file (and ReloadConfig() on SIGHUP): each valid
// new version applies its identity policy live (`deny`, the Kubernetes `allowed_namespaces`),
// so a revoked identity stops renewing within seconds; other fields take effect at restart.
class CertmgrServer {
 public:
  //
  // With a `bound_ports_file`, Create writes the addresses of the gRPC and admin listeners
  // (names "grpc" and "admin"; see base::FormatBoundPorts) to that path once both are bound,
  // before /readyz turns 200, so a caller that asked for port 0 learns its ports.
  static absl::StatusOr<std::unique_ptr<CertmgrServer>> Create(const CertmgrConfig& config,
                                                               const base::Clock& clock,
                                                               std::string config_path = "",
                                                               std::string bound_ports_file = "");
  virtual ~CertmgrServer() = default;

  virtual int admin_port() const = 0;
  // ReloadConfig re-reads the config file now. Any thread.
  virtual void ReloadConfig() = 0;
  virtual void Shutdown() = 0;
};

}  // namespace meshtls::certmgr

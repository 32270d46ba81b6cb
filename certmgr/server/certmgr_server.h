#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "certmgr/base/clock.h"
#include "certmgr/server/certmgr_config.h"

namespace meshtls::certmgr {

// CertmgrServer is a running certmgr: the CA, the gRPC CertificateAuthority service over TLS
// and the admin listener. Create() starts everything; Shutdown() (or destruction) stops it,
// closing open WatchTrustBundle streams. Create/Shutdown run on the main thread.
class CertmgrServer {
 public:
  static absl::StatusOr<std::unique_ptr<CertmgrServer>> Create(const CertmgrConfig& config,
                                                               const base::Clock& clock);
  virtual ~CertmgrServer() = default;

  virtual int admin_port() const = 0;
  virtual void Shutdown() = 0;
};

}  // namespace meshtls::certmgr

#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "certmgr/base/clock.h"
#include "certmgr/pki/certificate.h"
#include "certmgr/pki/key.h"

namespace meshtls::certmgr {

// CaMaterial is the signing CA: its certificate and key, any intermediates between it and the
// root, and the roots that make up the trust bundle. A plain value.
struct CaMaterial {
  pki::Certificate cert;
  pki::PrivateKey key;
  std::vector<pki::Certificate> intermediates;  // issuer chain above `cert`, excluding roots
  std::vector<pki::Certificate> roots;
};

// LoadOrCreateCaInDir uses <dir>/ca.pem and <dir>/ca.key (mode 0600). With neither present it
// creates an ECDSA P-256 root for `trust_domain`, valid for `ca_ttl`; with both it loads and
// checks them. Creating and loading hold an flock on <dir>/.lock, so several certmgr processes
// sharing the directory agree on one CA. The directory is created (0700) if missing.
absl::StatusOr<CaMaterial> LoadOrCreateCaInDir(const std::string& dir,
                                               absl::string_view trust_domain,
                                               absl::Duration ca_ttl, const base::Clock& clock);

// LoadCaFromFiles loads an operator-provided CA: `cert_path` holds the signing CA certificate,
// optionally followed by its issuers; `bundle_path` (optional when the CA is self-signed) the
// trust bundle roots.
absl::StatusOr<CaMaterial> LoadCaFromFiles(const std::string& cert_path,
                                           const std::string& key_path,
                                           const std::string& bundle_path,
                                           absl::string_view trust_domain,
                                           const base::Clock& clock);

// CheckCaMaterial validates a CA for use: key matches, CA:TRUE with keyCertSign, currently
// valid, and a SPIFFE URI SAN (if any) naming `trust_domain`.
absl::Status CheckCaMaterial(const CaMaterial& ca, absl::string_view trust_domain, absl::Time now);

}  // namespace meshtls::certmgr

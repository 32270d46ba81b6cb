#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "common/pki/certificate.h"
#include "common/pki/key.h"

namespace meshtls::certmgr {

// CaMaterial is the signing CA: its certificate and key, any intermediates between it and the
// root, and the roots that make up the trust bundle. A plain value.
struct CaMaterial {
  pki::Certificate cert;
  pki::PrivateKey key;
  std::vector<pki::Certificate> intermediates;  // issuer chain above `cert`, excluding roots
  std::vector<pki::Certificate> roots;          // the trust bundle: active, next and previous
  uint64_t bundle_sequence = 1;                 // increases with every change of `roots`
                                                // (see NextBundleSequence)
  // Rotation state (ca.dir only): a prepared root (trusted, not signing yet) and the previous
  // signer (trusted until every leaf it signed has expired).
  std::optional<pki::Certificate> next = std::nullopt;
  std::optional<pki::Certificate> previous = std::nullopt;
  absl::Time previous_retire_after = absl::InfinitePast();
};

// CA directory layout (all files written atomically, all changes under an flock of .lock):
//   ca.pem, ca.key          the active signer (key 0600)
//   next.pem, next.key      a prepared root: in the bundle, not signing yet
//   previous.pem            the previous signer, in the bundle until previous.state's time
//   previous.state          "retire_after <unix seconds>"
//   bundle.seq              the bundle sequence number

// LoadOrCreateCaInDir uses <dir>/ca.pem and <dir>/ca.key (mode 0600). With neither present it
// creates an ECDSA P-256 root for `trust_domain`, valid for `ca_ttl`; with both it loads and
// checks them. Creating and loading hold an flock on <dir>/.lock, so several certmgr processes
// sharing the directory agree on one CA. The directory is created (0700) if missing.
absl::StatusOr<CaMaterial> LoadOrCreateCaInDir(const std::string& dir,
                                               absl::string_view trust_domain,
                                               absl::Duration ca_ttl, const base::Clock& clock);

// LoadCaDir loads the CA directory's current state (no creation); certmgr calls it again when
// the directory changes (rotation by the CLI or by another replica, or a Secret update).
// A read-only directory is read without the lock (see CaDirIsWritable).
absl::StatusOr<CaMaterial> LoadCaDir(const std::string& dir, absl::string_view trust_domain,
                                     const base::Clock& clock);

// NextBundleSequence is the sequence after `current` (0 for a new CA): a wall-clock timestamp
// in microseconds, raised by at least one at every change. Sidecars apply only a higher
// sequence, so a CA directory recreated after a compromise (starting again from the clock)
// still reaches every running sidecar. Values stay below 2^53 until the year 2255, so a
// Prometheus gauge shows them exactly.
uint64_t NextBundleSequence(uint64_t current, absl::Time now);

// CaDirIsWritable is false for a read-only CA directory, such as a Kubernetes Secret volume.
// certmgr only reads such a directory (following kubelet's `..data` swaps, so every load sees
// one version of the Secret whole) and never rotates it itself: rotation steps run elsewhere
// on a copy, and the updated Secret reaches every replica.
bool CaDirIsWritable(const std::string& dir);

// CaRotationStep is one step of a CA rotation.
enum class CaRotationStep { kPrepare, kActivate, kRetire };

// RotateCa performs one step on the CA directory, under its lock:
//  - kPrepare: create the next root (ECDSA P-256, valid for `ca_ttl`) and add it to the bundle;
//  - kActivate: the prepared root becomes the signer; the old signer stays in the bundle as
//    "previous" until now + `max_leaf_lifetime` (every leaf it signed has expired by then);
//  - kRetire: drop the previous signer from the bundle; before its retire time only with
//    `force` (leaves it signed would then be refused by the mesh).
// Errors are FailedPrecondition naming what is out of order.
absl::Status RotateCa(const std::string& dir, absl::string_view trust_domain, CaRotationStep step,
                      absl::Duration ca_ttl, absl::Duration max_leaf_lifetime, bool force,
                      const base::Clock& clock);

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

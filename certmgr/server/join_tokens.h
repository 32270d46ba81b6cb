#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "certmgr/server/caller_authenticator.h"
#include "common/base/clock.h"
#include "common/base/file.h"

namespace meshtls::certmgr {

// Join tokens are bootstrap credentials for workloads outside Kubernetes (and the local demo).
// The token file holds one line per token: "v1 <sha256-hex of token> <spiffe-id> <expiry unix
// seconds or 0>". Only hashes are stored, so the file does not hand out identities if read.
// A token is reusable until it expires (so a sidecar can fall back on it after an outage); an
// identity keeps renewing with its certificate for as long as the file holds a line for it,
// expired or not: deleting an identity's lines revokes it at its next renewal.

// kDefaultJoinTokenTtl is the lifetime of a token created without an explicit one.
inline constexpr absl::Duration kDefaultJoinTokenTtl = absl::Hours(24);

// CreateJoinToken makes a random token for `id` expiring at `expires`, appends it to `path`
// (created 0600, under an flock) and returns the token text.
absl::StatusOr<std::string> CreateJoinToken(const std::string& path, const pki::SpiffeId& id,
                                            absl::Time expires);

// JoinTokenFileState is how the token file loaded last, for metrics and alerts.
struct JoinTokenFileState {
  bool usable = true;      // false: refused whole (writable by group or others, unreadable)
  int rejected_lines = 0;  // malformed lines, each refused on its own
  size_t tokens = 0;       // lines in force
};

// JoinTokenAuthenticator checks bearer tokens against the token file, re-reading it when it
// changes (so `token create` needs no restart). A malformed line is refused on its own and the
// rest of the file applies: keeping the previous version instead would keep every token the
// same edit deleted. A file writable by group or others, or unreadable, is refused whole (no
// join token is valid until it is fixed): anyone who can write it can mint identities. A token
// without the "mjt_" prefix is not a join token: NotFound, so the next authenticator decides.
// Thread-safe.
class JoinTokenAuthenticator final : public CallerAuthenticator {
 public:
  JoinTokenAuthenticator(std::string path, const base::Clock& clock)
      : path_(std::move(path)), clock_(clock) {}
  absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) override;
  // CheckRenewal: OK while the file holds a line for `id` (expired or not), else NotFound.
  // While the file is refused whole, its last good version answers.
  absl::Status CheckRenewal(const pki::SpiffeId& id) override;
  // Reload re-reads the file if it changed and returns how it loaded. Any thread (certmgr's
  // file watcher calls it, so a broken file shows in metrics before a token is used).
  JoinTokenFileState Reload();

 private:
  struct Entry {
    std::string spiffe_id;
    absl::Time expires;  // InfiniteFuture for a line written with expiry 0 (older tokens)
  };
  void ReloadIfChanged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RefuseWholeFile(const base::FileVersion& version, absl::string_view why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const base::Clock& clock_;
  absl::Mutex mu_;
  std::map<std::string, Entry> by_hash_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> identities_ ABSL_GUARDED_BY(mu_);  // every spiffe_id with a line
  JoinTokenFileState state_ ABSL_GUARDED_BY(mu_);
  std::string refused_because_ ABSL_GUARDED_BY(mu_);  // why the file is refused whole
  base::FileVersion loaded_ ABSL_GUARDED_BY(mu_);
};

// TokenSha256Hex returns the hex SHA-256 of a token, as stored in the file.
std::string TokenSha256Hex(absl::string_view token);

}  // namespace meshtls::certmgr

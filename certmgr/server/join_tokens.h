#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "certmgr/base/clock.h"
#include "certmgr/base/file.h"
#include "certmgr/server/caller_authenticator.h"

namespace meshtls::certmgr {

// Join tokens are bootstrap credentials for workloads outside Kubernetes (and the local demo).
// The token file holds one line per token: "v1 <sha256-hex of token> <spiffe-id> <expiry unix
// seconds or 0>". Only hashes are stored, so the file does not hand out identities if read.
// Tokens are reusable until they expire, so a sidecar can always fall back on its token.

// CreateJoinToken makes a random token for `id`, appends it to `path` (created 0600, under an
// flock) and returns the token text.
absl::StatusOr<std::string> CreateJoinToken(const std::string& path, const pki::SpiffeId& id,
                                            std::optional<absl::Time> expires);

// JoinTokenAuthenticator checks bearer tokens against the token file, re-reading it when it
// changes (so `token create` needs no restart). A file that fails to parse leaves the previous
// tokens in force and is logged. A token without the "mjt_" prefix is not a join token:
// NotFound, so the next authenticator decides. Thread-safe.
class JoinTokenAuthenticator final : public CallerAuthenticator {
 public:
  JoinTokenAuthenticator(std::string path, const base::Clock& clock)
      : path_(std::move(path)), clock_(clock) {}
  absl::StatusOr<pki::SpiffeId> Authenticate(const CallerCredentials& credentials) override;

 private:
  struct Entry {
    std::string spiffe_id;
    absl::Time expires;  // InfiniteFuture when it never expires
  };
  void ReloadIfChanged() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const base::Clock& clock_;
  absl::Mutex mu_;
  std::map<std::string, Entry> by_hash_ ABSL_GUARDED_BY(mu_);
  base::FileVersion loaded_ ABSL_GUARDED_BY(mu_);
};

// TokenSha256Hex returns the hex SHA-256 of a token, as stored in the file.
std::string TokenSha256Hex(absl::string_view token);

}  // namespace meshtls::certmgr

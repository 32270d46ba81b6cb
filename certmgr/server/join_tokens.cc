#include "certmgr/server/join_tokens.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/base/fd.h"
#include "common/base/file.h"
#include "common/base/log.h"

namespace meshtls::certmgr {
namespace {

constexpr size_t kMaxTokenBytes = 8192;
constexpr absl::string_view kTokenPrefix = "mjt_";

}  // namespace

std::string TokenSha256Hex(absl::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

absl::StatusOr<std::string> CreateJoinToken(const std::string& path, const pki::SpiffeId& id,
                                            absl::Time expires) {
  unsigned char random[32];
  if (RAND_bytes(random, sizeof(random)) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  std::string token =
      absl::StrCat(kTokenPrefix, absl::WebSafeBase64Escape(absl::string_view(
                                     reinterpret_cast<char*>(random), sizeof(random))));
  const int64_t expiry = absl::ToUnixSeconds(expires);
  const std::string line =
      absl::StrCat("v1 ", TokenSha256Hex(token), " ", id.str(), " ", expiry, "\n");
  base::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  if (::flock(fd.get(), LOCK_EX) != 0) {
    return absl::InternalError(absl::StrCat("cannot lock ", path, ": ", std::strerror(errno)));
  }
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
      ::fsync(fd.get()) != 0) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return token;
}

void JoinTokenAuthenticator::RefuseWholeFile(const base::FileVersion& version,
                                             absl::string_view why) {
  // No token bootstraps while the file is refused, but the identities of its last good version
  // keep renewing: a chmod mistake must not take every join-token workload out of the mesh
  // within a certificate lifetime. (Deleting the file, or lines of it, does revoke.)
  by_hash_.clear();
  state_ = JoinTokenFileState{.usable = false, .rejected_lines = 0, .tokens = 0};
  refused_because_ = std::string(why);
  loaded_ = version;
  base::LogError("join token file refused; no join token is valid until it is fixed",
                 {{"path", path_}, {"error", std::string(why)}});
}

void JoinTokenAuthenticator::ReloadIfChanged() {
  const base::FileVersion now = base::StatFileVersion(path_);
  if (now == loaded_) {
    return;
  }
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    if (errno == ENOENT) {  // no tokens created yet
      by_hash_.clear();
      identities_.clear();
      state_ = JoinTokenFileState{};
      loaded_ = now;
    } else {
      RefuseWholeFile(now, std::strerror(errno));
    }
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    RefuseWholeFile(now, "not a regular file");
    return;
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    RefuseWholeFile(now, absl::StrFormat("writable by group or others (mode %04o): chmod go-w %s",
                                         st.st_mode & 07777, path_));
    return;
  }
  absl::StatusOr<std::string> text = base::ReadFileToString(path_, 16 << 20);
  if (!text.ok()) {
    RefuseWholeFile(now, text.status().message());
    return;
  }
  std::map<std::string, Entry> parsed;
  std::set<std::string> identities;
  JoinTokenFileState state;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t expiry = 0;
    if (parts.size() != 4 || parts[0] != "v1" || parts[1].size() != 64 ||
        !pki::SpiffeId::Parse(parts[2]).ok() || !absl::SimpleAtoi(parts[3], &expiry) ||
        expiry < 0) {
      ++state.rejected_lines;
      base::LogError("join token file: malformed line refused (the other lines apply)",
                     {{"path", path_}, {"line", absl::StrCat(line_number)}});
      continue;
    }
    parsed[std::string(parts[1])] =
        Entry{std::string(parts[2]),
              expiry == 0 ? absl::InfiniteFuture() : absl::FromUnixSeconds(expiry)};
    identities.insert(std::string(parts[2]));
  }
  state.tokens = parsed.size();
  by_hash_ = std::move(parsed);
  identities_ = std::move(identities);
  state_ = state;
  refused_because_.clear();
  loaded_ = now;
}

JoinTokenFileState JoinTokenAuthenticator::Reload() {
  absl::MutexLock lock(&mu_);
  ReloadIfChanged();
  return state_;
}

absl::Status JoinTokenAuthenticator::CheckRenewal(const pki::SpiffeId& id) {
  absl::MutexLock lock(&mu_);
  ReloadIfChanged();
  if (identities_.contains(id.str())) {
    return absl::OkStatus();
  }
  return absl::NotFoundError(state_.usable ? "no join token names it any more"
                                           : "the join token file is refused");
}

absl::StatusOr<pki::SpiffeId> JoinTokenAuthenticator::Authenticate(
    const CallerCredentials& credentials) {
  if (!credentials.bearer_token.has_value()) {
    return absl::NotFoundError("no bearer token");
  }
  const std::string& token = *credentials.bearer_token;
  if (!absl::StartsWith(token, kTokenPrefix)) {
    return absl::NotFoundError("not a join token");  // another authenticator's kind of token
  }
  if (token.size() > kMaxTokenBytes) {
    return absl::UnauthenticatedError("bearer token is too long");
  }
  const std::string hash = TokenSha256Hex(token);
  absl::MutexLock lock(&mu_);
  ReloadIfChanged();
  if (!state_.usable) {
    return absl::UnauthenticatedError(
        absl::StrCat("join tokens are refused: the token file is ", refused_because_));
  }
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) {
    return absl::UnauthenticatedError("unknown join token");
  }
  if (clock_.Now() >= it->second.expires) {
    return absl::UnauthenticatedError("join token has expired");
  }
  return pki::SpiffeId::Parse(it->second.spiffe_id);
}

}  // namespace meshtls::certmgr

#include "sidecar/identity/rotator.h"

#include <openssl/x509v3.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/base/file.h"
#include "common/base/log.h"
#include "common/pki/csr.h"

namespace meshtls::sidecar {

absl::Duration Rotator::Jittered(absl::Duration d, double fraction) {
  const double factor = 1.0 + absl::Uniform(random_, -fraction, fraction);
  return std::max(d * factor, options_.min_refresh);
}

absl::StatusOr<CallCredentials> Rotator::CurrentCredentials() {
  CallCredentials credentials;
  {
    absl::MutexLock lock(&mu_);
    if (current_.has_value() && clock_.Now() < current_->chain[0].not_after()) {
      credentials.chain = current_->chain;
      credentials.key = current_->key;
    }
  }
  if (!options_.token_file.empty()) {
    absl::StatusOr<std::string> token = base::ReadFileToString(options_.token_file, 64 * 1024);
    if (token.ok()) {
      credentials.bearer_token = std::string(absl::StripAsciiWhitespace(*token));
    } else if (credentials.chain.empty()) {
      return absl::UnauthenticatedError(
          absl::StrCat("no valid certificate and no bootstrap token: ", token.status().message()));
    }
  }
  return credentials;
}

absl::Status Rotator::RefreshOnce() {
  absl::Status result = [&]() -> absl::Status {
    absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateEcP256();
    if (!key.ok()) {
      return key.status();
    }
    absl::StatusOr<std::string> csr = pki::CreateCsrDer(*key);
    if (!csr.ok()) {
      return csr.status();
    }
    absl::StatusOr<CallCredentials> credentials = CurrentCredentials();
    if (!credentials.ok()) {
      return credentials.status();
    }
    absl::StatusOr<SignedCredentials> signed_credentials =
        client_.Sign(*csr, *credentials, options_.rpc_timeout);
    if (!signed_credentials.ok()) {
      return signed_credentials.status();
    }
    if (!signed_credentials->chain[0].MatchesKey(key->get())) {
      return absl::InternalError("certmgr returned a certificate for another key");
    }
    absl::MutexLock publish_lock(&publish_mu_);
    pki::CredentialBundle bundle{.chain = signed_credentials->chain,
                                 .key = *key,
                                 .trust_bundle = signed_credentials->roots,
                                 .bundle_sequence = signed_credentials->bundle_sequence};
    {
      absl::MutexLock lock(&mu_);
      // A newer bundle from the watch stream wins over the one in the Sign response.
      if (latest_sequence_ > bundle.bundle_sequence) {
        bundle.trust_bundle = latest_roots_;
        bundle.bundle_sequence = latest_sequence_;
      }
    }
    if (absl::Status s = sink_.Publish(bundle); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("new certificate not applied: ", s.message()));
    }
    client_.SetExtraRoots(bundle.trust_bundle);
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_.Now();
    const absl::Duration remaining = bundle.chain[0].not_after() - now;
    latest_roots_ = bundle.trust_bundle;
    latest_sequence_ = bundle.bundle_sequence;
    lifetime_ = bundle.chain[0].not_after() - bundle.chain[0].not_before();
    current_ = std::move(bundle);
    next_refresh_ = now + Jittered(remaining * options_.renew_at, options_.jitter);
    backoff_ = absl::ZeroDuration();
    last_success_ = now;
    last_error_.clear();
    const std::vector<std::string> uris = current_->chain[0].UriSans();
    base::LogInfo("certificate renewed",
                  {{"spiffe_id", uris.empty() ? std::string() : uris[0]},
                   {"serial", current_->chain[0].SerialHex()},
                   {"not_after", absl::FormatTime(current_->chain[0].not_after())},
                   {"next_refresh", absl::FormatTime(next_refresh_)}});
    return absl::OkStatus();
  }();
  if (!result.ok()) {
    absl::MutexLock lock(&mu_);
    absl::Duration cap = options_.max_backoff;
    if (lifetime_ > absl::ZeroDuration()) {
      cap = std::clamp(lifetime_ / 10, options_.initial_backoff, options_.max_backoff);
    }
    backoff_ =
        backoff_ == absl::ZeroDuration() ? options_.initial_backoff : std::min(backoff_ * 2, cap);
    next_refresh_ = clock_.Now() + Jittered(backoff_, 0.2);
    last_error_ = std::string(result.message());
    base::LogWarning(
        "certificate renewal failed; keeping the current certificate",
        {{"error", last_error_},
         {"retry_in", absl::FormatDuration(next_refresh_ - clock_.Now())},
         {"have_valid_certificate",
          current_.has_value() && clock_.Now() < current_->chain[0].not_after() ? "true"
                                                                                : "false"}});
  }
  if (options_.on_attempt) {
    options_.on_attempt(result);
  }
  return result;
}

absl::Time Rotator::NextRefresh() const {
  absl::MutexLock lock(&mu_);
  return next_refresh_;
}

void Rotator::OnTrustBundle(std::vector<pki::Certificate> roots, uint64_t sequence) {
  absl::MutexLock publish_lock(&publish_mu_);
  std::optional<pki::CredentialBundle> bundle;
  {
    absl::MutexLock lock(&mu_);
    if (sequence <= latest_sequence_) {
      return;
    }
    latest_roots_ = roots;
    latest_sequence_ = sequence;
    if (current_.has_value()) {
      bundle = *current_;
      bundle->trust_bundle = std::move(roots);
      bundle->bundle_sequence = sequence;
    }
  }
  base::LogInfo("trust bundle update", {{"sequence", absl::StrCat(sequence)}});
  if (!bundle.has_value()) {
    return;  // applied with the first certificate
  }
  if (absl::Status s = sink_.Publish(*bundle); !s.ok()) {
    base::LogError("trust bundle update not applied; keeping the previous bundle",
                   {{"sequence", absl::StrCat(sequence)}, {"error", std::string(s.message())}});
    return;
  }
  client_.SetExtraRoots(bundle->trust_bundle);
  // Does the new bundle still hold the root our own chain ends at?
  const pki::Certificate& top = bundle->chain.back();
  bool own_root_kept = false;
  for (const pki::Certificate& root : bundle->trust_bundle) {
    if (X509_check_issued(root.get(), top.get()) == X509_V_OK) {
      own_root_kept = true;
    }
  }
  absl::MutexLock lock(&mu_);
  current_ = *std::move(bundle);
  if (!own_root_kept) {
    base::LogWarning("the trust bundle no longer holds the root of our certificate; renewing now",
                     {{"sequence", absl::StrCat(sequence)}});
    next_refresh_ = clock_.Now();
    wake_ = true;
  }
}

RotatorStatus Rotator::status() const {
  absl::MutexLock lock(&mu_);
  RotatorStatus s;
  s.has_certificate = current_.has_value();
  if (current_.has_value()) {
    s.not_before = current_->chain[0].not_before();
    s.not_after = current_->chain[0].not_after();
    s.bundle_sequence = current_->bundle_sequence;
  }
  s.next_refresh = next_refresh_;
  s.last_success = last_success_;
  s.last_error = last_error_;
  return s;
}

bool Rotator::WaitFor(absl::Duration d, bool renewal_loop) {
  absl::MutexLock lock(&mu_);
  if (renewal_loop) {
    // Only the renewal loop consumes wake_ (an earlier renewal was asked for).
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](Rotator* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
                               return r->stopping_ || r->wake_;
                             },
                             this),
                         d);
    wake_ = false;
  } else {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  }
  return !stopping_;
}

void Rotator::RenewLoop() {
  while (true) {
    absl::Duration wait;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        return;
      }
      wait = next_refresh_ - clock_.Now();
    }
    if (wait <= absl::ZeroDuration()) {
      (void)RefreshOnce();  // logged, counted and rescheduled inside
      continue;
    }
    if (!WaitFor(wait, /*renewal_loop=*/true)) {
      return;
    }
  }
}

void Rotator::WatchLoop() {
  absl::Duration backoff = options_.initial_backoff;
  while (true) {
    bool received = false;
    // The credentials of the moment: each reconnect presents the certificate renewed since.
    absl::StatusOr<CallCredentials> credentials = CurrentCredentials();
    absl::Status s = credentials.status();
    if (credentials.ok()) {
      s = client_.WatchTrustBundle(*credentials,
                                   [&](std::vector<pki::Certificate> roots, uint64_t sequence) {
                                     received = true;
                                     OnTrustBundle(std::move(roots), sequence);
                                   });
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        return;
      }
    }
    if (received) {
      backoff = options_.initial_backoff;
    }
    base::LogWarning(
        "trust bundle stream ended; reconnecting",
        {{"error", std::string(s.message())}, {"retry_in", absl::FormatDuration(backoff)}});
    if (!WaitFor(backoff, /*renewal_loop=*/false)) {
      return;
    }
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void Rotator::Start() {
  renew_thread_ = std::thread([this] { RenewLoop(); });
  watch_thread_ = std::thread([this] { WatchLoop(); });
}

void Rotator::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  client_.CancelWatch();
  if (renew_thread_.joinable()) {
    renew_thread_.join();
  }
  if (watch_thread_.joinable()) {
    watch_thread_.join();
  }
}

}  // namespace meshtls::sidecar

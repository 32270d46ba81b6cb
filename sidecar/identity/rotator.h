#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/clock.h"
#include "common/pki/credential_bundle.h"
#include "sidecar/identity/ca_client.h"
#include "sidecar/identity/credential_sink.h"

namespace meshtls::sidecar {

struct RotatorOptions {
  double renew_at = 0.5;  // fraction of the remaining lifetime (from receipt) before renewing
  double jitter = 0.05;   // +- fraction applied to each renewal delay
  absl::Duration initial_backoff = absl::Seconds(1);
  // Retries back off up to max_backoff, and never beyond a tenth of the certificate's
  // lifetime, so a short-lived certificate gets several tries before it expires.
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration min_refresh = absl::Seconds(1);  // floor on any delay: never a busy loop
  std::string token_file;  // bootstrap token, re-read on every attempt; empty: none
  // on_attempt is called after each renewal attempt with its result (for metrics).
  std::function<void(const absl::Status&)> on_attempt;
};

// RotatorStatus is a snapshot for metrics and the /certs endpoint.
struct RotatorStatus {
  bool has_certificate = false;
  absl::Time not_before = absl::InfinitePast();
  absl::Time not_after = absl::InfinitePast();
  absl::Time next_refresh = absl::InfinitePast();
  absl::Time last_success = absl::InfinitePast();
  uint64_t bundle_sequence = 0;
  std::string last_error;
};

// Rotator keeps a workload's certificate fresh. Each attempt generates a new ECDSA P-256 key,
// sends a CSR with the current certificate (if still valid) and the bootstrap token (if any),
// and publishes the result to the sink. It renews at `renew_at` of the remaining lifetime with
// jitter; on failure it retries with capped exponential backoff and keeps the old certificate.
// Trust bundle updates (from WatchTrustBundle) are published with the current certificate; one
// that no longer contains the root of that certificate triggers an immediate renewal.
//
// Thread-safety: Start() and Stop() on one thread; RefreshOnce() on the rotation thread (or a
// test's); OnTrustBundle() and status() on any thread. Publish calls are serialized.
class Rotator {
 public:
  Rotator(RotatorOptions options, CaClient& client, CredentialSink& sink, const base::Clock& clock)
      : options_(std::move(options)), client_(client), sink_(sink), clock_(clock) {}
  ~Rotator() { Stop(); }

  // RefreshOnce makes one attempt and schedules the next one.
  absl::Status RefreshOnce();
  absl::Time NextRefresh() const;
  void OnTrustBundle(std::vector<pki::Certificate> roots, uint64_t sequence);
  RotatorStatus status() const;

  // Start runs the renewal loop and the trust bundle watch on their own threads.
  void Start();
  void Stop();

 private:
  // CurrentCredentials is what a call to certmgr presents now: the current certificate while
  // it is valid, and the bootstrap token when the file can be read. Any thread.
  absl::StatusOr<CallCredentials> CurrentCredentials();
  absl::Duration Jittered(absl::Duration d, double fraction) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RenewLoop();
  void WatchLoop();
  // WaitFor sleeps up to `d` or until Stop() (or, for the renewal loop, until an immediate
  // renewal is requested); returns false when stopping.
  bool WaitFor(absl::Duration d, bool renewal_loop);

  const RotatorOptions options_;
  CaClient& client_;
  CredentialSink& sink_;
  const base::Clock& clock_;

  absl::Mutex publish_mu_;  // serializes Publish; taken before mu_
  mutable absl::Mutex mu_;
  std::optional<pki::CredentialBundle> current_ ABSL_GUARDED_BY(mu_);
  std::vector<pki::Certificate> latest_roots_ ABSL_GUARDED_BY(mu_);
  uint64_t latest_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_refresh_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  absl::Time last_success_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  absl::BitGen random_ ABSL_GUARDED_BY(mu_);
  absl::Duration lifetime_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();  // of the current cert
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;  // re-check next_refresh_ now
  std::thread renew_thread_;
  std::thread watch_thread_;
};

}  // namespace meshtls::sidecar

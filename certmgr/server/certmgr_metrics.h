#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <memory>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace meshtls::certmgr {

// SignResult is the `result` label of meshtls_certmgr_sign_requests_total.
enum class SignResult { kSuccess, kUnauthenticated, kPermissionDenied, kInvalidCsr, kInternal };
inline constexpr int kSignResultCount = 5;

// WatchRefusal is the `reason` label of meshtls_certmgr_trust_bundle_watch_refused_total.
enum class WatchRefusal {
  kUnauthenticated,
  kPermissionDenied,
  kTooManyWatchers,
  kTooManyFromAddress
};
inline constexpr int kWatchRefusalCount = 4;

// AdmissionResult is the `result` label of meshtls_certmgr_admission_reviews_total.
enum class AdmissionResult { kInjected, kUnchanged, kRefused, kMalformed };
inline constexpr int kAdmissionResultCount = 4;

// The `reason` label values of meshtls_certmgr_webhook_rejected_total (webhook::RejectionName).
inline constexpr const char* kWebhookRejections[] = {"tls", "timeout", "malformed", "too_large",
                                                     "over_capacity"};
inline constexpr int kWebhookRejectionCount = 5;

// CertmgrMetrics owns certmgr's Prometheus registry. Every label value exists from start.
// Thread-safe (prometheus-cpp metrics are atomic; certmgr's request rate makes that cheap).
class CertmgrMetrics {
 public:
  CertmgrMetrics();
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  void RecordSign(SignResult result, absl::Duration elapsed);
  void SetCaNotAfter(absl::Time not_after);
  void SetWatchers(size_t count);
  void RecordWatchRefused(WatchRefusal reason);
  // The join token file as loaded last (see JoinTokenFileState).
  void SetJoinTokenFile(bool usable, int rejected_lines);
  void SetConfigReloadSuccessful(bool ok);
  void RecordAdmissionReview(AdmissionResult result);
  // `reason` is one of kWebhookRejections; any other is ignored.
  void RecordWebhookRejected(absl::string_view reason);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::array<prometheus::Counter*, kSignResultCount> sign_requests_{};
  prometheus::Histogram* sign_duration_ = nullptr;
  prometheus::Gauge* ca_not_after_ = nullptr;
  prometheus::Gauge* watchers_ = nullptr;
  std::array<prometheus::Counter*, kWatchRefusalCount> watch_refused_{};
  prometheus::Gauge* join_token_file_usable_ = nullptr;
  prometheus::Gauge* join_token_file_rejected_lines_ = nullptr;
  prometheus::Gauge* config_reload_successful_ = nullptr;
  std::array<prometheus::Counter*, kAdmissionResultCount> admission_reviews_{};
  std::array<prometheus::Counter*, kWebhookRejectionCount> webhook_rejected_{};
};

}  // namespace meshtls::certmgr

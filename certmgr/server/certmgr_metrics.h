#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <memory>

#include "absl/time/time.h"

namespace meshtls::certmgr {

// SignResult is the `result` label of meshtls_certmgr_sign_requests_total.
enum class SignResult { kSuccess, kUnauthenticated, kPermissionDenied, kInvalidCsr, kInternal };
inline constexpr int kSignResultCount = 5;

// CertmgrMetrics owns certmgr's Prometheus registry. Every label value exists from start.
// Thread-safe (prometheus-cpp metrics are atomic; certmgr's request rate makes that cheap).
class CertmgrMetrics {
 public:
  CertmgrMetrics();
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  void RecordSign(SignResult result, absl::Duration elapsed);
  void SetCaNotAfter(absl::Time not_after);
  void SetWatchers(size_t count);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::array<prometheus::Counter*, kSignResultCount> sign_requests_{};
  prometheus::Histogram* sign_duration_ = nullptr;
  prometheus::Gauge* ca_not_after_ = nullptr;
  prometheus::Gauge* watchers_ = nullptr;
};

}  // namespace meshtls::certmgr

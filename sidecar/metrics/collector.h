#pragma once

#include <prometheus/collectable.h>

#include <functional>
#include <string>
#include <vector>

#include "sidecar/metrics/labels.h"
#include "sidecar/metrics/worker_counters.h"

namespace meshtls::sidecar {

// CredentialGauges is the certificate state the collector reports, read at scrape time.
struct CredentialGauges {
  double not_before = 0;  // Unix seconds; 0 when there is no certificate
  double not_after = 0;
  double renewal_due = 0;
  double last_renewal = 0;
  uint64_t renewals_success = 0;
  uint64_t renewals_failure = 0;
  uint64_t trust_bundle_roots = 0;
  uint64_t trust_bundle_sequence = 0;
  uint64_t tls_context_generation = 0;
};

struct ListenerLabel {
  Direction direction;
  std::string name;
  bool authorizes = true;  // false: a capture port's listener (its rules authorize)
};

// CaptureDecisionLabel names one transparent-mode decision counter: a destination rule (or
// "(none)") or an inbound port ("8080", "default"), and what was done.
struct CaptureDecisionLabel {
  Direction direction;
  std::string rule;
  CaptureAction action;
};

// SidecarCollector exposes every sidecar metric (docs/metrics.md) by summing the workers' shards
// and reading the credential state, at scrape time, on the admin server's threads. The shards
// and the callback must outlive it. Thread-safe.
class SidecarCollector final : public prometheus::Collectable {
 public:
  SidecarCollector(std::vector<const WorkerCounters*> shards, std::vector<ListenerLabel> listeners,
                   std::vector<CaptureDecisionLabel> capture_decisions,
                   std::function<CredentialGauges()> credentials)
      : shards_(std::move(shards)),
        listeners_(std::move(listeners)),
        capture_decisions_(std::move(capture_decisions)),
        credentials_(std::move(credentials)) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::vector<const WorkerCounters*> shards_;
  std::vector<ListenerLabel> listeners_;
  std::vector<CaptureDecisionLabel> capture_decisions_;
  std::function<CredentialGauges()> credentials_;
};

}  // namespace meshtls::sidecar

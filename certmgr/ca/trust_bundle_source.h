#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/pki/certificate.h"

namespace meshtls::certmgr {

// TrustBundle is one immutable version of the roots a trust domain trusts.
struct TrustBundle {
  std::string trust_domain;
  std::vector<pki::Certificate> roots;
  uint64_t sequence = 0;
};

// TrustBundleSource holds the current trust bundle and tells subscribers when it changes.
// Thread-safe. Subscriber callbacks run on the thread that calls Update(), outside the lock;
// they must be quick (WatchTrustBundle streams just schedule a write).
class TrustBundleSource {
 public:
  TrustBundleSource(std::string trust_domain, std::vector<pki::Certificate> roots,
                    uint64_t sequence = 1);

  std::shared_ptr<const TrustBundle> Current() const;
  // UpdateTo publishes roots with a given sequence (shared CA state: every replica agrees);
  // a sequence not above the current one is ignored.
  void UpdateTo(std::vector<pki::Certificate> roots, uint64_t sequence);

  using SubscriptionId = uint64_t;
  SubscriptionId Subscribe(std::function<void()> on_change);
  void Unsubscribe(SubscriptionId id);
  size_t subscriber_count() const;

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const TrustBundle> current_ ABSL_GUARDED_BY(mu_);
  std::map<SubscriptionId, std::shared_ptr<std::function<void()>>> subscribers_
      ABSL_GUARDED_BY(mu_);
  SubscriptionId next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace meshtls::certmgr

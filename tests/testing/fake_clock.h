#pragma once

#include "absl/synchronization/mutex.h"
#include "common/base/clock.h"

namespace meshtls::testing {

// FakeClock is a Clock that only moves when told to. Thread-safe.
class FakeClock final : public base::Clock {
 public:
  explicit FakeClock(absl::Time start) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace meshtls::testing

#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace meshtls::base {

// Clock is the source of "now" for everything that decides on time (certificate validity,
// renewal schedules), so tests can drive time with a fake. Implementations are thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

// RealClock reads the system clock. Thread-safe; the instance lives for the whole process.
class RealClock final : public Clock {
 public:
  static Clock& Get() {
    static RealClock* clock = new RealClock();
    return *clock;
  }
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace meshtls::base

#pragma once

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace meshtls::certmgr {

// IssuancePolicy bounds the workload certificates certmgr signs. A plain value.
struct IssuancePolicy {
  absl::Duration default_ttl = absl::Hours(24);  // when the request names none
  absl::Duration max_ttl = absl::Hours(24);      // requests above it are capped
  absl::Duration min_ttl = absl::Seconds(5);     // requests below it are raised
  absl::Duration backdate = absl::Minutes(2);    // NotBefore = now - backdate (clock skew)

  absl::Status Validate() const;
  // EffectiveTtl applies the default, the cap and the floor to a requested TTL.
  absl::Duration EffectiveTtl(std::optional<absl::Duration> requested) const;
};

}  // namespace meshtls::certmgr

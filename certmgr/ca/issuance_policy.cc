#include "certmgr/ca/issuance_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace meshtls::certmgr {

absl::Status IssuancePolicy::Validate() const {
  if (min_ttl <= absl::ZeroDuration() || max_ttl < min_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("issuance.max_ttl (", absl::FormatDuration(max_ttl), ") must be at least ",
                     absl::FormatDuration(min_ttl)));
  }
  if (default_ttl < min_ttl || default_ttl > max_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("issuance.default_ttl (", absl::FormatDuration(default_ttl),
                     ") must be between ", absl::FormatDuration(min_ttl), " and issuance.max_ttl (",
                     absl::FormatDuration(max_ttl), ")"));
  }
  if (backdate < absl::ZeroDuration() || backdate > absl::Hours(1)) {
    return absl::InvalidArgumentError("issuance.backdate must be between 0s and 1h");
  }
  return absl::OkStatus();
}

absl::Duration IssuancePolicy::EffectiveTtl(std::optional<absl::Duration> requested) const {
  if (!requested.has_value() || *requested <= absl::ZeroDuration()) {
    return default_ttl;
  }
  return std::clamp(*requested, min_ttl, max_ttl);
}

}  // namespace meshtls::certmgr

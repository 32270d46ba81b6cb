#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::pki {

// SpiffeId is a validated SPIFFE ID (spiffe://<trust-domain><path>), per the SPIFFE ID spec:
// lower-case "spiffe" scheme; trust domain of [a-z0-9.-_] (no port, user info or upper case);
// path of "/segment"s of [A-Za-z0-9.-_], none empty, "." or ".."; no query, fragment or
// trailing slash; at most 2048 bytes. Immutable value type.
class SpiffeId {
 public:
  static absl::StatusOr<SpiffeId> Parse(absl::string_view text);
  // ValidateTrustDomain checks a bare trust domain name ("example.org").
  static absl::Status ValidateTrustDomain(absl::string_view trust_domain);
  // ForWorkload builds spiffe://<td>/ns/<ns>/sa/<sa>, validating each part.
  static absl::StatusOr<SpiffeId> ForWorkload(absl::string_view trust_domain, absl::string_view ns,
                                              absl::string_view sa);

  const std::string& str() const { return text_; }
  absl::string_view trust_domain() const {
    return absl::string_view(text_).substr(kSchemeLength, trust_domain_length_);
  }
  // path() is "" for a trust-domain ID, else starts with '/'.
  absl::string_view path() const {
    return absl::string_view(text_).substr(kSchemeLength + trust_domain_length_);
  }
  bool operator==(const SpiffeId& other) const { return text_ == other.text_; }

  static constexpr size_t kSchemeLength = 9;  // "spiffe://"

 private:
  SpiffeId(std::string text, size_t trust_domain_length)
      : text_(std::move(text)), trust_domain_length_(trust_domain_length) {}
  std::string text_;
  size_t trust_domain_length_;
};

// SpiffeIdMatcher is one allow-list entry: an exact ID, or "<id>/*" matching every ID below
// <id> (at least one more path segment). Immutable; thread-safe.
class SpiffeIdMatcher {
 public:
  static absl::StatusOr<SpiffeIdMatcher> Parse(absl::string_view pattern);
  bool Matches(const SpiffeId& id) const;
  const std::string& pattern() const { return pattern_; }
  absl::string_view trust_domain() const { return base_.trust_domain(); }

 private:
  SpiffeIdMatcher(std::string pattern, SpiffeId base, bool is_prefix)
      : pattern_(std::move(pattern)), base_(std::move(base)), is_prefix_(is_prefix) {}
  std::string pattern_;
  SpiffeId base_;
  bool is_prefix_;
};

// MatchesAny is true when any matcher matches `id`.
bool MatchesAny(const std::vector<SpiffeIdMatcher>& matchers, const SpiffeId& id);

}  // namespace meshtls::pki

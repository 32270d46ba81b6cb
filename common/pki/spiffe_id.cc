#include "common/pki/spiffe_id.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace meshtls::pki {
namespace {

constexpr size_t kMaxIdLength = 2048;
constexpr size_t kMaxTrustDomainLength = 255;

bool IsTrustDomainChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}
bool IsPathChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

absl::Status ValidatePath(absl::string_view path) {
  if (path.empty()) {
    return absl::OkStatus();
  }
  if (path.front() != '/') {
    return absl::InvalidArgumentError("path must start with '/'");
  }
  size_t start = 1;
  while (true) {
    size_t end = path.find('/', start);
    absl::string_view segment =
        path.substr(start, end == absl::string_view::npos ? absl::string_view::npos : end - start);
    if (segment.empty()) {
      return absl::InvalidArgumentError(end == absl::string_view::npos
                                            ? "path has a trailing '/'"
                                            : "path has an empty segment ('//')");
    }
    if (segment == "." || segment == "..") {
      return absl::InvalidArgumentError("path has a '.' or '..' segment");
    }
    for (char c : segment) {
      if (!IsPathChar(c)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "path has the character '", std::string(1, c), "' (allowed: A-Z a-z 0-9 . - _)"));
      }
    }
    if (end == absl::string_view::npos) {
      return absl::OkStatus();
    }
    start = end + 1;
  }
}

}  // namespace

absl::Status SpiffeId::ValidateTrustDomain(absl::string_view td) {
  if (td.empty()) {
    return absl::InvalidArgumentError("trust domain is empty");
  }
  if (td.size() > kMaxTrustDomainLength) {
    return absl::InvalidArgumentError("trust domain is longer than 255 bytes");
  }
  for (char c : td) {
    if (c == ':') {
      return absl::InvalidArgumentError("trust domain must not have a port");
    }
    if (c == '@') {
      return absl::InvalidArgumentError("trust domain must not have user info");
    }
    if (c >= 'A' && c <= 'Z') {
      return absl::InvalidArgumentError("trust domain must be lower case");
    }
    if (!IsTrustDomainChar(c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trust domain has the character '", std::string(1, c), "' (allowed: a-z 0-9 . - _)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SpiffeId> SpiffeId::Parse(absl::string_view text) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text.substr(0, 256), "\" is not a SPIFFE ID: ", why));
  };
  if (text.size() > kMaxIdLength) {
    return invalid("longer than 2048 bytes");
  }
  if (!absl::StartsWith(text, "spiffe://")) {
    if (absl::StartsWithIgnoreCase(text, "spiffe://")) {
      return invalid("the scheme must be lower-case \"spiffe\"");
    }
    return invalid("must start with spiffe://");
  }
  absl::string_view rest = text.substr(kSchemeLength);
  if (rest.find_first_of("?#") != absl::string_view::npos) {
    return invalid("must not have a query or fragment");
  }
  size_t slash = rest.find('/');
  absl::string_view td = rest.substr(0, slash);
  absl::string_view path = slash == absl::string_view::npos ? "" : rest.substr(slash);
  if (absl::Status s = ValidateTrustDomain(td); !s.ok()) {
    return invalid(s.message());
  }
  if (absl::Status s = ValidatePath(path); !s.ok()) {
    return invalid(s.message());
  }
  return SpiffeId(std::string(text), td.size());
}

absl::StatusOr<SpiffeId> SpiffeId::ForWorkload(absl::string_view trust_domain, absl::string_view ns,
                                               absl::string_view sa) {
  for (absl::string_view part : {ns, sa}) {
    if (part.empty() || part.find('/') != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "namespace and service account must be single non-empty segments, not \"", part, "\""));
    }
  }
  return Parse(absl::StrCat("spiffe://", trust_domain, "/ns/", ns, "/sa/", sa));
}

absl::StatusOr<SpiffeIdMatcher> SpiffeIdMatcher::Parse(absl::string_view pattern) {
  bool is_prefix = absl::EndsWith(pattern, "/*");
  absl::string_view base_text = is_prefix ? pattern.substr(0, pattern.size() - 2) : pattern;
  if (base_text.find('*') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", pattern, "\": '*' is only allowed as a whole last segment (spiffe://td/ns/x/*)"));
  }
  absl::StatusOr<SpiffeId> base = SpiffeId::Parse(base_text);
  if (!base.ok()) {
    return base.status();
  }
  return SpiffeIdMatcher(std::string(pattern), *std::move(base), is_prefix);
}

bool SpiffeIdMatcher::Matches(const SpiffeId& id) const {
  if (!is_prefix_) {
    return id == base_;
  }
  // "<base>/*": id must be strictly below base, on a segment boundary.
  const std::string& b = base_.str();
  return id.str().size() > b.size() + 1 && absl::StartsWith(id.str(), b) &&
         id.str()[b.size()] == '/';
}

bool MatchesAny(const std::vector<SpiffeIdMatcher>& matchers, const SpiffeId& id) {
  for (const SpiffeIdMatcher& m : matchers) {
    if (m.Matches(id)) {
      return true;
    }
  }
  return false;
}

}  // namespace meshtls::pki

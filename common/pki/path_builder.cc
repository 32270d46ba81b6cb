#include "common/pki/path_builder.h"

#include <openssl/x509v3.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::pki {
namespace {

// SameEntity: the same subject and the same public key (one CA, whoever signed this copy).
bool SameEntity(X509* a, X509* b) {
  if (X509_NAME_cmp(X509_get_subject_name(a), X509_get_subject_name(b)) != 0) {
    return false;
  }
  EVP_PKEY* ka = X509_get0_pubkey(a);
  EVP_PKEY* kb = X509_get0_pubkey(b);
  return ka != nullptr && kb != nullptr && EVP_PKEY_eq(ka, kb) == 1;
}

struct Search {
  const std::vector<X509*>& intermediates;
  const std::vector<X509*>& anchors;
  const PathSearchLimits& limits;
  std::vector<std::vector<X509*>> paths;
  int issuer_checks = 0;

  bool Exhausted() const {
    return static_cast<int>(paths.size()) >= limits.max_paths ||
           issuer_checks >= limits.max_issuer_checks;
  }

  bool Issued(X509* issuer, X509* subject) {
    ++issuer_checks;
    return X509_check_issued(issuer, subject) == X509_V_OK;
  }

  // Extend finds the ways to finish `path` (which ends with a certificate still needing an
  // issuer): with an anchor at once (these are the shortest), then through each intermediate.
  void Extend(std::vector<X509*>& path) {
    X509* top = path.back();
    for (X509* anchor : anchors) {
      if (Exhausted()) {
        return;
      }
      if (Issued(anchor, top)) {
        path.push_back(anchor);
        paths.push_back(path);
        path.pop_back();
      }
    }
    // An intermediate needs room for itself and, above it, an anchor.
    if (static_cast<int>(path.size()) + 2 > limits.max_length) {
      return;
    }
    for (X509* candidate : intermediates) {
      if (Exhausted()) {
        return;
      }
      bool in_path = false;
      for (X509* c : path) {
        in_path = in_path || c == candidate || SameEntity(c, candidate);
      }
      if (in_path || !Issued(candidate, top)) {
        continue;
      }
      path.push_back(candidate);
      Extend(path);
      path.pop_back();
    }
  }
};

absl::Status Refuse(int index, int code, int* depth, int* x509_error, absl::string_view why) {
  *depth = index;
  *x509_error = code;
  return absl::UnauthenticatedError(why);
}

// ValidDnsName: RFC 1034 preferred name syntax as RFC 5280 uses it (letters, digits and
// hyphens in labels of 1-63 characters, no empty label, so no leading, trailing or double
// period), at most 253 characters; with `allow_wildcard`, a leftmost label of exactly "*".
// Underscores are let through: they are common in internal names (_service records, k8s-ish
// hostnames) and x509-limbo leaves them out of its selection for us.
bool ValidDnsName(absl::string_view name, bool allow_wildcard) {
  if (name.empty() || name.size() > 253) {
    return false;
  }
  std::vector<absl::string_view> labels = absl::StrSplit(name, '.');
  for (size_t i = 0; i < labels.size(); ++i) {
    absl::string_view label = labels[i];
    if (i == 0 && allow_wildcard && label == "*" && labels.size() > 1) {
      continue;
    }
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
      if (!ok) {
        return false;
      }
    }
  }
  return true;
}

// ValidMailbox: one '@', a non-empty local part without spaces, and a valid DNS domain.
bool ValidMailbox(absl::string_view address) {
  const size_t at = address.find('@');
  if (at == absl::string_view::npos || at == 0 ||
      address.find('@', at + 1) != absl::string_view::npos) {
    return false;
  }
  absl::string_view local = address.substr(0, at);
  for (char c : local) {
    if (c <= ' ' || c >= 0x7f) {
      return false;
    }
  }
  return ValidDnsName(address.substr(at + 1), /*allow_wildcard=*/false);
}

absl::string_view Ia5(const ASN1_IA5STRING* s) {
  return absl::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                           static_cast<size_t>(ASN1_STRING_length(s)));
}

// WildcardCovers: "*.example.com" covers "bar.example.com" (one label in place of the '*').
bool WildcardCovers(absl::string_view wildcard, absl::string_view host) {
  if (!absl::StartsWith(wildcard, "*.")) {
    return false;
  }
  absl::string_view base = wildcard.substr(1);  // ".example.com"
  if (host.size() <= base.size() ||
      !absl::EqualsIgnoreCase(host.substr(host.size() - base.size()), base)) {
    return false;
  }
  absl::string_view label = host.substr(0, host.size() - base.size());
  return !label.empty() && label.find('.') == absl::string_view::npos;
}

using NameConstraintsPtr = std::unique_ptr<NAME_CONSTRAINTS, OpenSslFree<NAME_CONSTRAINTS_free>>;

}  // namespace

std::vector<std::vector<X509*>> CandidatePaths(X509* leaf, const std::vector<X509*>& intermediates,
                                               const std::vector<X509*>& anchors,
                                               const PathSearchLimits& limits) {
  Search search{.intermediates = intermediates, .anchors = anchors, .limits = limits, .paths = {}};
  for (X509* anchor : anchors) {
    if (X509_cmp(anchor, leaf) == 0) {
      search.paths.push_back({anchor});
    }
  }
  std::vector<X509*> path = {leaf};
  search.Extend(path);
  return std::move(search.paths);
}

absl::Status CheckValidityInclusive(const std::vector<X509*>& path, time_t now, int* depth,
                                    int* x509_error) {
  for (size_t i = 0; i < path.size(); ++i) {
    // X509_cmp_time returns -1 when the certificate's time is before or equal to `now`, 1 when
    // it is after it (0 on a malformed time).
    time_t t = now;
    const int before = X509_cmp_time(X509_get0_notBefore(path[i]), &t);
    if (before == 0) {
      return Refuse(static_cast<int>(i), X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD, depth,
                    x509_error, "format error in certificate's notBefore field");
    }
    if (before > 0) {
      return Refuse(static_cast<int>(i), X509_V_ERR_CERT_NOT_YET_VALID, depth, x509_error,
                    "certificate is not yet valid");
    }
    // Expired when notAfter < now, that is notAfter <= now - 1 (times have whole seconds).
    time_t just_before = now - 1;
    const int after = X509_cmp_time(X509_get0_notAfter(path[i]), &just_before);
    if (after == 0) {
      return Refuse(static_cast<int>(i), X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD, depth,
                    x509_error, "format error in certificate's notAfter field");
    }
    if (after < 0) {
      return Refuse(static_cast<int>(i), X509_V_ERR_CERT_HAS_EXPIRED, depth, x509_error,
                    "certificate has expired");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckNameConstraintsProfile(const std::vector<X509*>& path, int* depth,
                                         int* x509_error) {
  bool dns_constrained = false;
  bool email_constrained = false;
  std::vector<std::string> excluded_dns;
  // From the anchor down to the leaf's issuer: each CA's constraints apply below it.
  for (size_t i = path.size(); i-- > 0;) {
    X509* cert = path[i];
    const bool is_ca = (X509_get_extension_flags(cert) & EXFLAG_CA) != 0;
    int critical = 0;
    NameConstraintsPtr nc(static_cast<NAME_CONSTRAINTS*>(
        X509_get_ext_d2i(cert, NID_name_constraints, &critical, nullptr)));
    if (X509_get_ext_by_NID(cert, NID_name_constraints, -1) >= 0 && !is_ca) {
      return Refuse(static_cast<int>(i), X509_V_ERR_INVALID_EXTENSION, depth, x509_error,
                    "name constraints in a certificate that is not a CA");
    }
    if (nc == nullptr) {
      continue;
    }
    for (STACK_OF(GENERAL_SUBTREE) * subtrees : {nc->permittedSubtrees, nc->excludedSubtrees}) {
      for (int j = 0; j < sk_GENERAL_SUBTREE_num(subtrees); ++j) {
        const GENERAL_NAME* base = sk_GENERAL_SUBTREE_value(subtrees, j)->base;
        if (base->type == GEN_DNS) {
          dns_constrained = true;
          absl::string_view name = Ia5(base->d.dNSName);
          if (!name.empty() && !ValidDnsName(name, /*allow_wildcard=*/false)) {
            return Refuse(static_cast<int>(i), X509_V_ERR_UNSUPPORTED_NAME_SYNTAX, depth,
                          x509_error,
                          absl::StrCat("name constraint \"", name, "\" is not a valid DNS name"));
          }
          if (subtrees == nc->excludedSubtrees) {
            excluded_dns.emplace_back(name);
          }
        } else if (base->type == GEN_EMAIL) {
          email_constrained = true;
        }
      }
    }
  }
  if (!dns_constrained && !email_constrained) {
    return absl::OkStatus();
  }
  // The names of every certificate below the constraining CAs (constraints do not apply to
  // a self-issued CA, but every non-anchor's names must be well-formed to be compared at all).
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    GeneralNamesPtr sans(static_cast<GENERAL_NAMES*>(
        X509_get_ext_d2i(path[i], NID_subject_alt_name, nullptr, nullptr)));
    for (int j = 0; sans != nullptr && j < sk_GENERAL_NAME_num(sans.get()); ++j) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(sans.get(), j);
      if (name->type == GEN_DNS && dns_constrained) {
        absl::string_view dns = Ia5(name->d.dNSName);
        if (!ValidDnsName(dns, /*allow_wildcard=*/i == 0)) {
          return Refuse(static_cast<int>(i), X509_V_ERR_UNSUPPORTED_NAME_SYNTAX, depth, x509_error,
                        absl::StrCat("subjectAltName \"", dns,
                                     "\" is not a valid DNS name under name constraints"));
        }
        for (const std::string& excluded : excluded_dns) {
          if (WildcardCovers(dns, excluded)) {
            return Refuse(static_cast<int>(i), X509_V_ERR_EXCLUDED_VIOLATION, depth, x509_error,
                          absl::StrCat("wildcard subjectAltName \"", dns,
                                       "\" covers the excluded name ", excluded));
          }
        }
      } else if (name->type == GEN_EMAIL && email_constrained) {
        absl::string_view mailbox = Ia5(name->d.rfc822Name);
        if (!ValidMailbox(mailbox)) {
          return Refuse(static_cast<int>(i), X509_V_ERR_UNSUPPORTED_NAME_SYNTAX, depth, x509_error,
                        absl::StrCat("subjectAltName \"", mailbox,
                                     "\" is not a valid mailbox under name constraints"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace meshtls::pki

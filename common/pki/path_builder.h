#pragma once

// Certification path building and the RFC 5280 checks OpenSSL 3.0 leaves out, for
// ChainVerifier. OpenSSL builds one path and stops at its first failure; a peer's chain may
// offer several (cross-signed intermediates, a root sent among the intermediates), of which
// only some are valid. CandidatePaths lists them, and ChainVerifier validates each.

#include <openssl/x509.h>

#include <vector>

#include "absl/status/status.h"

namespace meshtls::pki {

// PathSearchLimits bound the search, so a hostile chain (many cross-signed intermediates, a
// cycle) costs a bounded amount of work: no more than `max_length` certificates in a path
// (anchor included), `max_paths` complete paths, `max_issuer_checks` issuer comparisons.
struct PathSearchLimits {
  int max_length = 8;
  int max_paths = 16;
  int max_issuer_checks = 512;
};

// CandidatePaths returns the paths from `leaf` through `intermediates` to one of `anchors`,
// each leaf first and ending with its anchor (a one-element path when the leaf is itself an
// anchor). At every step anchors are tried before intermediates, and shorter paths come first.
// A certificate whose subject and public key already appear in a path is not added to it again
// (RFC 4158 loop avoidance). Only names, key identifiers and keyCertSign are compared here
// (X509_check_issued); signatures and everything else are ChainVerifier's job. The pointers
// are borrowed from the inputs.
std::vector<std::vector<X509*>> CandidatePaths(X509* leaf, const std::vector<X509*>& intermediates,
                                               const std::vector<X509*>& anchors,
                                               const PathSearchLimits& limits = {});

// CheckValidityInclusive checks notBefore <= now <= notAfter for every certificate of `path`
// (RFC 5280 4.1.2.5: both ends inclusive; OpenSSL treats the notAfter second as expired). On
// failure `*depth` is the index of the first certificate outside its validity and `*x509_error`
// is X509_V_ERR_CERT_NOT_YET_VALID or X509_V_ERR_CERT_HAS_EXPIRED.
absl::Status CheckValidityInclusive(const std::vector<X509*>& path, time_t now, int* depth,
                                    int* x509_error);

// CheckNameConstraintsProfile applies the RFC 5280 4.2.1.10 rules OpenSSL 3.0 does not, on top
// of its own name-constraint matching: the extension only in CA certificates; dNSName
// constraints that are valid DNS names (no leading period); under DNS or email constraints,
// subjectAltNames that are valid DNS names or mailboxes (an invalid name is in no namespace,
// so it cannot be shown to be permitted); and a wildcard dNSName (*.example.com) refused when
// an excluded subtree names one of the hosts it covers (bar.example.com).
absl::Status CheckNameConstraintsProfile(const std::vector<X509*>& path, int* depth,
                                         int* x509_error);

}  // namespace meshtls::pki

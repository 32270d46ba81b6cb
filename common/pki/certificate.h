#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/pki/openssl_ptr.h"

namespace meshtls::pki {

// Certificate is a shared, immutable handle to one X509 (copies share it). Thread-safe for
// concurrent reads once built.
class Certificate {
 public:
  static absl::StatusOr<Certificate> FromDer(absl::string_view der);
  // FromPem parses the first certificate of a PEM text.
  static absl::StatusOr<Certificate> FromPem(absl::string_view pem);
  // Wrap takes ownership of `cert`.
  static Certificate Wrap(X509Ptr cert) { return Certificate(std::move(cert)); }

  Certificate(const Certificate& other) : cert_(UpRef(other.cert_.get())) {}
  Certificate& operator=(const Certificate& other) {
    cert_ = UpRef(other.cert_.get());
    return *this;
  }
  Certificate(Certificate&&) = default;
  Certificate& operator=(Certificate&&) = default;

  X509* get() const { return cert_.get(); }
  std::string ToDer() const;
  std::string ToPem() const;

  absl::Time not_before() const;
  absl::Time not_after() const;
  // UriSans returns every URI subjectAltName, in order.
  std::vector<std::string> UriSans() const;
  // SerialHex returns the serial number as lower-case hex.
  std::string SerialHex() const;
  // Sha256Fingerprint returns the SHA-256 of the DER as lower-case hex.
  std::string Sha256Fingerprint() const;
  // SubjectText returns the subject in RFC 2253 form ("" for an empty subject).
  std::string SubjectText() const;
  bool IsCa() const;
  // MatchesKey is true when `key` is the private key for this certificate's public key.
  bool MatchesKey(EVP_PKEY* key) const;

 private:
  explicit Certificate(X509Ptr cert) : cert_(std::move(cert)) {}
  X509Ptr cert_;
};

// ParsePemChain parses every certificate in a PEM text (at least one), in order.
absl::StatusOr<std::vector<Certificate>> ParsePemChain(absl::string_view pem);
// ChainToPem concatenates the PEM of each certificate.
std::string ChainToPem(const std::vector<Certificate>& chain);

// Asn1TimeToAbsl converts an ASN1_TIME; an unparsable time maps to InfinitePast.
absl::Time Asn1TimeToAbsl(const ASN1_TIME* t);

}  // namespace meshtls::pki

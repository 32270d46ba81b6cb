#include "common/pki/certificate.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/pki/openssl_error.h"

namespace meshtls::pki {
namespace {

constexpr size_t kMaxCertificateBytes = 64 * 1024;
constexpr size_t kMaxChainCertificates = 16;

}  // namespace

absl::StatusOr<Certificate> Certificate::FromDer(absl::string_view der) {
  if (der.empty() || der.size() > kMaxCertificateBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("certificate DER of ", der.size(), " bytes (want 1..65536)"));
  }
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (cert == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "not a DER certificate");
  }
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return absl::InvalidArgumentError("trailing bytes after a DER certificate");
  }
  return Certificate(std::move(cert));
}

absl::StatusOr<Certificate> Certificate::FromPem(absl::string_view pem) {
  auto chain = ParsePemChain(pem);
  if (!chain.ok()) {
    return chain.status();
  }
  return std::move((*chain)[0]);
}

std::string Certificate::ToDer() const {
  unsigned char* der = nullptr;
  int len = i2d_X509(cert_.get(), &der);
  if (len <= 0) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

std::string Certificate::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || PEM_write_bio_X509(bio.get(), cert_.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

absl::Time Asn1TimeToAbsl(const ASN1_TIME* t) {
  struct tm tm_value = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm_value) != 1) {
    ERR_clear_error();
    return absl::InfinitePast();
  }
  absl::CivilSecond civil(tm_value.tm_year + 1900, tm_value.tm_mon + 1, tm_value.tm_mday,
                          tm_value.tm_hour, tm_value.tm_min, tm_value.tm_sec);
  return absl::FromCivil(civil, absl::UTCTimeZone());
}

absl::Time Certificate::not_before() const { return Asn1TimeToAbsl(X509_get0_notBefore(get())); }
absl::Time Certificate::not_after() const { return Asn1TimeToAbsl(X509_get0_notAfter(get())); }

std::vector<std::string> Certificate::UriSans() const {
  std::vector<std::string> out;
  GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(get(), NID_subject_alt_name, nullptr, nullptr)));
  if (names == nullptr) {
    ERR_clear_error();
    return out;
  }
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type == GEN_URI) {
      const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
      out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                       static_cast<size_t>(ASN1_STRING_length(uri)));
    }
  }
  return out;
}

std::string Certificate::SerialHex() const {
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(get()), nullptr));
  if (bn == nullptr) {
    ERR_clear_error();
    return {};
  }
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex == nullptr ? "" : absl::AsciiStrToLower(hex);
  OPENSSL_free(hex);
  return out;
}

std::string Certificate::Sha256Fingerprint() const {
  std::string der = ToDer();
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(der.data()), der.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

std::string Certificate::SubjectText() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr ||
      X509_NAME_print_ex(bio.get(), X509_get_subject_name(get()), 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return {};
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

bool Certificate::IsCa() const { return X509_check_ca(get()) != 0; }

bool Certificate::MatchesKey(EVP_PKEY* key) const {
  bool match = X509_check_private_key(get(), key) == 1;
  ERR_clear_error();
  return match;
}

absl::StatusOr<std::vector<Certificate>> ParsePemChain(absl::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (bio == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "BIO_new_mem_buf");
  }
  std::vector<Certificate> out;
  while (true) {
    X509* raw = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (raw == nullptr) {
      unsigned long err = ERR_peek_last_error();
      if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE &&
          !out.empty()) {
        ERR_clear_error();  // clean end of input
        break;
      }
      if (out.empty()) {
        return OpenSslError(absl::StatusCode::kInvalidArgument, "no PEM certificate found");
      }
      return OpenSslError(absl::StatusCode::kInvalidArgument,
                          absl::StrCat("PEM certificate #", out.size() + 1, " is malformed"));
    }
    out.push_back(Certificate::Wrap(X509Ptr(raw)));
    if (out.size() > kMaxChainCertificates) {
      return absl::InvalidArgumentError(
          absl::StrCat("more than ", kMaxChainCertificates, " certificates in one PEM file"));
    }
  }
  return out;
}

std::string ChainToPem(const std::vector<Certificate>& chain) {
  std::string out;
  for (const Certificate& c : chain) {
    out += c.ToPem();
  }
  return out;
}

}  // namespace meshtls::pki

#include "common/pki/certificate_builder.h"

#include <arpa/inet.h>
#include <openssl/rand.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/pki/openssl_error.h"

namespace meshtls::pki {
namespace {

absl::Status AddNameEntry(X509_NAME* name, const char* field, const std::string& value) {
  if (value.empty()) {
    return absl::OkStatus();
  }
  if (X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(value.data()),
                                 static_cast<int>(value.size()), -1, 0) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, absl::StrCat("subject ", field));
  }
  return absl::OkStatus();
}

absl::Status AddGeneralName(GENERAL_NAMES* names, int type, const std::string& value) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  if (name == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "GENERAL_NAME_new");
  }
  if (type == GEN_IPADD) {
    unsigned char buf[16];
    int len = 0;
    if (inet_pton(AF_INET, value.c_str(), buf) == 1) {
      len = 4;
    } else if (inet_pton(AF_INET6, value.c_str(), buf) == 1) {
      len = 16;
    } else {
      GENERAL_NAME_free(name);
      return absl::InvalidArgumentError(absl::StrCat("\"", value, "\" is not an IP address"));
    }
    ASN1_OCTET_STRING* ip = ASN1_OCTET_STRING_new();
    if (ip == nullptr || ASN1_OCTET_STRING_set(ip, buf, len) != 1) {
      ASN1_OCTET_STRING_free(ip);
      GENERAL_NAME_free(name);
      return OpenSslError(absl::StatusCode::kInternal, "IP SAN");
    }
    GENERAL_NAME_set0_value(name, GEN_IPADD, ip);
  } else {
    ASN1_IA5STRING* text = ASN1_IA5STRING_new();
    if (text == nullptr ||
        ASN1_STRING_set(text, value.data(), static_cast<int>(value.size())) != 1) {
      ASN1_IA5STRING_free(text);
      GENERAL_NAME_free(name);
      return OpenSslError(absl::StatusCode::kInternal, "SAN string");
    }
    GENERAL_NAME_set0_value(name, type, text);
  }
  if (sk_GENERAL_NAME_push(names, name) <= 0) {
    GENERAL_NAME_free(name);
    return OpenSslError(absl::StatusCode::kInternal, "sk_GENERAL_NAME_push");
  }
  return absl::OkStatus();
}

absl::Status AddConfExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError(absl::StatusCode::kInternal,
                        absl::StrCat("extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

absl::Status SetTime(ASN1_TIME* field, absl::Time t) {
  if (ASN1_TIME_set(field, absl::ToTimeT(t)) == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "certificate validity time");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Certificate> BuildCertificate(const CertificateProfile& profile,
                                             EVP_PKEY* subject_key, const Certificate* issuer,
                                             EVP_PKEY* issuer_key) {
  X509Ptr cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_new");
  }
  // Serial: 128 random bits, top bit cleared so the DER INTEGER stays positive and <= 20 bytes.
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof(serial_bytes)) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "RAND_bytes");
  }
  serial_bytes[0] &= 0x7f;
  serial_bytes[0] |= 0x01;  // never zero, never shorter than 16 bytes
  BignumPtr serial_bn(BN_bin2bn(serial_bytes, sizeof(serial_bytes), nullptr));
  if (serial_bn == nullptr ||
      BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "serial number");
  }
  X509NamePtr subject(X509_NAME_new());
  if (subject == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_NAME_new");
  }
  MESHTLS_RETURN_IF_ERROR(AddNameEntry(subject.get(), "O", profile.organization));
  MESHTLS_RETURN_IF_ERROR(AddNameEntry(subject.get(), "CN", profile.common_name));
  if (X509_set_subject_name(cert.get(), subject.get()) != 1 ||
      X509_set_issuer_name(
          cert.get(), issuer == nullptr ? subject.get() : X509_get_subject_name(issuer->get())) !=
          1 ||
      X509_set_pubkey(cert.get(), subject_key) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "certificate names or key");
  }
  MESHTLS_RETURN_IF_ERROR(SetTime(X509_getm_notBefore(cert.get()), profile.not_before));
  MESHTLS_RETURN_IF_ERROR(SetTime(X509_getm_notAfter(cert.get()), profile.not_after));

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer == nullptr ? cert.get() : issuer->get(), cert.get(), nullptr, nullptr,
                 0);
  if (profile.include_basic_constraints) {
    std::string bc = profile.is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE";
    if (profile.is_ca && profile.path_length.has_value()) {
      absl::StrAppend(&bc, ",pathlen:", *profile.path_length);
    }
    MESHTLS_RETURN_IF_ERROR(AddConfExtension(cert.get(), &ctx, NID_basic_constraints, bc));
  }
  if (profile.include_key_usage) {
    std::string ku = "critical";
    if (profile.digital_signature) ku += ",digitalSignature";
    if (profile.key_cert_sign) ku += ",keyCertSign";
    if (profile.crl_sign) ku += ",cRLSign";
    MESHTLS_RETURN_IF_ERROR(AddConfExtension(cert.get(), &ctx, NID_key_usage, ku));
  }
  if (profile.server_auth || profile.client_auth) {
    std::string eku;
    if (profile.server_auth) eku += "serverAuth";
    if (profile.client_auth) eku += eku.empty() ? "clientAuth" : ",clientAuth";
    MESHTLS_RETURN_IF_ERROR(AddConfExtension(cert.get(), &ctx, NID_ext_key_usage, eku));
  }
  MESHTLS_RETURN_IF_ERROR(AddConfExtension(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  if (issuer != nullptr) {
    MESHTLS_RETURN_IF_ERROR(
        AddConfExtension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  }
  if (!profile.uri_sans.empty() || !profile.dns_sans.empty() || !profile.ip_sans.empty()) {
    GeneralNamesPtr names(sk_GENERAL_NAME_new_null());
    if (names == nullptr) {
      return OpenSslError(absl::StatusCode::kInternal, "sk_GENERAL_NAME_new_null");
    }
    for (const std::string& uri : profile.uri_sans) {
      MESHTLS_RETURN_IF_ERROR(AddGeneralName(names.get(), GEN_URI, uri));
    }
    for (const std::string& dns : profile.dns_sans) {
      MESHTLS_RETURN_IF_ERROR(AddGeneralName(names.get(), GEN_DNS, dns));
    }
    for (const std::string& ip : profile.ip_sans) {
      MESHTLS_RETURN_IF_ERROR(AddGeneralName(names.get(), GEN_IPADD, ip));
    }
    if (X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, names.get(),
                          profile.san_critical ? 1 : 0, X509V3_ADD_DEFAULT) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "subjectAltName");
    }
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "signing the certificate");
  }
  return Certificate::Wrap(std::move(cert));
}

}  // namespace meshtls::pki

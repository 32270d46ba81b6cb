#include "sidecar/tls/handshake_classifier.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "absl/strings/str_cat.h"

namespace meshtls::sidecar {
namespace {

HandshakeResult FromX509Error(int e) {
  switch (e) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return HandshakeResult::kCertificateExpired;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return HandshakeResult::kCertificateNotYetValid;
    case X509_V_ERR_CERT_REVOKED:
      return HandshakeResult::kCertificateRevoked;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_CERT_UNTRUSTED:
      return HandshakeResult::kUnknownAuthority;
    default:
      return HandshakeResult::kBadCertificate;
  }
}

// FromReason maps an OpenSSL SSL-library reason (our own error, or the alert the peer sent).
bool FromReason(int reason, HandshakeResult& out) {
  switch (reason) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
      out = HandshakeResult::kNoPeerCertificate;
      return true;
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
      out = HandshakeResult::kCertificateExpired;
      return true;
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
      out = HandshakeResult::kUnknownAuthority;
      return true;
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
      out = HandshakeResult::kCertificateRevoked;
      return true;
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      out = HandshakeResult::kBadCertificate;
      return true;
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      out = HandshakeResult::kIdentityDenied;
      return true;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
      out = HandshakeResult::kProtocolVersion;
      return true;
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SHARED_GROUPS:
    case SSL_R_NO_SUITABLE_KEY_SHARE:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
    case SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS:
    case SSL_R_NO_CIPHERS_AVAILABLE:
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_TLSV1_ALERT_INSUFFICIENT_SECURITY:
      out = HandshakeResult::kNoSharedCipher;
      return true;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_UNKNOWN_PROTOCOL:
    // TLS framing, but records or handshake messages no TLS peer sends: oversized or short
    // records, a record type out of place, malformed messages and extensions.
    case SSL_R_DATA_LENGTH_TOO_LONG:
    case SSL_R_ENCRYPTED_LENGTH_TOO_LONG:
    case SSL_R_RECORD_TOO_SMALL:
    case SSL_R_BAD_RECORD_TYPE:
    case SSL_R_UNEXPECTED_RECORD:
    case SSL_R_UNEXPECTED_MESSAGE:
    case SSL_R_NOT_ON_RECORD_BOUNDARY:
    case SSL_R_CCS_RECEIVED_EARLY:
    case SSL_R_BAD_CHANGE_CIPHER_SPEC:
    case SSL_R_EXCESSIVE_MESSAGE_SIZE:
    case SSL_R_LENGTH_MISMATCH:
    case SSL_R_LENGTH_TOO_SHORT:
    case SSL_R_BAD_LENGTH:
    case SSL_R_BAD_PACKET_LENGTH:
    case SSL_R_BAD_PACKET:
    case SSL_R_BAD_LEGACY_VERSION:
    case SSL_R_BAD_EXTENSION:
    case SSL_R_PARSE_TLSEXT:
    case SSL_R_BAD_KEY_SHARE:
    case SSL_R_BAD_ECPOINT:
    case SSL_R_BAD_DATA:
    case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
    case SSL_R_TOO_MANY_WARN_ALERTS:
      out = HandshakeResult::kNotTls;
      return true;
    case SSL_R_UNEXPECTED_EOF_WHILE_READING:
      out = HandshakeResult::kPeerClosed;
      return true;
    default:
      return false;
  }
}

// DrainErrors empties the thread's OpenSSL error queue into its first SSL-library reason (0 if
// none) and the text of every entry, for the log line.
void DrainErrors(int& ssl_reason, std::string& reasons) {
  ssl_reason = 0;
  unsigned long code = 0;
  while ((code = ERR_get_error()) != 0) {
    if (ssl_reason == 0 && ERR_GET_LIB(code) == ERR_LIB_SSL) {
      ssl_reason = ERR_GET_REASON(code);
    }
    const char* text = ERR_reason_error_string(code);
    if (!reasons.empty()) {
      reasons += "; ";
    }
    reasons += text != nullptr ? text : absl::StrCat("error ", code);
  }
}

}  // namespace

HandshakeFailure ClassifyHandshakeFailure(int ssl_error, const PeerCheck& check) {
  HandshakeFailure out;
  int ssl_reason = 0;
  std::string reasons;
  DrainErrors(ssl_reason, reasons);
  if (check.identity_denied) {
    out.result = HandshakeResult::kIdentityDenied;
    out.reason = check.detail;
    return out;
  }
  if (check.x509_error != X509_V_OK) {
    out.result = FromX509Error(check.x509_error);
    out.reason = check.detail;
    return out;
  }
  out.reason = reasons;
  if (ssl_reason != 0 && FromReason(ssl_reason, out.result)) {
    return out;
  }
  if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
    out.result = HandshakeResult::kPeerClosed;
    if (out.reason.empty()) {
      out.reason = "the peer closed the connection during the handshake";
    }
    return out;
  }
  out.result = HandshakeResult::kInternal;
  if (out.reason.empty()) {
    out.reason = absl::StrCat("SSL error ", ssl_error);
  }
  return out;
}

std::optional<HandshakeFailure> ClassifyRefusalAfterHandshake() {
  int ssl_reason = 0;
  std::string reasons;
  DrainErrors(ssl_reason, reasons);
  HandshakeFailure out;
  out.reason = absl::StrCat("the server refused this sidecar after the handshake: ", reasons);
  switch (ssl_reason) {
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
      out.result = HandshakeResult::kBadCertificate;
      return out;
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      FromReason(ssl_reason, out.result);
      return out;
    default:
      return std::nullopt;
  }
}

}  // namespace meshtls::sidecar

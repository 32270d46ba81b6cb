#pragma once

#include <array>
#include <cstdint>

// The outcome of one TLS handshake, as the handshake classifier decides it. The names are the
// `result` label of meshtls_tls_handshakes_total (public API: dashboards and alerts use them).

namespace meshtls::sidecar {

// HandshakeResult is the `result` of meshtls_tls_handshakes_total.
enum class HandshakeResult : uint8_t {
  kSuccess,
  kNoPeerCertificate,
  kCertificateExpired,
  kCertificateNotYetValid,
  kUnknownAuthority,
  kBadCertificate,
  kCertificateRevoked,
  kIdentityDenied,
  kProtocolVersion,
  kNoSharedCipher,
  kTimeout,
  kPeerClosed,
  kNotTls,
  kInternal,
};
inline constexpr int kHandshakeResultCount = 14;
inline constexpr std::array<const char*, kHandshakeResultCount> kHandshakeResultNames = {
    "success",
    "no_peer_certificate",
    "certificate_expired",
    "certificate_not_yet_valid",
    "unknown_authority",
    "bad_certificate",
    "certificate_revoked",
    "identity_denied",
    "protocol_version",
    "no_shared_cipher",
    "timeout",
    "peer_closed",
    "not_tls",
    "internal"};

}  // namespace meshtls::sidecar

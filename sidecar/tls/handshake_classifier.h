#pragma once

#include <optional>
#include <string>

#include "sidecar/tls/handshake_result.h"
#include "sidecar/tls/peer_authorizer.h"

namespace meshtls::sidecar {

// HandshakeFailure is why one handshake failed: its metric label and a human reason.
struct HandshakeFailure {
  HandshakeResult result = HandshakeResult::kInternal;
  std::string reason;
};

// ClassifyHandshakeFailure reads the calling thread's OpenSSL error queue (and drains it),
// the SSL_get_error() code and the connection's PeerCheck, and names the failure: our own
// verification verdict first, then the peer's alert, then protocol errors, then a peer that
// simply went away. `internal` is left for what none of these explain (a bug).
HandshakeFailure ClassifyHandshakeFailure(int ssl_error, const PeerCheck& check);

// ClassifyRefusalAfterHandshake names a failed read on an outbound TLS 1.3 connection whose
// handshake completed on our side but whose server has not yet been heard from: in TLS 1.3 the
// server judges the client's certificate after the client's side of the handshake is done, so
// a refusal arrives as the alert on the first read. Reads (and drains) the calling thread's
// OpenSSL error queue. Returns the result the alert names, as ClassifyHandshakeFailure would
// have during the handshake (`access_denied` is `identity_denied`, `certificate_required` is
// `no_peer_certificate`, `unknown_ca` is `unknown_authority`, ...; a bare `handshake_failure`
// is `bad_certificate`: the server refused our certificate without saying why), or nullopt
// when the failure is not such an alert (a reset, a truncation: a relay failure).
std::optional<HandshakeFailure> ClassifyRefusalAfterHandshake();

}  // namespace meshtls::sidecar

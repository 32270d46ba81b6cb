#pragma once

#include <string>

#include "sidecar/metrics/labels.h"
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

}  // namespace meshtls::sidecar

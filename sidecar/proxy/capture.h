#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/net/cidr.h"
#include "common/net/socket.h"
#include "sidecar/metrics/labels.h"

// Transparent mode's runtime: what a capture listener decides for each connection the packet
// filter redirected to it. Built once by the server from the `transparent` config section,
// immutable afterwards, shared read-only by every worker.

namespace meshtls::sidecar {

struct ListenerRuntime;

// OriginalDestination is where a redirected connection was going before the packet filter sent
// it to us: getsockopt SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6), read from the
// connection's own conntrack entry. NotFound when the connection was not redirected (it came to
// the capture port directly). Each capture port has one socket per family, so an accepted
// socket's family is its connection's.
absl::StatusOr<net::SocketAddress> OriginalDestination(int fd);

// IsSameAddress: the same IP and port (a connection whose original destination is the socket's
// own local address reached the capture port directly: relaying it would loop).
bool IsSameAddress(const net::SocketAddress& a, const net::SocketAddress& b);
uint16_t PortOf(const net::SocketAddress& address);
// LoopbackAddress is 127.0.0.1:<port>, where inbound capture delivers to the app.
net::SocketAddress LoopbackAddress(uint16_t port);

// ClientHelloPrefix says what a connection's first bytes are: a TLS handshake record (type 22,
// version 3.x, as every ClientHello starts), something else, or too few bytes to tell.
enum class FirstBytes { kTlsHandshake, kOther, kNeedMore };
FirstBytes ClassifyFirstBytes(absl::string_view bytes);

// CaptureRule is one destination rule. `listener` is the rule's own runtime (its name and
// authz counters; for kMesh, the authorizer of `expect`); `decision` indexes
// meshtls_capture_decisions_total.
struct CaptureRule {
  std::string name;
  std::vector<net::Cidr> networks;  // empty: any address
  std::vector<uint16_t> ports;      // empty: any port
  CaptureAction action = CaptureAction::kDeny;
  const ListenerRuntime* listener = nullptr;
  size_t decision = 0;

  bool Matches(absl::string_view address_bytes, uint16_t port) const;
};

// OutboundCapture is transparent.outbound: the first rule that matches decides; none matching
// is a deny, counted under `no_match_decision`.
struct OutboundCapture {
  std::vector<CaptureRule> rules;
  size_t no_match_decision = 0;
  // Match returns the deciding rule, or null when none matches.
  const CaptureRule* Match(const net::SocketAddress& destination) const;
};

// InboundPort is how transparent.inbound treats one app port (or, as `default_port`, every
// port without its own entry). `listener` carries the port's allow-list and authz counters.
struct InboundPort {
  uint16_t port = 0;  // 0 for the default
  bool permissive = false;
  const ListenerRuntime* listener = nullptr;
  size_t mesh_decision = 0;
  size_t plaintext_decision = 0;  // permissive: plain text let through
  size_t deny_decision = 0;       // strict: plain text refused
};

// InboundCapture is transparent.inbound. `own_ports` are the sidecar's own (admin, explicit
// inbound listeners, the capture ports): a connection whose original port is one of them is
// refused, never forwarded to 127.0.0.1 where the sidecar itself listens.
struct InboundCapture {
  InboundPort default_port;
  std::vector<InboundPort> ports;
  std::vector<uint16_t> own_ports;
  // The pooled transport's port (15008; 0: none): a connection to it must be mutual TLS with
  // ALPN h2, and its streams are authorized by the ports they name. `pooled` carries its
  // decisions and its handshake policy (any identity of the trust domain).
  uint16_t pooled_port = 0;
  InboundPort pooled;

  const InboundPort& For(uint16_t port) const;
  bool IsOwnPort(uint16_t port) const;
};

}  // namespace meshtls::sidecar

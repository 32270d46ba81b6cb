#pragma once

#include <array>
#include <cstdint>

#include "sidecar/tls/handshake_result.h"

// The sidecar's metric label vocabulary. These names are public API: dashboards,
// alert rules and README list them.

namespace meshtls::sidecar {

enum class Direction : uint8_t { kInbound = 0, kOutbound = 1 };
inline constexpr int kDirectionCount = 2;
inline constexpr std::array<const char*, kDirectionCount> kDirectionNames = {"inbound", "outbound"};

// RefusedReason is the `reason` of meshtls_connections_refused_total: connections closed
// before any handshake.
// Transparent mode adds: a destination rule (or no rule) denied the connection; plain text
// reached a strict inbound port; the original destination is the sidecar itself (a connection
// made to a capture port directly, or one that would loop); the connection reached a capture
// port without being redirected there, so it has no original destination. `pooled_only`: a TLS
// connection to the pooled port (15008) that selected neither ALPN meshtls-h2 nor h2.
enum class RefusedReason : uint8_t {
  kNoCredentials,
  kCertificateExpired,
  kMaxConnections,
  kUpstreamUnavailable,
  kDeniedByRule,
  kPlaintextRefused,
  kCaptureLoop,
  kNoOriginalDestination,
  kPooledOnly
};
inline constexpr int kRefusedReasonCount = 9;
inline constexpr std::array<const char*, kRefusedReasonCount> kRefusedReasonNames = {
    "no_credentials",       "certificate_expired",     "max_connections",
    "upstream_unavailable", "denied_by_rule",          "plaintext_refused",
    "capture_loop",         "no_original_destination", "pooled_only"};

// CaptureAction is the `action` of meshtls_capture_decisions_total: what transparent mode did
// with a captured connection. Outbound: by destination rule, mutual TLS to the original
// destination (`mesh`), plain TCP to it (`passthrough`) or a reset (`deny`). Inbound: by port,
// mutual TLS (`mesh`), plain text let through on a permissive port (`plaintext`), or plain text
// refused on a strict one (`deny`).
enum class CaptureAction : uint8_t { kMesh, kPassthrough, kDeny, kPlaintext };
inline constexpr int kCaptureActionCount = 4;
inline constexpr std::array<const char*, kCaptureActionCount> kCaptureActionNames = {
    "mesh", "passthrough", "deny", "plaintext"};

// The `result` of meshtls_dns_lookups_total, by dns::LookupOutcome (the same order): a DNS
// lookup that found addresses, found no such name (or no address), timed out or failed
// otherwise; an answer from the worker's cache (positive or negative); a join onto a lookup of
// the same name already in flight.
inline constexpr int kDnsLookupResultCount = 6;
inline constexpr std::array<const char*, kDnsLookupResultCount> kDnsLookupResultNames = {
    "success", "nxdomain", "timeout", "error", "cache_hit", "coalesced"};

// StreamResult is the `result` of meshtls_pooled_streams_total: how an app connection carried
// as a pooled stream (HTTP/2 CONNECT) got on. `success`: the peer sidecar connected it to its
// app (200). Inbound refusals, each answered with an HTTP status: `forbidden_target` (403: the
// CONNECT names something other than this pod's app, or one of the sidecar's own ports),
// `identity_denied` (403: the peer's identity is not allowed on the target port), `malformed`
// (400: not a CONNECT, or no usable authority), `max_connections` (503: over
// limits.max_connections), `app_unavailable` (502: the app refused or did not answer; the
// outbound side counts a 502 from its peer here too). `refused`: inbound, a request beyond the
// stream limit (REFUSED_STREAM, by meshtls or nghttp2); outbound, the peer answered another
// status, or refused the stream twice. `connection_failed`: no pooled connection
// could be opened to the peer, or it failed before the stream was answered. `timeout`: no stream
// could be opened, or no answer came, within limits.connect_timeout. `reset`: the stream was
// reset before it was answered (a peer or an app gone).
enum class StreamResult : uint8_t {
  kSuccess,
  kForbiddenTarget,
  kIdentityDenied,
  kMalformed,
  kMaxConnections,
  kAppUnavailable,
  kRefused,
  kConnectionFailed,
  kTimeout,
  kReset
};
inline constexpr int kStreamResultCount = 10;
inline constexpr std::array<const char*, kStreamResultCount> kStreamResultNames = {
    "success",         "forbidden_target", "identity_denied",   "malformed", "max_connections",
    "app_unavailable", "refused",          "connection_failed", "timeout",   "reset"};

// Stream setup latency buckets, 10us .. 10s: a stream on an open pooled connection takes tens
// of microseconds, a handshake's buckets would put them all in the first one.
inline constexpr std::array<double, 19> kStreamSetupBuckets = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,   0.05,     0.1,     0.25,   0.5,     1,      2.5,   5,      10};

// Handshake latency buckets, 100us .. 10s.
inline constexpr std::array<double, 16> kHandshakeBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};

}  // namespace meshtls::sidecar

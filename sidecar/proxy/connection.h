#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/base/fd.h"
#include "common/base/host_port.h"
#include "common/net/event_loop.h"
#include "common/net/socket.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/metrics/labels.h"
#include "sidecar/metrics/worker_counters.h"
#include "sidecar/proxy/capture.h"
#include "sidecar/proxy/relay_buffer.h"
#include "sidecar/tls/peer_authorizer.h"
#include "sidecar/tls/session_cache.h"
#include "sidecar/tls/ssl_ptr.h"
#include "sidecar/tls/tls_context.h"

namespace meshtls::sidecar {

// ListenerRuntime is what a connection needs to know about its listener. Owned by the worker;
// immutable while the worker runs.
// Transparent mode adds runtimes of two more kinds: a capture port's listener (with
// `outbound_capture` or `inbound_capture` set; it decides, it never authorizes), and one per
// destination rule and inbound port (no socket: a connection takes the runtime of the rule or
// port that decides for it, with its name and allow-list, and has its own target).
struct ListenerRuntime {
  size_t id = 0;  // index into the authz counters
  Direction direction = Direction::kInbound;
  std::string name;
  base::HostPort target;  // forward (inbound) or connect (outbound); unused by transparent mode
  PeerAuthorizer authorizer;
  const OutboundCapture* outbound_capture = nullptr;
  const InboundCapture* inbound_capture = nullptr;
  // Outbound listeners and mesh rules: carry app connections as streams of the worker's Pool
  // (the pooled transport) instead of one TLS connection each. A mesh rule's pooled
  // connections go to `pooled_port` of the original destination's address.
  bool pooled = false;
  uint16_t pooled_port = 0;
};

class Pool;

// ConnectionEnv is the worker's state a connection uses. Owned by the worker; used only on
// the worker's thread.
struct ConnectionEnv {
  net::EventLoop& loop;
  dns::Resolver& resolver;  // the worker's own (its cache and DNS sockets)
  WorkerCounters& counters;
  BufferPool& buffers;
  const TlsContextStore& tls;
  net::MonoDuration handshake_timeout;
  net::MonoDuration connect_timeout;
  net::MonoDuration idle_timeout;
  // close_on_expiry: end a relayed connection (gracefully) when the certificate it was
  // established with, ours or the peer's, expires.
  bool close_on_expiry = true;
  // on_closed is called once, from inside the connection, when it is done; the worker then
  // deletes it from a deferred task (never during the event that closed it).
  std::function<void(uint64_t id)> on_closed;
  // may_log rate-limits failure log lines (one worker's budget).
  std::function<bool()> may_log;
  // on_lingering (may be empty) is called once when a refused connection starts its lingering
  // close: it is no longer active nor counted under limits.max_connections, and the worker may
  // end it at once with Shutdown() (to bound how many linger). on_closed still follows when it
  // ends.
  std::function<void(uint64_t id)> on_lingering;
  // mesh_sessions (empty without resumption) gives the worker's TLS session cache for one
  // destination of a transparent `mesh` rule: tickets are per server.
  std::function<std::shared_ptr<SessionCache>(const ListenerRuntime& rule,
                                              const net::SocketAddress& destination)>
      mesh_sessions;
  // pool (null without the pooled transport) takes app connections of `pooled` listeners and
  // inbound connections that selected ALPN `meshtls-h2` (or `h2` on the pooled port); a connection
  // handed to it ends with on_handed_off instead of on_closed (its place under
  // limits.max_connections goes with it).
  Pool* pool = nullptr;
  std::function<void(uint64_t id)> on_handed_off;
};

// Lingering close after a failed handshake (as nginx's lingering_close): the alert is sent, the
// TLS socket's sending side shut down (a FIN follows the alert), and whatever the peer still
// sends is read and discarded until it closes. Closing with the peer's bytes unread would make
// the kernel answer them with a reset, which fails the peer's writes and can destroy the alert
// before the peer reads it; a TLS 1.3 client sends its first request right behind its Finished,
// so it always has bytes in flight when it is refused. Bounded in bytes: a peer's first flight
// is a few congestion windows, well under 256 KiB on any link; in time: 2 s covers the round
// trips of a slow link, and is less than the handshake timeout an idle connection already
// holds a descriptor for. A lingering connection is neither counted active nor under
// limits.max_connections; each worker keeps at most kMaxLingeringPerWorker, closing the oldest.
inline constexpr size_t kLingerMaxBytes = 256 * 1024;
inline constexpr net::MonoDuration kLingerTimeout = std::chrono::seconds(2);

// Connection proxies one client connection. Inbound: TLS server handshake (client certificate
// required, identity authorized inside the handshake), then a plain connection to `forward`.
// Outbound: a plain connection from the app, a TLS client handshake to `connect` (server
// identity checked against `expect`), then relay. Nothing is read from the app before the
// peer is verified, and nothing from a peer reaches the app before it is authorized.
//
// Transparent mode: an outbound capture connection first reads its original destination and
// takes the first matching rule's action (mesh: as outbound, to that destination; passthrough:
// plain TCP to it; deny). An inbound capture connection reads its original port, waits for the
// first bytes and either runs the TLS server side (a ClientHello) or, on a permissive port,
// relays plain text to 127.0.0.1:<port>. Either way the "TLS side" of a plain relay is a plain
// socket (peer_plain_).
//
// Relaying moves bytes both ways through bounded buffers and maps half-close: a FIN from the
// app becomes close_notify, a close_notify becomes a FIN. A reset or an unexpected EOF on
// either side resets the other, so a truncated stream never looks complete.
//
// Owned by its worker and used only on the worker's thread.
class Connection {
 public:
  // `session_cache` (outbound with resumption on; else null) is the worker's cache for this
  // listener and outlives the connection. `accepted_from` is the accepted socket's peer.
  Connection(uint64_t id, ConnectionEnv& env, const ListenerRuntime& listener,
             SessionCache* session_cache, base::UniqueFd accepted, net::PeerAddress accepted_from);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  void Start();
  // Shutdown closes gracefully (used by drain when its deadline passes, and to end a lingering
  // close early).
  void Shutdown() { Close(/*abortive=*/false); }
  uint64_t id() const { return id_; }

 private:
  // kLingering: a failed handshake's alert is sent and the TLS side drains (see
  // kLingerMaxBytes); nothing else is open.
  // kSniffing: an inbound capture connection waits for the first bytes, to tell a ClientHello
  // from plain text.
  enum class State {
    kSniffing,
    kResolving,
    kConnecting,
    kHandshaking,
    kRelaying,
    kLingering,
    kClosed
  };

  class Side final : public net::EventHandler {
   public:
    Side(Connection& c, bool tls) : connection_(c), tls_(tls) {}
    void OnEvents(uint32_t events) override { connection_.OnEvents(tls_, events); }
    base::UniqueFd fd;
    uint32_t registered = 0;  // current epoll interest; 0 = not in epoll
    bool in_epoll = false;

   private:
    Connection& connection_;
    bool tls_;
  };

  void OnEvents(bool tls_side, uint32_t events);
  // TakeCredentials snapshots the TLS context for a connection about to use TLS; false (the
  // connection refused) when there is none or it expired.
  bool TakeCredentials();
  // DecideOutbound applies transparent.outbound to the original destination; StartSniffing and
  // Sniff do transparent.inbound's part.
  void DecideOutbound();
  // HandOffOutbound gives the app's connection to the pool (a `pooled` listener or rule), to
  // `destination` (a mesh rule's) or the listener's `connect`; HandOffInbound gives a verified
  // inbound connection that selected a pooled ALPN id to the pool, whose streams it carries.
  void HandOffOutbound(const net::SocketAddress* destination);
  void HandOffInbound();
  void StartSniffing();
  void Sniff();
  // OnHandshakeDeadline ends a connection still sniffing or handshaking at
  // limits.handshake_timeout.
  void OnHandshakeDeadline();
  void CountDecision(size_t decision) { env_.counters.capture_decisions[decision].Add(); }
  // The TLS socket BIO's callback (see tls_socket_drained_).
  static long OnTlsSocketBio(BIO* bio, int operation, const char* data, size_t length, int argi,
                             long argl, int result, size_t* processed);
  // StartUpstreamConnect connects to target_, resolving a name, or to `known` when a
  // transparent decision already has the address (no resolver, no text round trip).
  void StartUpstreamConnect(const net::SocketAddress* known = nullptr);
  // TargetText names the upstream in errors and logs.
  std::string TargetText() const;
  void OnResolved(absl::StatusOr<dns::Resolver::Addresses> addresses);
  // ConnectNextAddress starts a connect to the next address of the upstream's name; when none
  // is left, the connection is refused with the last address's error.
  void ConnectNextAddress();
  void OnUpstreamConnected();
  void StartTls();
  void DoHandshake();
  void OnHandshakeFailed(int ssl_error);
  // RecordHandshakeFailure counts a failed handshake and logs its line (rate-limited).
  // RecordPendingVerdictAsRefusal: a TLS read or write failed on an outbound TLS 1.3
  // connection whose server has not accepted us yet (no data, ticket or close_notify from it).
  // Its alert names the refusal; with none (a reset, EOF without close_notify) the server still
  // ended the connection before accepting us: peer_closed, never success. No-op otherwise.
  // CancelTimers stops the handshake/idle/linger timer and the expiry timer.
  void CancelTimers();
  void RecordPendingVerdictAsRefusal();
  void RecordHandshakeFailure(HandshakeResult result, absl::string_view reason);
  void OnHandshakeDone();
  // RefuseDeniedIdentity ends an inbound TLS 1.3 handshake whose client identity was denied
  // after its chain was accepted (PeerCheck::deny_after_handshake) with an access_denied alert.
  void RefuseDeniedIdentity();
  // CountHandshakeSuccess counts (and times) the completed handshake, once; see
  // verdict_pending_.
  void CountHandshakeSuccess();
  // OnTlsMessage is the outbound SSL's message callback while verdict_pending_: it notes a
  // NewSessionTicket from the server, which the server sends only once it accepted us.
  static void OnTlsMessage(int write_p, int version, int content_type, const void* buf,
                           size_t length, SSL* ssl, void* arg);
  // Linger starts the lingering close of the TLS side after a failed handshake (see
  // kLingerMaxBytes); DrainLingering reads and discards what the peer sends meanwhile.
  void Linger();
  void DrainLingering();
  void EnterRelaying();
  void Progress();
  // PlainIo is what one recv or send on a plain socket did: bytes moved, EOF (recv 0), or an
  // error other than EAGAIN/EINTR (a reset). RecvPlain reads what `into` has room for and
  // keeps the `readable` hint; SendPlain writes what `from` holds and sets `blocked` when the
  // socket is full. Used for the app's side, and for the peer's side of a plain relay.
  struct PlainIo {
    uint64_t bytes = 0;
    bool eof = false;
    bool error = false;
  };
  PlainIo RecvPlain(int fd, RelayBuffer& into, bool& readable);
  PlainIo SendPlain(int fd, RelayBuffer& from, bool& blocked);
  // NoteTlsWait records what a failed SSL_write/SSL_shutdown waits for; false on a real error.
  bool NoteTlsWait(int rc);
  void UpdateInterest();
  void SetInterest(Side& side, uint32_t events);
  void ArmIdleTimer();
  void ArmExpiryTimer();
  void Close(bool abortive);
  // CloseSide takes the side's socket out of epoll and closes it.
  void CloseSide(Side& side);
  void Refuse(RefusedReason reason, absl::string_view detail);
  int DirectionIndex() const { return static_cast<int>(listener_->direction); }
  Side& tls_side() { return tls_; }
  Side& plain_side() { return plain_; }

  const uint64_t id_;
  ConnectionEnv& env_;
  // The accepting listener's runtime, or after a transparent decision the deciding rule's or
  // port's.
  const ListenerRuntime* listener_;
  base::HostPort target_;    // where the upstream connection goes
  bool peer_plain_ = false;  // passthrough / permissive plain text: no TLS on either side
  std::shared_ptr<SessionCache> mesh_sessions_;  // a mesh rule's cache for this destination
  const InboundPort* inbound_port_ = nullptr;    // inbound capture: the original port's policy
  const InboundCapture* capture_ = nullptr;      // inbound capture: the accepting port's
  net::SocketAddress original_destination_;      // inbound capture
  bool sniff_low_water_ = false;  // SO_RCVLOWAT is 3 while the first bytes are incomplete
  State state_ = State::kResolving;
  Side tls_{*this, true};
  net::PeerAddress tls_peer_;  // the TLS side's peer, for failure logs
  Side plain_{*this, false};
  std::shared_ptr<const TlsContext> context_;  // the generation this connection started with
  SslPtr ssl_;
  PeerCheck check_;
  net::MonoTime handshake_start_;
  net::MonoTime last_activity_;
  net::EventLoop::TimerId timer_ = 0;
  net::EventLoop::TimerId expiry_timer_ = 0;

  RelayBuffer to_tls_;    // app -> peer
  RelayBuffer to_plain_;  // peer -> app
  bool plain_eof_ = false;
  bool tls_eof_ = false;
  bool plain_write_shut_ = false;
  bool tls_shutdown_sent_ = false;
  bool tls_wants_read_ = false;   // a write or shutdown waits for the TLS socket to be readable
  bool tls_wants_write_ = false;  // an SSL call waits for the TLS socket to be writable
  bool plain_write_blocked_ = false;
  // Readiness hints: set by epoll, cleared when a read finds the socket drained. Level-triggered
  // epoll re-reports a socket that has data, so a hint cleared early costs a wake-up, not bytes.
  bool plain_readable_ = false;
  bool tls_readable_ = false;
  // What the TLS socket's last read() did, seen by a BIO callback (OpenSSL does the reads):
  // a read shorter than asked for drained the socket, so the next SSL_read need not try again
  // (and meet EAGAIN) until epoll reports more. Worker thread only.
  int tls_socket_reads_ = 0;
  bool tls_socket_drained_ = false;
  // Outbound TLS 1.3: our side of the handshake completed, but the server judges our
  // certificate only after that, so `success` waits for proof that it accepted us (application
  // data, a ticket or close_notify from it) or for the connection to end without a refusal; an
  // alert refusing us on the first read is counted under the result it names instead. Never
  // both: whichever comes first clears the flag.
  bool verdict_pending_ = false;
  bool server_spoke_ = false;  // a NewSessionTicket arrived while verdict_pending_
  double handshake_seconds_ = 0;
  bool handshake_resumed_ = false;
  size_t lingered_bytes_ = 0;  // discarded while kLingering
  bool destroying_ = false;
  bool counted_active_ = false;
  // The upstream's addresses, tried in order until one accepts: a refused or unreachable
  // address falls through to the next, all within limits.connect_timeout.
  dns::Resolver::Addresses upstream_addresses_;
  size_t next_address_ = 0;
  std::string last_connect_error_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for resolver callbacks
};

}  // namespace meshtls::sidecar

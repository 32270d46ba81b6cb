#include "sidecar/proxy/connection.h"

#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/net/socket.h"
#include "common/pki/certificate.h"
#include "sidecar/proxy/pooled.h"
#include "sidecar/tls/handshake_classifier.h"

namespace meshtls::sidecar {

Connection::Connection(uint64_t id, ConnectionEnv& env, const ListenerRuntime& listener,
                       SessionCache* session_cache, base::UniqueFd accepted,
                       net::PeerAddress accepted_from)
    : id_(id), env_(env), listener_(&listener), target_(listener.target) {
  // Inbound: the accepted socket speaks TLS. Outbound: it is the app's plain socket.
  if (listener_->direction == Direction::kInbound) {
    tls_.fd = std::move(accepted);
    tls_peer_ = accepted_from;
  } else {
    plain_.fd = std::move(accepted);
  }
  check_.authorizer = &listener_->authorizer;  // a transparent decision replaces it
  check_.session_cache = session_cache;
}

Connection::~Connection() {
  if (state_ != State::kClosed) {
    destroying_ = true;  // the owner is deleting us: no on_closed callback
    Close(/*abortive=*/true);
  }
}

void Connection::Start() {
  env_.counters.connections_total[DirectionIndex()].Add();
  env_.counters.connections_active[DirectionIndex()].Add(1);
  counted_active_ = true;
  if (listener_->outbound_capture != nullptr) {
    DecideOutbound();
    return;
  }
  if (listener_->inbound_capture != nullptr) {
    StartSniffing();
    return;
  }
  if (!TakeCredentials()) {
    return;
  }
  if (listener_->direction == Direction::kInbound) {
    handshake_start_ = net::EventLoop::Now();
    StartTls();
  } else if (listener_->pooled && env_.pool != nullptr) {
    HandOffOutbound(nullptr);
  } else {
    StartUpstreamConnect();
  }
}

void Connection::HandOffOutbound(const net::SocketAddress* destination) {
  // The app's connection becomes a stream of the worker's pool; this object is done.
  state_ = State::kClosed;
  *alive_ = false;
  CancelTimers();
  SetInterest(plain_, 0);
  counted_active_ = false;  // the stream keeps the app connection counted
  env_.pool->Open(*listener_, destination, std::move(plain_.fd), net::EventLoop::Now());
  env_.on_handed_off(id_);
}

void Connection::HandOffInbound() {
  // The connection carries HTTP/2 CONNECT streams from here on: the pool's link owns the
  // socket, the SSL and the verified identity.
  state_ = State::kClosed;
  *alive_ = false;
  CancelTimers();
  SetInterest(tls_, 0);
  BIO* socket_bio = SSL_get_rbio(ssl_.get());
  BIO_set_callback_ex(socket_bio, nullptr);
  BIO_set_callback_arg(socket_bio, nullptr);
  if (counted_active_) {
    env_.counters.connections_active[DirectionIndex()].Add(-1);  // streams count from now on
    counted_active_ = false;
  }
  const Pool::InboundRoute route{
      .listener = listener_,
      .capture = capture_,
      .arrived_at = capture_ != nullptr ? original_destination_ : net::SocketAddress{}};
  env_.pool->Adopt(route, std::move(tls_.fd), std::move(ssl_), check_, std::move(context_),
                   tls_peer_);
  env_.on_handed_off(id_);
}

bool Connection::TakeCredentials() {
  context_ = env_.tls.Snapshot();
  if (context_ == nullptr) {
    Refuse(RefusedReason::kNoCredentials, "no certificate loaded yet");
    return false;
  }
  if (absl::Now() >= context_->not_after()) {
    // Fail closed: never present (or accept peers on behalf of) an expired identity.
    Refuse(RefusedReason::kCertificateExpired,
           absl::StrCat("the certificate expired at ", absl::FormatTime(context_->not_after())));
    return false;
  }
  return true;
}

void Connection::DecideOutbound() {
  const OutboundCapture& capture = *listener_->outbound_capture;
  absl::StatusOr<net::SocketAddress> destination = OriginalDestination(plain_.fd.get());
  if (!destination.ok()) {
    Refuse(RefusedReason::kNoOriginalDestination, destination.status().message());
    return;
  }
  net::SocketAddress local;
  local.length = sizeof(local.storage);
  if (::getsockname(plain_.fd.get(), reinterpret_cast<sockaddr*>(&local.storage), &local.length) ==
          0 &&
      IsSameAddress(*destination, local)) {
    // Not redirected: someone connected to the capture port itself. Relaying it to its
    // "original destination" would connect to ourselves.
    Refuse(RefusedReason::kCaptureLoop,
           absl::StrCat("a connection made to the capture port ", destination->ToString(),
                        " directly, not redirected to it"));
    return;
  }
  tls_peer_ = net::PeerAddress::From(*destination);
  const CaptureRule* rule = capture.Match(*destination);
  if (rule == nullptr) {
    CountDecision(capture.no_match_decision);
    Refuse(RefusedReason::kDeniedByRule,
           absl::StrCat("no destination rule matches ", destination->ToString()));
    return;
  }
  CountDecision(rule->decision);
  listener_ = rule->listener;
  check_.authorizer = &listener_->authorizer;
  switch (rule->action) {
    case CaptureAction::kDeny:
    case CaptureAction::kPlaintext:  // not an outbound action
      Refuse(RefusedReason::kDeniedByRule,
             absl::StrCat("destination rule ", rule->name, " denies ", destination->ToString()));
      return;
    case CaptureAction::kPassthrough:
      peer_plain_ = true;
      StartUpstreamConnect(&*destination);
      return;
    case CaptureAction::kMesh:
      if (!TakeCredentials()) {
        return;
      }
      if (listener_->pooled && env_.pool != nullptr) {
        HandOffOutbound(&*destination);
        return;
      }
      if (env_.mesh_sessions) {
        mesh_sessions_ = env_.mesh_sessions(*listener_, *destination);
        check_.session_cache = mesh_sessions_.get();
      }
      StartUpstreamConnect(&*destination);
      return;
  }
}

void Connection::StartSniffing() {
  const InboundCapture& capture = *listener_->inbound_capture;
  absl::StatusOr<net::SocketAddress> destination = OriginalDestination(tls_.fd.get());
  if (!destination.ok()) {
    Refuse(RefusedReason::kNoOriginalDestination, destination.status().message());
    return;
  }
  const uint16_t port = PortOf(*destination);
  if (capture.IsOwnPort(port)) {
    Refuse(RefusedReason::kCaptureLoop,
           absl::StrCat("the original destination ", destination->ToString(),
                        " is one of the sidecar's own ports"));
    return;
  }
  capture_ = &capture;
  original_destination_ = *destination;
  check_.pooled_port = capture.pooled_port != 0 && port == capture.pooled_port;
  inbound_port_ = check_.pooled_port ? &capture.pooled : &capture.For(port);
  listener_ = inbound_port_->listener;
  check_.authorizer = &listener_->authorizer;
  target_ = base::HostPort{.host = "127.0.0.1", .port = port, .host_is_ip = true};  // for logs
  state_ = State::kSniffing;
  handshake_start_ = net::EventLoop::Now();
  // One deadline for the first bytes and the handshake after them (StartTls keeps it).
  timer_ = env_.loop.AddTimer(env_.handshake_timeout, [this] { OnHandshakeDeadline(); });
  SetInterest(tls_, EPOLLIN);
  Sniff();
}

void Connection::OnHandshakeDeadline() {
  timer_ = 0;
  if (state_ != State::kSniffing && state_ != State::kHandshaking) {
    return;
  }
  RecordHandshakeFailure(HandshakeResult::kTimeout,
                         state_ == State::kSniffing
                             ? "the client sent no ClientHello before limits.handshake_timeout"
                             : "no complete handshake before limits.handshake_timeout");
  ERR_clear_error();
  Close(/*abortive=*/true);
}

void Connection::Sniff() {
  char first[3];
  const ssize_t n = ::recv(tls_.fd.get(), first, sizeof(first), MSG_PEEK);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    return;  // epoll reports the first bytes
  }
  if (n <= 0) {
    Close(/*abortive=*/n < 0);  // gone before it said anything: nothing to count but the accept
    return;
  }
  const FirstBytes first_bytes =
      ClassifyFirstBytes(absl::string_view(first, static_cast<size_t>(n)));
  if (first_bytes != FirstBytes::kNeedMore && sniff_low_water_) {
    const int one = 1;
    (void)::setsockopt(tls_.fd.get(), SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
    sniff_low_water_ = false;
  }
  switch (first_bytes) {
    case FirstBytes::kNeedMore:
      // A TLS record header's first byte or two, the rest not here yet. Peeked bytes stay
      // readable, so level-triggered epoll would report them again at once: have the kernel
      // report the socket readable only once the 3 bytes that decide are there (or the client
      // closed). Clients send their ClientHello whole, so this is rare.
      if (sniff_low_water_) {
        // Woken with fewer than 3 bytes under the low-water mark: only an EOF or a reset does
        // that. (Without this, the client's FIN would be reported readable forever.)
        RecordHandshakeFailure(HandshakeResult::kPeerClosed,
                               "the client closed after the first bytes of a TLS record header");
        Close(/*abortive=*/false);
        return;
      }
      {
        const int three = 3;
        sniff_low_water_ =
            ::setsockopt(tls_.fd.get(), SOL_SOCKET, SO_RCVLOWAT, &three, sizeof(three)) == 0;
        if (!sniff_low_water_) {
          RecordHandshakeFailure(HandshakeResult::kInternal,
                                 "SO_RCVLOWAT refused: cannot wait for the first 3 bytes");
          Close(/*abortive=*/true);
        }
      }
      return;
    case FirstBytes::kTlsHandshake:
      CountDecision(inbound_port_->mesh_decision);
      if (!TakeCredentials()) {
        return;
      }
      StartTls();  // the deadline armed at the accept runs on
      return;
    case FirstBytes::kOther:
      break;
  }
  if (!inbound_port_->permissive) {
    CountDecision(inbound_port_->deny_decision);
    Refuse(RefusedReason::kPlaintextRefused,
           absl::StrCat("plain text to strict port ", target_.port, " (mutual TLS only)"));
    return;
  }
  CountDecision(inbound_port_->plaintext_decision);
  peer_plain_ = true;
  SetInterest(tls_, 0);  // nothing is read from the client before the app is connected
  const net::SocketAddress app = LoopbackAddress(target_.port);
  StartUpstreamConnect(&app);
}

std::string Connection::TargetText() const {
  if (target_.host.empty() && !upstream_addresses_.empty()) {
    return upstream_addresses_[0].ToString();  // a transparent decision's address
  }
  return target_.ToString();
}

void Connection::StartUpstreamConnect(const net::SocketAddress* known) {
  state_ = State::kResolving;
  if (timer_ != 0) {
    env_.loop.CancelTimer(timer_);  // the wait for a permissive port's first bytes
  }
  timer_ = env_.loop.AddTimer(env_.connect_timeout, [this] {
    timer_ = 0;
    Refuse(RefusedReason::kUpstreamUnavailable,
           absl::StrCat("connect to ", TargetText(), " timed out",
                        state_ == State::kResolving ? " (resolving the name)" : ""));
  });
  if (known != nullptr) {
    OnResolved(dns::Resolver::Addresses{*known});
    return;
  }
  // Called at once (IP literal, cached answer) or later from the loop; the connection may be
  // gone by then, or have given up (connect timeout).
  std::weak_ptr<bool> alive = alive_;
  env_.resolver.Resolve(target_, alive_,
                        [this, alive](absl::StatusOr<dns::Resolver::Addresses> addresses) {
                          if (!alive.expired() && state_ == State::kResolving) {
                            OnResolved(std::move(addresses));
                          }
                        });
}

void Connection::OnResolved(absl::StatusOr<dns::Resolver::Addresses> addresses) {
  if (!addresses.ok()) {
    Refuse(RefusedReason::kUpstreamUnavailable, addresses.status().message());
    return;
  }
  upstream_addresses_ = *std::move(addresses);
  next_address_ = 0;
  last_connect_error_ = absl::StrCat(TargetText(), " has no address");
  ConnectNextAddress();
}

void Connection::ConnectNextAddress() {
  Side& upstream = listener_->direction == Direction::kInbound ? plain_side() : tls_side();
  while (next_address_ < upstream_addresses_.size()) {
    const net::SocketAddress& address = upstream_addresses_[next_address_++];
    absl::StatusOr<base::UniqueFd> fd = net::ConnectTcp(address);
    if (!fd.ok()) {
      last_connect_error_ = std::string(fd.status().message());
      if (fd.status().code() == absl::StatusCode::kResourceExhausted) {
        break;  // out of descriptors: another address would not help
      }
      continue;
    }
    upstream.fd = *std::move(fd);
    if (listener_->direction == Direction::kOutbound) {
      tls_peer_ = net::PeerAddress::From(address);
    }
    state_ = State::kConnecting;
    SetInterest(upstream, EPOLLOUT);
    return;
  }
  Refuse(RefusedReason::kUpstreamUnavailable, last_connect_error_);
}

void Connection::OnUpstreamConnected() {
  Side& upstream = listener_->direction == Direction::kInbound ? plain_side() : tls_side();
  if (int err = net::SocketError(upstream.fd.get()); err != 0) {
    last_connect_error_ =
        absl::StrCat("connect to ", TargetText(), " (",
                     upstream_addresses_[next_address_ - 1].ToString(), "): ", std::strerror(err));
    CloseSide(upstream);
    ConnectNextAddress();
    return;
  }
  if (timer_ != 0) {
    env_.loop.CancelTimer(timer_);
    timer_ = 0;
  }
  if (listener_->direction == Direction::kInbound || peer_plain_) {
    EnterRelaying();
  } else {
    handshake_start_ = net::EventLoop::Now();
    StartTls();
  }
}

void Connection::StartTls() {
  net::SetNoDelay(tls_.fd.get());
  absl::StatusOr<SslPtr> ssl =
      context_->NewSsl(listener_->direction == Direction::kInbound, tls_.fd.get(), &check_);
  if (!ssl.ok()) {
    RecordHandshakeFailure(HandshakeResult::kInternal, ssl.status().message());
    Close(/*abortive=*/true);
    return;
  }
  ssl_ = *std::move(ssl);
  BIO* socket_bio = SSL_get_rbio(ssl_.get());
  BIO_set_callback_arg(socket_bio, reinterpret_cast<char*>(this));
  BIO_set_callback_ex(socket_bio, &Connection::OnTlsSocketBio);
  if (check_.session_cache != nullptr) {
    std::optional<SessionCache::Entry> cached =
        check_.session_cache->Take(context_->generation(), absl::Now());
    // Offered only for an identity `expect` still allows (checked again if it resumes).
    if (cached.has_value() && listener_->authorizer.Allows(cached->peer) &&
        SSL_set_session(ssl_.get(), cached->session.get()) == 1) {
      check_.resumed_peer_id = std::move(cached->peer);
    }
  }
  const bool sniffed = state_ == State::kSniffing;  // its deadline, from the accept, runs on
  state_ = State::kHandshaking;
  if (!sniffed || timer_ == 0) {
    if (timer_ != 0) {
      env_.loop.CancelTimer(timer_);
    }
    timer_ = env_.loop.AddTimer(env_.handshake_timeout, [this] { OnHandshakeDeadline(); });
  }
  DoHandshake();
}

void Connection::DoHandshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_.get());
  if (rc == 1) {
    OnHandshakeDone();
    return;
  }
  const int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_READ) {
    SetInterest(tls_, EPOLLIN);
    return;
  }
  if (err == SSL_ERROR_WANT_WRITE) {
    SetInterest(tls_, EPOLLOUT);
    return;
  }
  OnHandshakeFailed(err);
}

void Connection::OnHandshakeFailed(int ssl_error) {
  // Out of the active gauge before the failure is counted (Linger would do it just after), so
  // that a scrape never sees the refusal counted while the connection still looks active.
  if (counted_active_) {
    env_.counters.connections_active[DirectionIndex()].Add(-1);
    counted_active_ = false;
  }
  HandshakeFailure failure = ClassifyHandshakeFailure(ssl_error, check_);
  if (failure.result == HandshakeResult::kIdentityDenied && check_.identity_denied) {
    env_.counters.authz_deny[listener_->id].Add();
  }
  RecordHandshakeFailure(failure.result, failure.reason);
  // OpenSSL has written its alert; lingering lets it reach the peer (see kLingerMaxBytes).
  Linger();
}

void Connection::RefuseDeniedIdentity() {
  // One more ticket makes OpenSSL build a NewSessionTicket, whose extension callback fails it
  // with access_denied (TlsContext's DenyInTicket): the alert goes out in the ticket's place.
  // Whatever SSL_do_handshake returns, this connection is refused.
  ERR_clear_error();
  const int rc = SSL_new_session_ticket(ssl_.get()) == 1 ? SSL_do_handshake(ssl_.get()) : 0;
  OnHandshakeFailed(rc == 1 ? SSL_ERROR_SSL : SSL_get_error(ssl_.get(), rc));
}

void Connection::CancelTimers() {
  if (timer_ != 0) {
    env_.loop.CancelTimer(timer_);
    timer_ = 0;
  }
  if (expiry_timer_ != 0) {
    env_.loop.CancelTimer(expiry_timer_);
    expiry_timer_ = 0;
  }
}

void Connection::Linger() {
  CancelTimers();
  state_ = State::kLingering;
  *alive_ = false;
  tls_shutdown_sent_ = true;  // no close_notify after a fatal alert
  if (plain_.fd.valid()) {    // the app's side (outbound) has nothing to wait for: a FIN now
    SetInterest(plain_, 0);
    plain_.fd.reset();
  }
  if (counted_active_) {
    env_.counters.connections_active[DirectionIndex()].Add(-1);
    counted_active_ = false;
  }
  if (::shutdown(tls_.fd.get(), SHUT_WR) != 0) {
    Close(/*abortive=*/true);  // the peer is gone already
    return;
  }
  timer_ = env_.loop.AddTimer(kLingerTimeout, [this] {
    timer_ = 0;
    Close(/*abortive=*/false);  // whatever is still unread draws the reset now
  });
  if (env_.on_lingering) {
    env_.on_lingering(id_);
  }
  SetInterest(tls_, EPOLLIN);
  DrainLingering();
}

void Connection::DrainLingering() {
  if (state_ != State::kLingering) {
    return;
  }
  char discard[16384];
  // Bounded: every pass either ends the connection or discards bytes, at most kLingerMaxBytes.
  while (true) {
    const ssize_t n = ::recv(tls_.fd.get(), discard, sizeof(discard), 0);
    if (n > 0) {
      lingered_bytes_ += static_cast<size_t>(n);
      if (lingered_bytes_ > kLingerMaxBytes) {
        Close(/*abortive=*/false);
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    }
    Close(/*abortive=*/false);  // EOF (the peer closed after reading the alert), or an error
    return;
  }
}

void Connection::RecordHandshakeFailure(HandshakeResult result, absl::string_view reason) {
  env_.counters.handshakes[DirectionIndex()][static_cast<int>(result)].Add();
  if (env_.may_log()) {
    base::LogWarning("tls handshake failed",
                     {{"direction", kDirectionNames[DirectionIndex()]},
                      {"listener", listener_->name},
                      {"peer", tls_peer_.ToString()},
                      {"peer_spiffe_id", base::TruncateForLog(check_.claimed_id)},
                      {"result", kHandshakeResultNames[static_cast<int>(result)]},
                      {"reason", base::TruncateForLog(reason)}});
  }
}

void Connection::OnHandshakeDone() {
  if (check_.deny_after_handshake) {
    RefuseDeniedIdentity();  // never relayed: the identity is not allowed
    return;
  }
  if (timer_ != 0) {
    env_.loop.CancelTimer(timer_);
    timer_ = 0;
  }
  const bool resumed = SSL_session_reused(ssl_.get()) == 1;
  if (resumed) {
    // No certificate was verified: the identity is the one the session was established with
    // (from our own ticket inbound, from the listener's cache outbound), authorized again here.
    if (!check_.resumed_peer_id.has_value() ||
        !listener_->authorizer.Allows(*check_.resumed_peer_id)) {
      env_.counters.authz_deny[listener_->id].Add();
      RecordHandshakeFailure(HandshakeResult::kIdentityDenied,
                             "resumed a session whose identity this listener does not allow");
      Close(/*abortive=*/true);
      return;
    }
    check_.peer_id = check_.resumed_peer_id;
    check_.verified = true;
  }
  // A full handshake always runs the verify callback; refuse to proceed on any path where it
  // did not, rather than relay for an unverified peer.
  if (!check_.verified || !check_.peer_id.has_value()) {
    RecordHandshakeFailure(HandshakeResult::kInternal,
                           "handshake completed without peer verification");
    Close(/*abortive=*/true);
    return;
  }
  handshake_seconds_ =
      std::chrono::duration<double>(net::EventLoop::Now() - handshake_start_).count();
  handshake_resumed_ = resumed;
  env_.counters.authz_allow[listener_->id].Add();
  if (listener_->direction == Direction::kOutbound && !resumed &&
      SSL_version(ssl_.get()) == TLS1_3_VERSION) {
    // The server has not judged our certificate yet (a resumption was judged at its start).
    verdict_pending_ = true;
    SSL_set_msg_callback(ssl_.get(), &Connection::OnTlsMessage);
    SSL_set_msg_callback_arg(ssl_.get(), this);
  } else {
    CountHandshakeSuccess();
  }
  SetInterest(tls_, 0);
  if (listener_->direction == Direction::kInbound) {
    // The server's ALPN callback selects a pooled id only for a pooled client (TlsContext).
    if (SelectedPooledAlpn(ssl_.get()) && env_.pool != nullptr) {
      HandOffInbound();
      return;
    }
    if (check_.pooled_port) {
      Refuse(RefusedReason::kPooledOnly,
             "the pooled port takes HTTP/2 (ALPN meshtls-h2 or h2) only; this client "
             "negotiated neither");
      return;
    }
  }
  if (inbound_port_ != nullptr) {
    const net::SocketAddress app = LoopbackAddress(target_.port);  // transparent inbound
    StartUpstreamConnect(&app);
  } else if (listener_->direction == Direction::kInbound) {
    StartUpstreamConnect();
  } else {
    EnterRelaying();
  }
}

void Connection::RecordPendingVerdictAsRefusal() {
  if (!verdict_pending_) {
    return;
  }
  verdict_pending_ = false;
  SSL_set_msg_callback(ssl_.get(), nullptr);
  if (std::optional<HandshakeFailure> refusal = ClassifyRefusalAfterHandshake()) {
    RecordHandshakeFailure(refusal->result, refusal->reason);
  } else {
    RecordHandshakeFailure(HandshakeResult::kPeerClosed,
                           "the server ended the connection before accepting this sidecar "
                           "(a reset, or EOF without close_notify)");
  }
}

void Connection::CountHandshakeSuccess() {
  if (verdict_pending_) {
    verdict_pending_ = false;
    SSL_set_msg_callback(ssl_.get(), nullptr);
  }
  env_.counters.handshakes[DirectionIndex()][static_cast<int>(HandshakeResult::kSuccess)].Add();
  env_.counters.handshake_latency[DirectionIndex()][handshake_resumed_ ? 1 : 0].Observe(
      handshake_seconds_);
}

void Connection::OnTlsMessage(int write_p, int /*version*/, int content_type, const void* buf,
                              size_t length, SSL* /*ssl*/, void* arg) {
  if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && length > 0 &&
      static_cast<const uint8_t*>(buf)[0] == SSL3_MT_NEWSESSION_TICKET) {
    static_cast<Connection*>(arg)->server_spoke_ = true;
  }
}

void Connection::EnterRelaying() {
  state_ = State::kRelaying;
  // Either side may already hold bytes (the app's first request, or a record that arrived
  // with the handshake's last flight), and no readiness event may come for them.
  plain_readable_ = true;
  tls_readable_ = true;
  net::SetNoDelay(plain_.fd.get());
  last_activity_ = net::EventLoop::Now();
  ArmIdleTimer();
  if (env_.close_on_expiry && !peer_plain_) {
    ArmExpiryTimer();
  }
  Progress();
}

void Connection::ArmExpiryTimer() {
  absl::Time expiry = context_->not_after();
  if (X509* peer = SSL_get0_peer_certificate(ssl_.get())) {
    expiry = std::min(expiry, pki::Asn1TimeToAbsl(X509_get0_notAfter(peer)));
  }
  const absl::Duration left = std::max(expiry - absl::Now(), absl::ZeroDuration());
  expiry_timer_ = env_.loop.AddTimer(
      std::chrono::duration_cast<net::MonoDuration>(absl::ToChronoNanoseconds(left)), [this] {
        expiry_timer_ = 0;
        if (state_ == State::kRelaying) {
          // close_notify to the peer, FIN to the app: no connection outlives its credentials.
          Close(/*abortive=*/false);
        }
      });
}

void Connection::ArmIdleTimer() {
  const net::MonoTime deadline = last_activity_ + env_.idle_timeout;
  const net::MonoDuration wait = deadline - net::EventLoop::Now();
  timer_ = env_.loop.AddTimer(wait, [this] {
    timer_ = 0;
    if (state_ != State::kRelaying) {
      return;
    }
    if (net::EventLoop::Now() - last_activity_ >= env_.idle_timeout) {
      Close(/*abortive=*/false);  // idle: close_notify to the peer, FIN to the app
      return;
    }
    ArmIdleTimer();
  });
}

long Connection::OnTlsSocketBio(BIO* bio, int operation, const char* /*data*/, size_t length,
                                int /*argi*/, long /*argl*/, int result, size_t* processed) {
  if (operation == (BIO_CB_READ | BIO_CB_RETURN)) {
    auto* self = reinterpret_cast<Connection*>(BIO_get_callback_arg(bio));
    ++self->tls_socket_reads_;
    self->tls_socket_drained_ = result <= 0 || processed == nullptr || *processed < length;
  }
  return result;
}

void Connection::OnEvents(bool tls_side, uint32_t events) {
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0) {
    (tls_side ? tls_readable_ : plain_readable_) = true;
  }
  switch (state_) {
    case State::kClosed:
    case State::kResolving:
      return;
    case State::kSniffing:
      if (tls_side) {
        Sniff();
      }
      return;
    case State::kConnecting:
      OnUpstreamConnected();
      return;
    case State::kHandshaking:
      if (tls_side) {
        DoHandshake();
      }
      return;
    case State::kRelaying:
      Progress();
      return;
    case State::kLingering:
      if (tls_side) {
        DrainLingering();
      }
      return;
  }
}

bool Connection::NoteTlsWait(int rc) {
  const int err = SSL_get_error(ssl_.get(), rc);
  if (err == SSL_ERROR_WANT_WRITE) {
    tls_wants_write_ = true;
    return true;
  }
  if (err == SSL_ERROR_WANT_READ) {
    tls_wants_read_ = true;
    return true;
  }
  return false;
}

Connection::PlainIo Connection::RecvPlain(int fd, RelayBuffer& into, bool& readable) {
  const size_t want = into.WritableSize();
  const ssize_t n = ::recv(fd, into.WritableSpan(env_.buffers), want, 0);
  if (n > 0) {
    into.Commit(static_cast<size_t>(n));
    // A short read drained the socket; epoll (level-triggered) reports it again when more
    // arrives, so the next read waits for that instead of costing an EAGAIN.
    readable = static_cast<size_t>(n) == want;
    return {.bytes = static_cast<uint64_t>(n)};
  }
  if (n == 0) {
    return {.eof = true};
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    readable = false;
    return {};
  }
  return {.error = errno != EINTR};
}

Connection::PlainIo Connection::SendPlain(int fd, RelayBuffer& from, bool& blocked) {
  const ssize_t n = ::send(fd, from.ReadableSpan(), from.size(), MSG_NOSIGNAL);
  if (n > 0) {
    from.Consume(static_cast<size_t>(n));
    return {.bytes = static_cast<uint64_t>(n)};
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    blocked = true;
    return {};
  }
  return {.error = n < 0 && errno != EINTR};
}

void Connection::Progress() {
  bool abort = false;
  bool moved = false;
  while (true) {
    // Every pass tries each operation that could move bytes; the flags record what the
    // final (idle) pass was waiting for, and only drive the epoll interest.
    bool progress = false;
    tls_wants_read_ = false;
    tls_wants_write_ = false;
    plain_write_blocked_ = false;

    // App -> buffer.
    if (!plain_eof_ && plain_readable_ && to_tls_.space() > 0) {
      const PlainIo io = RecvPlain(plain_.fd.get(), to_tls_, plain_readable_);
      if (io.error) {
        abort = true;
        break;
      }
      plain_eof_ = io.eof;
      progress = progress || io.bytes > 0 || io.eof;
    }

    // Buffer -> peer.
    if (!to_tls_.empty() && peer_plain_) {
      const PlainIo io = SendPlain(tls_.fd.get(), to_tls_, tls_wants_write_);
      if (io.error) {
        abort = true;
        break;
      }
      env_.counters.bytes_sent[DirectionIndex()].Add(io.bytes);
      progress = progress || io.bytes > 0;
    } else if (!to_tls_.empty()) {
      ERR_clear_error();
      int n = SSL_write(ssl_.get(), to_tls_.ReadableSpan(), static_cast<int>(to_tls_.size()));
      if (n > 0) {
        to_tls_.Consume(static_cast<size_t>(n));
        env_.counters.bytes_sent[DirectionIndex()].Add(static_cast<uint64_t>(n));
        progress = true;
      } else {
        if (!NoteTlsWait(n)) {
          RecordPendingVerdictAsRefusal();
          abort = true;
          break;
        }
      }
    }

    // App finished sending: forward the half-close as close_notify (a FIN when plain).
    if (plain_eof_ && to_tls_.empty() && !tls_shutdown_sent_ && peer_plain_) {
      ::shutdown(tls_.fd.get(), SHUT_WR);
      tls_shutdown_sent_ = true;
      progress = true;
    } else if (plain_eof_ && to_tls_.empty() && !tls_shutdown_sent_) {
      ERR_clear_error();
      int rc = SSL_shutdown(ssl_.get());
      if (rc >= 0) {
        // Nothing may follow close_notify, so the FIN goes with it: the side whose app closed
        // first then closes the TCP connection first and holds its TIME_WAIT, as it would
        // without the mesh. Left to the final close(), the FIN came from whichever sidecar
        // finished last, usually the client's, whose TIME_WAIT sockets then used up the
        // ephemeral ports towards the peer (transparent mode shares them with the app).
        ::shutdown(tls_.fd.get(), SHUT_WR);
        tls_shutdown_sent_ = true;
        progress = true;
      } else {
        if (!NoteTlsWait(rc)) {
          abort = true;
          break;
        }
      }
    }

    // Peer -> buffer. OpenSSL reads ahead, so records may wait in its buffer with the socket
    // drained: SSL_has_pending, not epoll, says whether there is more.
    if (!tls_eof_ && tls_readable_ && to_plain_.space() > 0 && peer_plain_) {
      const PlainIo io = RecvPlain(tls_.fd.get(), to_plain_, tls_readable_);
      if (io.error) {
        abort = true;  // a reset
        break;
      }
      env_.counters.bytes_received[DirectionIndex()].Add(io.bytes);
      tls_eof_ = io.eof;  // FIN: a clean half-close
      progress = progress || io.bytes > 0 || io.eof;
    } else if (!tls_eof_ && !peer_plain_ && (tls_readable_ || SSL_has_pending(ssl_.get()) == 1) &&
               to_plain_.space() > 0) {
      ERR_clear_error();
      tls_socket_reads_ = 0;
      int n = SSL_read(ssl_.get(), to_plain_.WritableSpan(env_.buffers),
                       static_cast<int>(to_plain_.WritableSize()));
      if (n > 0) {
        if (verdict_pending_) {
          CountHandshakeSuccess();  // the server accepted us: it sends data
        }
        if (tls_socket_reads_ > 0 && tls_socket_drained_ && SSL_has_pending(ssl_.get()) != 1) {
          tls_readable_ = false;  // nothing left in the socket or in OpenSSL's buffer
        }
        to_plain_.Commit(static_cast<size_t>(n));
        env_.counters.bytes_received[DirectionIndex()].Add(static_cast<uint64_t>(n));
        progress = true;
      } else {
        int err = SSL_get_error(ssl_.get(), n);
        if (err == SSL_ERROR_ZERO_RETURN) {
          if (verdict_pending_) {
            CountHandshakeSuccess();  // close_notify, not a refusal
          }
          tls_eof_ = true;  // close_notify: a clean half-close
          progress = true;
        } else if (err == SSL_ERROR_WANT_WRITE) {
          tls_wants_write_ = true;
        } else if (err == SSL_ERROR_WANT_READ) {
          tls_readable_ = false;
          if (verdict_pending_ && server_spoke_) {
            CountHandshakeSuccess();  // a ticket: the server accepted us
          }
        } else {
          RecordPendingVerdictAsRefusal();
          abort = true;  // reset, or EOF without close_notify: possibly truncated
          break;
        }
      }
    }

    // Buffer -> app.
    if (!to_plain_.empty()) {
      const PlainIo io = SendPlain(plain_.fd.get(), to_plain_, plain_write_blocked_);
      if (io.error) {
        abort = true;
        break;
      }
      progress = progress || io.bytes > 0;
    }

    // Peer finished sending: forward the half-close as FIN.
    if (tls_eof_ && to_plain_.empty() && !plain_write_shut_) {
      ::shutdown(plain_.fd.get(), SHUT_WR);
      plain_write_shut_ = true;
      progress = true;
    }

    if (!progress) {
      break;
    }
    moved = true;
  }
  if (moved) {
    last_activity_ = net::EventLoop::Now();
  }
  to_tls_.ReleaseIfEmpty(env_.buffers);
  to_plain_.ReleaseIfEmpty(env_.buffers);
  if (abort) {
    ERR_clear_error();
    Close(/*abortive=*/true);
    return;
  }
  if (plain_eof_ && tls_eof_ && tls_shutdown_sent_ && plain_write_shut_) {
    Close(/*abortive=*/false);
    return;
  }
  UpdateInterest();
}

void Connection::UpdateInterest() {
  uint32_t tls_events = 0;
  if ((!tls_eof_ && to_plain_.space() > 0) || tls_wants_read_) {
    tls_events |= EPOLLIN;
  }
  if (tls_wants_write_) {
    tls_events |= EPOLLOUT;
  }
  uint32_t plain_events = 0;
  if (!plain_eof_ && to_tls_.space() > 0) {
    plain_events |= EPOLLIN;
  }
  if (plain_write_blocked_) {
    plain_events |= EPOLLOUT;
  }
  SetInterest(tls_, tls_events);
  SetInterest(plain_, plain_events);
}

void Connection::SetInterest(Side& side, uint32_t events) {
  if (!side.fd.valid()) {
    return;
  }
  // An fd with nothing to wait for leaves epoll: level-triggered EPOLLHUP would otherwise
  // wake the loop forever once the peer has closed.
  if (events == 0) {
    if (side.in_epoll) {
      env_.loop.Remove(side.fd.get());
      side.in_epoll = false;
    }
    side.registered = 0;
    return;
  }
  if (side.in_epoll && side.registered == events) {
    return;
  }
  absl::Status s = side.in_epoll ? env_.loop.Modify(side.fd.get(), events, &side)
                                 : env_.loop.Add(side.fd.get(), events, &side);
  if (!s.ok()) {
    base::LogError("epoll registration failed", {{"error", std::string(s.message())}});
    Close(/*abortive=*/true);
    return;
  }
  side.in_epoll = true;
  side.registered = events;
}

void Connection::CloseSide(Side& side) {
  if (!side.fd.valid()) {
    return;
  }
  if (side.in_epoll) {
    env_.loop.Remove(side.fd.get());
    side.in_epoll = false;
  }
  side.registered = 0;
  side.fd.reset();
}

void Connection::Refuse(RefusedReason reason, absl::string_view detail) {
  env_.counters.refused[DirectionIndex()][static_cast<int>(reason)].Add();
  if (env_.may_log()) {
    base::LogWarning("connection refused",
                     {{"direction", kDirectionNames[DirectionIndex()]},
                      {"listener", listener_->name},
                      {"reason", kRefusedReasonNames[static_cast<int>(reason)]},
                      {"detail", std::string(detail)}});
  }
  // Inbound after the handshake, the peer is authenticated: close with close_notify (Close sends
  // it) rather than a reset. Everything else is reset.
  Close(/*abortive=*/!(ssl_ != nullptr && SSL_is_init_finished(ssl_.get())));
}

void Connection::Close(bool abortive) {
  if (state_ == State::kClosed) {
    return;
  }
  if (verdict_pending_) {
    CountHandshakeSuccess();  // it ended without the server refusing us
  }
  state_ = State::kClosed;
  *alive_ = false;
  CancelTimers();
  if (!abortive && ssl_ != nullptr && !tls_shutdown_sent_ && SSL_is_init_finished(ssl_.get())) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());  // best effort close_notify
    ERR_clear_error();
  }
  for (Side* side : {&tls_, &plain_}) {
    if (side->fd.valid() && abortive) {
      net::SetAbortiveClose(side->fd.get());
    }
    CloseSide(*side);
  }
  if (counted_active_) {
    env_.counters.connections_active[DirectionIndex()].Add(-1);
    counted_active_ = false;
  }
  if (!destroying_) {
    env_.on_closed(id_);
  }
}

}  // namespace meshtls::sidecar

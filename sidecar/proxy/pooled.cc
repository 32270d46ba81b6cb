#include "sidecar/proxy/pooled.h"

#include <arpa/inet.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"
#include "common/pki/certificate.h"
#include "sidecar/tls/handshake_classifier.h"

namespace meshtls::sidecar {

namespace {

// A request's header block beyond this is refused (a CONNECT needs two short fields).
constexpr size_t kMaxRequestHeaderBytes = 8 * 1024;
// The opaque data of a draining server's PING (Drain): its answer ends the first step.
constexpr uint8_t kDrainPing[8] = {'d', 'r', 'a', 'i', 'n', 0, 0, 0};
// What one link serializes ahead of SSL_write: a few records' worth keeps writes large without
// holding much.
constexpr size_t kOutHighWater = 64 * 1024;
// A frame this large is written from nghttp2's buffer directly instead of through out_.
constexpr size_t kDirectWrite = 8 * 1024;

double SecondsSince(net::MonoTime start) {
  return std::chrono::duration<double>(net::EventLoop::Now() - start).count();
}

net::SocketAddress WithPort(net::SocketAddress address, uint16_t port) {
  if (address.storage.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&address.storage)->sin6_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in*>(&address.storage)->sin_port = htons(port);
  }
  return address;
}

nghttp2_nv Header(absl::string_view name, absl::string_view value) {
  return nghttp2_nv{.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    .value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                    .namelen = name.size(),
                    .valuelen = value.size(),
                    .flags = NGHTTP2_NV_FLAG_NONE};
}

// SetInterest registers `fd` for `events` (0: out of epoll, so a closed peer's level-triggered
// EPOLLHUP does not wake the loop forever).
bool SetInterest(net::EventLoop& loop, int fd, net::EventHandler* handler, bool& in_epoll,
                 uint32_t& registered, uint32_t events) {
  if (fd < 0) {
    return true;
  }
  if (events == 0) {
    if (in_epoll) {
      loop.Remove(fd);
      in_epoll = false;
    }
    registered = 0;
    return true;
  }
  if (in_epoll && registered == events) {
    return true;
  }
  absl::Status s = in_epoll ? loop.Modify(fd, events, handler) : loop.Add(fd, events, handler);
  if (!s.ok()) {
    base::LogError("epoll registration failed", {{"error", std::string(s.message())}});
    return false;
  }
  in_epoll = true;
  registered = events;
  return true;
}

}  // namespace

// PooledStream is one app connection carried as one CONNECT stream: outbound, the app's
// accepted socket; inbound, the socket to the local app. Owned by its link while the link
// carries it, by its Pool::Peer while it waits for one; used only on the worker's thread.
class PooledStream final : public net::EventHandler {
 public:
  enum class Role { kOutbound, kInbound };
  PooledStream(Pool& pool, Role role, base::UniqueFd app_fd, net::MonoTime start)
      : pool_(pool), role_(role), app_(std::move(app_fd)), start_(start) {}
  ~PooledStream() override;
  void OnEvents(uint32_t events) override;

  Pool& pool_;
  const Role role_;
  base::UniqueFd app_;
  bool in_epoll_ = false;
  uint32_t registered_ = 0;
  const net::MonoTime start_;
  net::MonoTime last_activity_ = start_;

  PooledLink* link_ = nullptr;   // while a link carries it
  int32_t id_ = -1;              // its HTTP/2 stream id, once submitted or received
  bool counted_active_ = false;  // in connections_active and pooled_streams_active
  bool holds_slot_ = false;      // a place under limits.max_connections

  // Outbound: where it goes and how long it may wait for a stream.
  std::string peer_key_;
  std::string authority_;  // the CONNECT's :authority, the original destination
  net::EventLoop::TimerId wait_timer_ = 0;
  bool retried_ = false;

  // Inbound: the request as received, and the app connection it asks for.
  std::string method_;
  std::string request_authority_;
  int status_ = 0;  // outbound: the peer's answer
  size_t header_bytes_ = 0;
  bool app_connecting_ = false;
  // The app's addresses (a `forward` name resolves to several), tried in turn.
  std::vector<net::SocketAddress> app_addresses_;
  size_t next_app_address_ = 0;
  std::string app_connect_error_;
  // Liveness for the resolver's callback (made when a name is resolved): expires with the
  // stream.
  std::shared_ptr<bool> alive_;

  bool established_ = false;  // answered 200: bytes flow both ways
  bool app_eof_ = false;      // the app sent FIN: END_STREAM is (being) sent
  bool peer_eof_ = false;     // END_STREAM arrived: FIN to the app once `pending_` is written
  bool app_write_shut_ = false;
  bool data_deferred_ = false;  // nghttp2 waits for the app's next bytes (resume_data)
  // The app's socket may have bytes: set by epoll, cleared by a short read, so the read after
  // the one that drained it waits for epoll instead of costing an EAGAIN.
  bool app_readable_ = true;
  bool finished_ = false;
  // Peer -> app bytes the app has not taken yet; at most a stream window (its flow control).
  std::string pending_;
  size_t pending_begin_ = 0;

  int direction() const {
    return static_cast<int>(role_ == Role::kOutbound ? Direction::kOutbound : Direction::kInbound);
  }
  WorkerCounters& counters() { return pool_.env().counters; }
  void UpdateAppInterest();
  // CountResult counts how the stream's setup ended, once (the first outcome named wins).
  void CountResult(StreamResult result) {
    if (!result_counted_) {
      result_counted_ = true;
      counters().pooled_streams[direction()][static_cast<int>(result)].Add();
    }
  }
  bool result_counted_ = false;
};

// PooledLink is one pooled mutual-TLS connection and its HTTP/2 session: the client side of an
// outbound pool, or the server side of an inbound connection a listener handed over. Owned by
// the Pool; used only on the worker's thread.
class PooledLink final : public net::EventHandler {
 public:
  enum class Role { kClient, kServer };
  enum class State { kResolving, kConnecting, kHandshaking, kOpen, kClosed };

  PooledLink(Pool& pool, Role role) : pool_(pool), role_(role) {}
  ~PooledLink() override;
  void OnEvents(uint32_t events) override;

  // Client: connects to `addresses` in turn and handshakes, expecting `route`'s identities.
  void StartClient(const ListenerRuntime& route, std::string peer_key,
                   std::vector<net::SocketAddress> addresses);
  // Server: an already established connection.
  absl::Status StartServer(const Pool::InboundRoute& route, base::UniqueFd fd, SslPtr ssl,
                           PeerCheck check, std::shared_ptr<const TlsContext> context,
                           net::PeerAddress peer);

  // Client: true while it takes new streams (open, not draining, below its stream limit).
  bool HasRoom() const;
  bool IsOpen() const { return state_ == State::kOpen && !draining_; }
  bool IsOpening() const { return state_ != State::kOpen && state_ != State::kClosed; }
  bool opened() const { return opened_; }
  // QueueReset submits RST_STREAM at the next pump (never from inside nghttp2's callbacks).
  void QueueReset(int32_t id, uint32_t code) {
    resets_.emplace_back(id, code);
    pump_again_ = true;
  }
  // Submit starts an outbound stream; false when nghttp2 refused it (the stream stays the
  // caller's).
  bool Submit(std::unique_ptr<PooledStream>& stream);
  // Drain stops new streams; the link closes when its last stream ends. A server says so in
  // two steps (RFC 9113 §6.8): a GOAWAY naming stream 2^31-1 and a PING, then, once the PING is
  // answered (every stream the client sent before the notice has arrived) or after
  // pooled.keepalive_timeout, the GOAWAY naming the last stream it took. A client's new stream
  // never races the final GOAWAY. A client sends GOAWAY(0).
  void Drain();
  // SendFinalGoaway is the server's second step (above), submitted by the next pump after its
  // reads (SubmitDueGoaway); a no-op once sent.
  void SendFinalGoaway();
  void SubmitDueGoaway();
  // Close ends the link and every stream it carries (reset unless `graceful`).
  void Close(bool graceful, absl::string_view why);
  // Pump moves bytes: TLS in -> nghttp2 -> streams, streams -> nghttp2 -> TLS out. Every event
  // of the link or of one of its streams ends with it.
  void Pump();

  // Called by the streams (and the nghttp2 callbacks) of this link.
  // ResumeData has nghttp2 ask the app for bytes again after a DEFERRED read; the caller
  // updates the stream's epoll interest (usually unchanged, so no epoll_ctl).
  void ResumeData(PooledStream& stream);
  void ResetStream(PooledStream& stream, uint32_t error_code, bool abortive);
  void FinishStream(PooledStream& stream, bool abortive);
  void FlushToApp(PooledStream& stream);
  // The connection's window is given back at once for bytes an app took, and for bytes held for
  // a slow app while the link holds less than kMaxLinkPending of them: one stream that does not
  // read never stalls the others (its own window holds it back). Beyond that the window is
  // given back only as apps read (ReleasePending), so a peer cannot make the link buffer more
  // than kMaxLinkPending plus one connection window.
  // The window not given back is always PendingOverLimit(): what the link holds beyond
  // kMaxLinkPending.
  void TakeConnectionWindow(size_t received, size_t buffered) {
    const size_t held_before = PendingOverLimit();
    pending_bytes_ += buffered;
    const size_t withhold = PendingOverLimit() - held_before;  // at most `buffered`
    if (received > withhold) {
      nghttp2_session_consume_connection(session_, received - withhold);
    }
  }
  void ReleasePending(size_t n) {
    const size_t held_before = PendingOverLimit();
    pending_bytes_ -= std::min(n, pending_bytes_);
    if (held_before > PendingOverLimit()) {
      nghttp2_session_consume_connection(session_, held_before - PendingOverLimit());
    }
  }
  size_t PendingOverLimit() const {
    return pending_bytes_ > kMaxLinkPending ? pending_bytes_ - kMaxLinkPending : 0;
  }
  void OnAppConnected(PooledStream& stream);

  uint64_t generation() const { return context_ == nullptr ? 0 : context_->generation(); }
  const TlsContext* context() const { return context_.get(); }
  const std::string& peer_key() const { return peer_key_; }
  size_t stream_count() const { return streams_.size(); }

 private:
  friend struct PooledCallbacks;
  static long OnSocketBio(BIO* bio, int operation, const char* data, size_t length, int argi,
                          long argl, int result, size_t* processed);
  void ConnectNext();
  void OnConnected();
  void Handshake();
  void OnHandshakeFailed(HandshakeResult result, absl::string_view reason);
  absl::Status StartSession();
  void ArmKeepalive();
  void OnKeepalive();
  void ArmExpiry();
  void UpdateInterest();
  void CountVerdict();
  bool ReadTls();
  bool WriteTls();
  // FlushOut writes out_ while the socket takes it; false when the link failed (closed).
  bool FlushOut();
  void ProcessResets();
  void OnRequest(PooledStream& stream);
  // MayRequeue: a client stream never answered (nothing of its app was read yet) may go on
  // another connection, once, unless the pool is draining. RequeueUnanswered moves it there.
  bool MayRequeue(const PooledStream& stream) const;
  void RequeueUnanswered(PooledStream& stream);
  // CountInboundRefused counts a request refused with REFUSED_STREAM (the stream limit).
  void CountInboundRefused() {
    pool_.env()
        .counters
        .pooled_streams[static_cast<int>(Direction::kInbound)]
                       [static_cast<int>(StreamResult::kRefused)]
        .Add();
  }
  // ConnectApp starts a connect to the stream's next app address; with none left, the stream
  // is answered 502 with the last error.
  void ConnectApp(PooledStream& stream);
  void OnResponse(PooledStream& stream, int status);
  void Respond(PooledStream& stream, int status, StreamResult result, absl::string_view why);
  void MaybeClose();
  void Log(absl::string_view message, absl::string_view detail);

  Pool& pool_;
  const Role role_;
  State state_ = State::kResolving;
  base::UniqueFd fd_;
  bool in_epoll_ = false;
  uint32_t registered_ = 0;
  SslPtr ssl_;
  PeerCheck check_;
  std::shared_ptr<const TlsContext> context_;
  net::PeerAddress remote_;
  nghttp2_session* session_ = nullptr;
  std::string out_;  // serialized frames not yet taken by SSL_write
  size_t out_begin_ = 0;
  bool tls_wants_write_ = false;
  size_t pending_bytes_ = 0;  // held in streams' pending_ for their apps
  // Read hints, as Connection's: epoll says the socket is readable; a read shorter than asked
  // for (seen by the socket BIO's callback) drained it, so the next SSL_read waits for epoll.
  bool tls_readable_ = true;
  int tls_socket_reads_ = 0;
  bool tls_socket_drained_ = false;
  bool draining_ = false;
  // Server drain (Drain): the notice (a GOAWAY naming stream 2^31-1) went out; the final
  // GOAWAY (naming the last stream taken) went out; the final one is due at the next pump,
  // after its reads; the timer that makes it due if the PING goes unanswered; the peer said
  // GOAWAY itself (nghttp2 then sends no notice).
  bool shutdown_notice_sent_ = false;
  bool goaway_sent_ = false;
  bool final_goaway_due_ = false;
  net::EventLoop::TimerId goaway_timer_ = 0;
  bool peer_goaway_ = false;
  bool counted_ = false;  // in pooled_connections
  std::unordered_map<PooledStream*, std::unique_ptr<PooledStream>> streams_;
  std::vector<std::pair<int32_t, uint32_t>> resets_;  // RST_STREAMs to submit outside callbacks
  bool in_pump_ = false;
  bool pump_again_ = false;

  // Client.
  const ListenerRuntime* route_ = nullptr;
  std::string peer_key_;
  std::vector<net::SocketAddress> addresses_;
  size_t next_address_ = 0;
  net::SocketAddress connected_to_;
  std::string last_error_;
  net::MonoTime handshake_start_;
  bool verdict_pending_ = false;  // TLS 1.3: the server has not been heard from yet

  // Server.
  Pool::InboundRoute inbound_;
  net::SocketAddress local_;  // explicit listeners: where the connection arrived

  net::EventLoop::TimerId timer_ = 0;  // connect+handshake deadline, then keepalive
  net::EventLoop::TimerId expiry_timer_ = 0;
  net::MonoTime last_received_;
  net::MonoTime idle_since_;
  bool ping_outstanding_ = false;
  net::MonoTime ping_sent_;
  bool opened_ = false;      // the session started (a failure before fails the waiting streams)
  bool holds_slot_ = false;  // server: the accepted connection's place under max_connections
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for deferred pumps
};

// ---------------------------------------------------------------------------------------------
// nghttp2 callbacks. user_data is the PooledLink; a stream's user data its PooledStream (null
// once the stream let go of it).

struct PooledCallbacks {
  static PooledStream* StreamOf(nghttp2_session* session, int32_t id) {
    return static_cast<PooledStream*>(nghttp2_session_get_stream_user_data(session, id));
  }

  static ssize_t ReadApp(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                         uint32_t* data_flags, nghttp2_data_source* /*source*/, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    PooledStream* stream = StreamOf(session, stream_id);
    if (stream == nullptr || stream->finished_) {
      return NGHTTP2_ERR_DEFERRED;  // being reset
    }
    if (!stream->established_ || stream->app_eof_) {
      if (stream->app_eof_) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
      }
      stream->data_deferred_ = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    if (!stream->app_readable_) {
      stream->data_deferred_ = true;  // EPOLLIN says when (no epoll_ctl if registered already)
      stream->UpdateAppInterest();
      return NGHTTP2_ERR_DEFERRED;
    }
    while (true) {
      const ssize_t n = ::recv(stream->app_.get(), buf, length, 0);
      if (n > 0) {
        stream->counters().bytes_sent[stream->direction()].Add(static_cast<uint64_t>(n));
        stream->last_activity_ = net::EventLoop::Now();
        stream->app_readable_ = static_cast<size_t>(n) == length;
        return n;
      }
      if (n == 0) {
        stream->app_eof_ = true;  // half-close: END_STREAM
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        stream->UpdateAppInterest();
        return 0;
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        stream->app_readable_ = false;
        stream->data_deferred_ = true;
        stream->UpdateAppInterest();
        return NGHTTP2_ERR_DEFERRED;
      }
      // The app reset its connection: so does the stream (CONNECT_ERROR, RFC 9113 §8.5).
      link->QueueReset(stream_id, NGHTTP2_CONNECT_ERROR);
      link->FinishStream(*stream, /*abortive=*/true);
      return NGHTTP2_ERR_DEFERRED;
    }
  }

  // DataFrameLength lets DATA frames grow to what the peer allows (kPooledMaxFrame between
  // meshtls sidecars) instead of nghttp2's 16 KiB: fewer frames and reads of the app per byte.
  static ssize_t DataFrameLength(nghttp2_session* /*session*/, uint8_t /*frame_type*/,
                                 int32_t /*stream_id*/, int32_t session_window,
                                 int32_t stream_window, uint32_t remote_max_frame_size,
                                 void* /*user_data*/) {
    // Frame header and payload fill whole TLS records (16 KiB each): no 9-byte record after
    // every frame.
    constexpr ssize_t kRecordAligned = 4 * 16384 - 9;
    return std::min<ssize_t>({session_window, stream_window,
                              static_cast<ssize_t>(remote_max_frame_size), kRecordAligned});
  }

  static int OnBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    if (link->role_ != PooledLink::Role::kServer || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      return 0;
    }
    if (link->streams_.size() >= link->pool_.settings().max_streams_per_connection) {
      // nghttp2 refuses streams beyond the SETTINGS it sent once they are acknowledged; this
      // covers the first flight too.
      link->QueueReset(frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
      link->CountInboundRefused();
      return 0;
    }
    auto stream = std::make_unique<PooledStream>(link->pool_, PooledStream::Role::kInbound,
                                                 base::UniqueFd(), net::EventLoop::Now());
    stream->link_ = link;
    stream->id_ = frame->hd.stream_id;
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, stream.get());
    PooledStream* raw = stream.get();
    link->streams_.emplace(raw, std::move(stream));
    return 0;
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t /*flags*/,
                      void* /*user_data*/) {
    if (frame->hd.type != NGHTTP2_HEADERS) {
      return 0;
    }
    PooledStream* stream = StreamOf(session, frame->hd.stream_id);
    if (stream == nullptr) {
      return 0;
    }
    stream->header_bytes_ += namelen + valuelen + 32;  // RFC 9113's accounting
    if (stream->header_bytes_ > kMaxRequestHeaderBytes) {
      stream->CountResult(StreamResult::kMalformed);
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // RST_STREAM
    }
    const absl::string_view n(reinterpret_cast<const char*>(name), namelen);
    const absl::string_view v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":method") {
      stream->method_ = std::string(v);
    } else if (n == ":authority") {
      stream->request_authority_ = std::string(v);
    } else if (n == ":status") {
      int status = 0;  // outbound: the answer (nghttp2 checked it is three digits)
      for (char c : v) {
        status = status * 10 + (c - '0');
      }
      stream->status_ = status;
    }
    return 0;
  }

  static int OnFrameRecv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    link->last_received_ = net::EventLoop::Now();
    link->ping_outstanding_ = false;  // any frame shows the peer is alive
    link->CountVerdict();
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        PooledStream* stream = StreamOf(session, frame->hd.stream_id);
        if (stream == nullptr) {
          return 0;
        }
        const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
        if (link->role_ == PooledLink::Role::kServer &&
            frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          stream->peer_eof_ = end_stream;
          link->OnRequest(*stream);
        } else if (link->role_ == PooledLink::Role::kClient &&
                   frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
          stream->peer_eof_ = end_stream;
          link->OnResponse(*stream, stream->status_);
        }
        return 0;
      }
      case NGHTTP2_DATA:
        if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
          if (PooledStream* stream = StreamOf(session, frame->hd.stream_id)) {
            stream->peer_eof_ = true;
            link->FlushToApp(*stream);
          }
        }
        return 0;
      case NGHTTP2_SETTINGS:
        if (link->role_ == PooledLink::Role::kClient && (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
          link->pool_.LinkReady(*link);  // the peer's stream limit is known now
        }
        return 0;
      case NGHTTP2_GOAWAY:
        // No new streams here: those above last_stream_id come back as REFUSED_STREAM and are
        // opened again elsewhere.
        link->draining_ = true;
        link->peer_goaway_ = true;
        return 0;
      case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0 && link->shutdown_notice_sent_ &&
            std::memcmp(frame->ping.opaque_data, kDrainPing, sizeof(kDrainPing)) == 0) {
          link->SendFinalGoaway();  // the client has seen the notice: nothing more is in flight
        }
        return 0;
      default:
        return 0;
    }
  }

  static int OnDataChunk(nghttp2_session* session, uint8_t /*flags*/, int32_t stream_id,
                         const uint8_t* data, size_t length, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    PooledStream* stream = StreamOf(session, stream_id);
    if (stream == nullptr || stream->finished_) {
      nghttp2_session_consume_connection(session, length);
      nghttp2_session_consume_stream(session, stream_id, length);
      return 0;
    }
    stream->counters().bytes_received[stream->direction()].Add(length);
    stream->last_activity_ = net::EventLoop::Now();
    const char* bytes = reinterpret_cast<const char*>(data);
    size_t written = 0;
    if (stream->pending_begin_ == stream->pending_.size() && stream->app_.valid() &&
        !stream->app_connecting_ && !stream->app_write_shut_) {
      // The common case: straight to the app, no copy.
      const ssize_t n = ::send(stream->app_.get(), bytes, length, MSG_NOSIGNAL);
      if (n > 0) {
        written = static_cast<size_t>(n);
        nghttp2_session_consume_stream(session, stream_id, written);
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        nghttp2_session_consume_connection(session, length);
        link->QueueReset(stream_id, NGHTTP2_CONNECT_ERROR);
        link->FinishStream(*stream, /*abortive=*/true);
        return 0;
      }
    }
    if (written < length) {
      if (stream->pending_begin_ == stream->pending_.size()) {
        stream->pending_.clear();
        stream->pending_begin_ = 0;
      }
      stream->pending_.append(bytes + written, length - written);
      stream->UpdateAppInterest();
    }
    link->TakeConnectionWindow(length, length - written);
    return 0;
  }

  // OnFrameSend: a draining server's PING follows its shutdown notice on the wire (nghttp2
  // would send a PING submitted with it first), so its answer proves the notice arrived.
  static int OnFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    if (frame->hd.type == NGHTTP2_GOAWAY && link->shutdown_notice_sent_ && !link->goaway_sent_ &&
        frame->goaway.last_stream_id == std::numeric_limits<int32_t>::max() &&
        nghttp2_submit_ping(session, NGHTTP2_FLAG_NONE, kDrainPing) != 0) {
      link->SendFinalGoaway();
    }
    return 0;
  }

  // OnInvalidFrameRecv counts the requests nghttp2 refuses itself (REFUSED_STREAM beyond the
  // SETTINGS_MAX_CONCURRENT_STREAMS it sent but the client has not acknowledged yet): they never
  // reach OnBeginHeaders.
  static int OnInvalidFrameRecv(nghttp2_session* /*session*/, const nghttp2_frame* frame,
                                int lib_error_code, void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    if (link->role_ == PooledLink::Role::kServer && frame->hd.type == NGHTTP2_HEADERS &&
        lib_error_code == NGHTTP2_ERR_REFUSED_STREAM) {
      link->CountInboundRefused();
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
    auto* link = static_cast<PooledLink*>(user_data);
    PooledStream* stream = StreamOf(session, stream_id);
    if (stream == nullptr || stream->finished_) {
      return 0;
    }
    nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
    if (error_code == NGHTTP2_NO_ERROR && stream->established_ && stream->peer_eof_ &&
        stream->app_eof_) {
      // Both sides sent END_STREAM: the app gets what is left, then FIN (FlushToApp ends it).
      // An RST_STREAM(NO_ERROR) before that is a cut stream, reset below like any other.
      link->FlushToApp(*stream);
      if (!stream->finished_ && stream->pending_begin_ == stream->pending_.size()) {
        link->FinishStream(*stream, /*abortive=*/false);
      }
      return 0;
    }
    if (error_code == NGHTTP2_REFUSED_STREAM && link->MayRequeue(*stream)) {
      // Refused before the peer did anything with it (GOAWAY, its stream limit).
      link->RequeueUnanswered(*stream);
      return 0;
    }
    if (!stream->established_) {
      stream->CountResult(link->role_ == PooledLink::Role::kClient &&
                                  error_code == NGHTTP2_REFUSED_STREAM
                              ? StreamResult::kRefused
                              : StreamResult::kReset);
    }
    link->FinishStream(*stream, /*abortive=*/true);  // a reset resets the app's connection
    return 0;
  }
};

// ---------------------------------------------------------------------------------------------
// PooledStream

PooledStream::~PooledStream() {
  if (wait_timer_ != 0) {
    pool_.env().loop.CancelTimer(wait_timer_);
  }
  if (app_.valid() && in_epoll_) {
    pool_.env().loop.Remove(app_.get());
  }
  if (counted_active_) {
    counters().connections_active[direction()].Add(-1);
    counters().pooled_streams_active[direction()].Add(-1);
  }
  if (holds_slot_) {
    pool_.hooks().release_slot();
  }
}

void PooledStream::UpdateAppInterest() {
  if (!app_.valid() || finished_) {
    return;
  }
  uint32_t events = 0;
  if (app_connecting_) {
    events = EPOLLOUT;
  } else {
    if (established_ && data_deferred_ && !app_eof_) {
      events |= EPOLLIN;
    }
    if (pending_begin_ < pending_.size()) {
      events |= EPOLLOUT;
    }
  }
  if (!SetInterest(pool_.env().loop, app_.get(), this, in_epoll_, registered_, events) &&
      link_ != nullptr) {
    link_->ResetStream(*this, NGHTTP2_INTERNAL_ERROR, /*abortive=*/true);
  }
}

void PooledStream::OnEvents(uint32_t events) {
  PooledLink* link = link_;
  if (link == nullptr || finished_) {
    return;
  }
  if (app_connecting_) {
    link->OnAppConnected(*this);
  } else {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0 && pending_begin_ < pending_.size()) {
      link->FlushToApp(*this);
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) {
      app_readable_ = true;
      if (!finished_) {
        link->ResumeData(*this);
      }
    }
  }
  link->Pump();
  // After the pump, which usually defers on the app again: an unchanged interest costs no
  // epoll_ctl. The stream is alive until the next loop turn even if it finished (Retire).
  if (!finished_) {
    UpdateAppInterest();
  }
}

// ---------------------------------------------------------------------------------------------
// PooledLink

PooledLink::~PooledLink() {
  if (state_ != State::kClosed) {
    Close(/*graceful=*/false, "the worker stopped");
  }
  for (net::EventLoop::TimerId t : {timer_, expiry_timer_, goaway_timer_}) {
    if (t != 0) {
      pool_.env().loop.CancelTimer(t);
    }
  }
  if (session_ != nullptr) {
    nghttp2_session_del(session_);
  }
}

void PooledLink::Log(absl::string_view message, absl::string_view detail) {
  if (pool_.env().may_log()) {
    base::LogWarning(message,
                     {{"direction", role_ == Role::kClient ? "outbound" : "inbound"},
                      {"listener", role_ == Role::kClient ? route_->name : inbound_.listener->name},
                      {"peer", remote_.ToString()},
                      {"detail", base::TruncateForLog(detail)}});
  }
}

void PooledLink::StartClient(const ListenerRuntime& route, std::string peer_key,
                             std::vector<net::SocketAddress> addresses) {
  route_ = &route;
  peer_key_ = std::move(peer_key);
  addresses_ = std::move(addresses);
  check_.authorizer = &route.authorizer;
  context_ = pool_.env().tls.Snapshot();
  handshake_start_ = net::EventLoop::Now();
  timer_ = pool_.env().loop.AddTimer(
      pool_.env().connect_timeout + pool_.env().handshake_timeout, [this] {
        timer_ = 0;
        if (state_ == State::kConnecting || state_ == State::kHandshaking) {
          if (state_ == State::kHandshaking) {
            pool_.env()
                .counters
                .handshakes[static_cast<int>(Direction::kOutbound)]
                           [static_cast<int>(HandshakeResult::kTimeout)]
                .Add();
          }
          Close(/*graceful=*/false, state_ == State::kConnecting
                                        ? "connect timed out"
                                        : "no complete handshake before the deadline");
        }
      });
  if (context_ == nullptr || absl::Now() >= context_->not_after()) {
    Close(false, context_ == nullptr ? "no certificate loaded yet" : "the certificate expired");
    return;
  }
  if (addresses_.empty() && !route.target.host.empty() && !route.target.host_is_ip) {
    // `connect` is a name: the worker's resolver (its cache) gives its addresses.
    std::weak_ptr<bool> alive = alive_;
    pool_.env().resolver.Resolve(route.target, alive_,
                                 [this, alive](absl::StatusOr<dns::Resolver::Addresses> found) {
                                   if (alive.expired() || state_ != State::kResolving) {
                                     return;
                                   }
                                   if (!found.ok()) {
                                     Close(false, found.status().message());
                                     return;
                                   }
                                   addresses_ = *std::move(found);
                                   ConnectNext();
                                 });
    return;
  }
  ConnectNext();
}

void PooledLink::ConnectNext() {
  while (next_address_ < addresses_.size()) {
    const net::SocketAddress& address = addresses_[next_address_++];
    remote_ = net::PeerAddress::From(address);
    absl::StatusOr<base::UniqueFd> fd = net::ConnectTcp(address);
    if (!fd.ok()) {
      last_error_ = std::string(fd.status().message());
      continue;
    }
    fd_ = *std::move(fd);
    connected_to_ = address;
    state_ = State::kConnecting;
    if (!SetInterest(pool_.env().loop, fd_.get(), this, in_epoll_, registered_, EPOLLOUT)) {
      Close(false, "epoll registration failed");
    }
    return;
  }
  Close(false, last_error_.empty() ? "no address to connect to" : last_error_);
}

void PooledLink::OnConnected() {
  if (int err = net::SocketError(fd_.get()); err != 0) {
    last_error_ = absl::StrCat("connect to ", remote_.ToString(), ": ", std::strerror(err));
    SetInterest(pool_.env().loop, fd_.get(), this, in_epoll_, registered_, 0);
    fd_.reset();
    ConnectNext();
    return;
  }
  net::SetNoDelay(fd_.get());
  absl::StatusOr<SslPtr> ssl = context_->NewSsl(/*server=*/false, fd_.get(), &check_);
  if (!ssl.ok()) {
    OnHandshakeFailed(HandshakeResult::kInternal, ssl.status().message());
    return;
  }
  ssl_ = *std::move(ssl);
  SSL_set_alpn_protos(ssl_.get(), kPooledAlpn, sizeof(kPooledAlpn));
  state_ = State::kHandshaking;
  Handshake();
}

void PooledLink::Handshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_.get());
  if (rc != 1) {
    const int err = SSL_get_error(ssl_.get(), rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      SetInterest(pool_.env().loop, fd_.get(), this, in_epoll_, registered_,
                  err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
      return;
    }
    HandshakeFailure failure = ClassifyHandshakeFailure(err, check_);
    if (failure.result == HandshakeResult::kIdentityDenied && check_.identity_denied) {
      pool_.env().counters.authz_deny[route_->id].Add();
    }
    OnHandshakeFailed(failure.result, failure.reason);
    return;
  }
  if (!check_.verified || !check_.peer_id.has_value()) {
    OnHandshakeFailed(HandshakeResult::kInternal, "handshake completed without peer verification");
    return;
  }
  if (!SelectedPooledAlpn(ssl_.get())) {
    OnHandshakeFailed(HandshakeResult::kProtocolVersion,
                      "the peer selected no ALPN meshtls-h2 or h2: it takes no pooled connections");
    return;
  }
  pool_.env().counters.authz_allow[route_->id].Add();
  // TLS 1.3: the server judges our certificate after our side is done; success is counted
  // when its first frame arrives (see Connection's verdict_pending_).
  verdict_pending_ = true;
  if (SSL_version(ssl_.get()) != TLS1_3_VERSION) {
    CountVerdict();
  }
  if (absl::Status s = StartSession(); !s.ok()) {
    Close(false, s.message());
    return;
  }
  if (timer_ != 0) {
    pool_.env().loop.CancelTimer(timer_);
    timer_ = 0;
  }
  ArmKeepalive();
  ArmExpiry();
  // Drained while it handshook (credentials changed): it takes no stream, and LinkReady sends
  // the waiting ones to a connection with the new credentials.
  pool_.LinkReady(*this);
  Pump();
}

void PooledLink::CountVerdict() {
  if (!verdict_pending_) {
    return;
  }
  verdict_pending_ = false;
  WorkerCounters& c = pool_.env().counters;
  const int d = static_cast<int>(Direction::kOutbound);
  c.handshakes[d][static_cast<int>(HandshakeResult::kSuccess)].Add();
  c.handshake_latency[d][0].Observe(SecondsSince(handshake_start_));
}

void PooledLink::OnHandshakeFailed(HandshakeResult result, absl::string_view reason) {
  pool_.env()
      .counters.handshakes[static_cast<int>(Direction::kOutbound)][static_cast<int>(result)]
      .Add();
  Close(false, absl::StrCat("handshake failed (", kHandshakeResultNames[static_cast<int>(result)],
                            "): ", reason));
}

absl::Status PooledLink::StartServer(const Pool::InboundRoute& route, base::UniqueFd fd, SslPtr ssl,
                                     PeerCheck check, std::shared_ptr<const TlsContext> context,
                                     net::PeerAddress peer) {
  inbound_ = route;
  fd_ = std::move(fd);
  ssl_ = std::move(ssl);
  check_ = std::move(check);
  // The SSL's callbacks find the check through its ex data: point it at this link's copy.
  TlsContext::BindPeerCheck(ssl_.get(), &check_);
  holds_slot_ = true;
  context_ = std::move(context);
  remote_ = peer;
  local_.length = sizeof(local_.storage);
  if (::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local_.storage), &local_.length) != 0) {
    local_.length = 0;
  }
  MESHTLS_RETURN_IF_ERROR(StartSession());
  ArmKeepalive();
  ArmExpiry();
  if (pool_.draining()) {
    Drain();
  }
  Pump();
  return absl::OkStatus();
}

absl::Status PooledLink::StartSession() {
  nghttp2_session_callbacks* callbacks = nullptr;
  if (nghttp2_session_callbacks_new(&callbacks) != 0) {
    return absl::ResourceExhaustedError("nghttp2_session_callbacks_new");
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks,
                                                          PooledCallbacks::OnBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, PooledCallbacks::OnHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, PooledCallbacks::OnFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                            PooledCallbacks::OnDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, PooledCallbacks::OnStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, PooledCallbacks::OnFrameSend);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks,
                                                               PooledCallbacks::OnInvalidFrameRecv);
  nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks,
                                                                 PooledCallbacks::DataFrameLength);
  nghttp2_option* option = nullptr;
  if (nghttp2_option_new(&option) != 0) {
    nghttp2_session_callbacks_del(callbacks);
    return absl::ResourceExhaustedError("nghttp2_option_new");
  }
  // Windows are given back by hand: the connection's at once up to kMaxLinkPending held for apps
  // (TakeConnectionWindow, ReleasePending), a stream's as its app takes the bytes (OnDataChunk,
  // FlushToApp).
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_peer_max_concurrent_streams(option,
                                                 pool_.settings().max_streams_per_connection);
  // A peer resetting streams in a loop (each CONNECT costs a connection to the app: "rapid
  // reset", CVE-2023-44487) gets GOAWAY past 1000 resets at once or 33/s; a header block of
  // more than 8 CONTINUATION frames ends the connection (CVE-2024-28182). Debian's 1.52
  // carries both fixes.
  nghttp2_option_set_stream_reset_rate_limit(option, 1000, 33);
  nghttp2_option_set_max_continuations(option, 8);
  const int rc = role_ == Role::kClient
                     ? nghttp2_session_client_new2(&session_, callbacks, this, option)
                     : nghttp2_session_server_new2(&session_, callbacks, this, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rc != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("nghttp2 session: ", nghttp2_strerror(rc)));
  }
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
       role_ == Role::kServer ? pool_.settings().max_streams_per_connection : 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kPooledStreamWindow)},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, kPooledMaxFrame},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  const size_t count = role_ == Role::kServer ? 3 : 4;
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, count) != 0 ||
      nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                            kPooledConnectionWindow) != 0) {
    return absl::InternalError("nghttp2: submitting SETTINGS");
  }
  BIO* socket_bio = SSL_get_rbio(ssl_.get());
  BIO_set_callback_arg(socket_bio, reinterpret_cast<char*>(this));
  BIO_set_callback_ex(socket_bio, &PooledLink::OnSocketBio);
  state_ = State::kOpen;
  opened_ = true;
  counted_ = true;
  pool_.env().counters.pooled_connections[role_ == Role::kClient ? 1 : 0].Add(1);
  last_received_ = net::EventLoop::Now();
  idle_since_ = last_received_;
  return absl::OkStatus();
}

long PooledLink::OnSocketBio(BIO* bio, int operation, const char* /*data*/, size_t length,
                             int /*argi*/, long /*argl*/, int result, size_t* processed) {
  if (operation == (BIO_CB_READ | BIO_CB_RETURN)) {
    auto* self = reinterpret_cast<PooledLink*>(BIO_get_callback_arg(bio));
    ++self->tls_socket_reads_;
    self->tls_socket_drained_ = result <= 0 || processed == nullptr || *processed < length;
  }
  return result;
}

void PooledLink::ArmKeepalive() {
  if (state_ != State::kOpen) {
    return;
  }
  timer_ =
      pool_.env().loop.AddTimer(pool_.settings().keepalive_interval / 2, [this] { OnKeepalive(); });
}

void PooledLink::OnKeepalive() {
  timer_ = 0;
  if (state_ != State::kOpen) {
    return;
  }
  const net::MonoTime now = net::EventLoop::Now();
  const PoolSettings& s = pool_.settings();
  if (ping_outstanding_ && now - ping_sent_ >= s.keepalive_timeout) {
    Close(false, "the peer did not answer a PING within pooled.keepalive_timeout");
    return;
  }
  // Idle connections are closed by the client, which knows when it wants no more streams; the
  // server waits twice as long, so that its GOAWAY never races a client's new stream.
  const net::MonoDuration idle_limit = role_ == Role::kClient ? s.idle_timeout : 2 * s.idle_timeout;
  if (streams_.empty() && now - idle_since_ >= idle_limit) {
    Close(/*graceful=*/true, "idle");
    return;
  }
  // Streams idle past limits.idle_timeout end, as a `tls` connection would; an inbound stream
  // whose request or app connection is not complete within limits.connect_timeout ends too.
  std::vector<PooledStream*> idle;
  for (auto& [raw, owned] : streams_) {
    if (raw->established_
            ? now - raw->last_activity_ >= pool_.env().idle_timeout
            : role_ == Role::kServer && now - raw->start_ >= pool_.env().connect_timeout) {
      idle.push_back(raw);
    }
  }
  in_pump_ = true;  // the resets are submitted by the pump below, not one pump each
  for (PooledStream* stream : idle) {
    if (!stream->established_) {
      stream->CountResult(StreamResult::kTimeout);
    }
    ResetStream(*stream, NGHTTP2_CANCEL, /*abortive=*/!stream->established_);
  }
  in_pump_ = false;
  if (!ping_outstanding_ && now - last_received_ >= s.keepalive_interval) {
    uint8_t opaque[8] = {};
    if (nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, opaque) == 0) {
      ping_outstanding_ = true;
      ping_sent_ = now;
    }
  }
  ArmKeepalive();
  Pump();  // may close the link: nothing of it is used after this
}

void PooledLink::ArmExpiry() {
  if (!pool_.env().close_on_expiry) {
    return;
  }
  absl::Time expiry = context_->not_after();
  if (X509* peer = SSL_get0_peer_certificate(ssl_.get())) {
    expiry = std::min(expiry, pki::Asn1TimeToAbsl(X509_get0_notAfter(peer)));
  }
  const absl::Duration left = std::max(expiry - absl::Now(), absl::ZeroDuration());
  expiry_timer_ = pool_.env().loop.AddTimer(
      std::chrono::duration_cast<net::MonoDuration>(absl::ToChronoNanoseconds(left)), [this] {
        expiry_timer_ = 0;
        // No stream outlives the credentials its connection was established with.
        Close(/*graceful=*/true, "a certificate of the connection expired (close_on_expiry)");
      });
}

bool PooledLink::HasRoom() const {
  if (!IsOpen() || session_ == nullptr) {
    return false;
  }
  const uint32_t peer_limit =
      nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  const size_t limit = std::min<size_t>(pool_.settings().max_streams_per_connection, peer_limit);
  return streams_.size() < limit;
}

bool PooledLink::Submit(std::unique_ptr<PooledStream>& stream) {
  if (stream->authority_.empty()) {
    // An explicit listener's stream names the address this connection went to.
    stream->authority_ = connected_to_.ToString();
  }
  const nghttp2_nv headers[] = {Header(":method", "CONNECT"),
                                Header(":authority", stream->authority_)};
  nghttp2_data_provider provider{};
  provider.source.ptr = stream.get();
  provider.read_callback = PooledCallbacks::ReadApp;
  const int32_t id = nghttp2_submit_request(
      session_, nullptr, headers, sizeof(headers) / sizeof(headers[0]), &provider, stream.get());
  if (id < 0) {
    return false;
  }
  stream->id_ = id;
  stream->link_ = this;
  PooledStream* raw = stream.get();
  streams_.emplace(raw, std::move(stream));
  raw->UpdateAppInterest();  // nothing is read from the app until the peer answers 200
  return true;
}

void PooledLink::OnResponse(PooledStream& stream, int status) {
  WorkerCounters& c = pool_.env().counters;
  const int d = static_cast<int>(Direction::kOutbound);
  if (stream.wait_timer_ != 0) {
    pool_.env().loop.CancelTimer(stream.wait_timer_);
    stream.wait_timer_ = 0;
  }
  if (status == 200) {
    stream.established_ = true;
    stream.CountResult(StreamResult::kSuccess);
    c.stream_setup[d].Observe(SecondsSince(stream.start_));
    stream.last_activity_ = net::EventLoop::Now();
    net::SetNoDelay(stream.app_.get());
    ResumeData(stream);
    stream.UpdateAppInterest();
    if (stream.peer_eof_) {
      FlushToApp(stream);
    }
    return;
  }
  // Refused by the peer sidecar: the app's connection is reset, as a refused `tls` one is.
  stream.CountResult(status == 502 ? StreamResult::kAppUnavailable : StreamResult::kRefused);
  Log("pooled stream refused by the peer",
      absl::StrCat("CONNECT ", stream.authority_, " answered ", status));
  ResetStream(stream, NGHTTP2_CANCEL, /*abortive=*/true);
}

void PooledLink::OnRequest(PooledStream& stream) {
  if (stream.method_ != "CONNECT") {
    Respond(stream, 400, StreamResult::kMalformed, "not a CONNECT request");
    return;
  }
  absl::StatusOr<base::HostPort> authority = base::ParseHostPort(stream.request_authority_);
  absl::StatusOr<net::SocketAddress> named = authority.ok() && authority->host_is_ip
                                                 ? net::ToSocketAddress(*authority)
                                                 : absl::InvalidArgumentError("not an IP literal");
  if (!named.ok()) {
    Respond(stream, 400, StreamResult::kMalformed,
            absl::StrCat("CONNECT authority \"", base::TruncateForLog(stream.request_authority_),
                         "\" is not ip:port"));
    return;
  }
  const ListenerRuntime* listener = inbound_.listener;
  net::SocketAddress target;
  if (inbound_.capture != nullptr) {
    // Transparent: only this pod's own address, on a port its policy covers, and never one of
    // the sidecar's own ports.
    const uint16_t port = PortOf(*named);
    if (net::PeerAddress::From(*named).AddressBytes() !=
            net::PeerAddress::From(inbound_.arrived_at).AddressBytes() ||
        inbound_.capture->IsOwnPort(port) || port == PortOf(inbound_.arrived_at)) {
      Respond(stream, 403, StreamResult::kForbiddenTarget,
              absl::StrCat("CONNECT ", named->ToString(), " is not an app port of ",
                           net::PeerAddress::From(inbound_.arrived_at).ToString()));
      return;
    }
    listener = inbound_.capture->For(port).listener;
    target = LoopbackAddress(port);
  } else {
    // An explicit listener forwards only to its `forward`: the CONNECT must name the port the
    // connection came to (its host is what the client dialed, which NAT may have changed).
    if (local_.length == 0 || PortOf(*named) != PortOf(local_)) {
      Respond(stream, 403, StreamResult::kForbiddenTarget,
              absl::StrCat("CONNECT ", named->ToString(), " is not this listener (port ",
                           local_.length == 0 ? 0 : PortOf(local_), ")"));
      return;
    }
    if (absl::StatusOr<net::SocketAddress> forward = net::ToSocketAddress(listener->target);
        forward.ok()) {
      target = *forward;
    }
  }
  if (!listener->authorizer.Allows(*check_.peer_id)) {
    pool_.env().counters.authz_deny[listener->id].Add();
    Respond(stream, 403, StreamResult::kIdentityDenied,
            absl::StrCat(check_.peer_id->str(), " is not allowed by ", listener->name));
    return;
  }
  pool_.env().counters.authz_allow[listener->id].Add();
  if (!pool_.hooks().take_slot()) {
    Respond(stream, 503, StreamResult::kMaxConnections, "limits.max_connections reached");
    return;
  }
  stream.holds_slot_ = true;
  if (target.length != 0) {
    stream.app_addresses_ = {target};
    ConnectApp(stream);
    return;
  }
  // `forward` is a name: the worker's resolver (its cache) gives its addresses, as for a `tls`
  // connection. The callback may run at once (cached), or later from the loop.
  PooledStream* raw = &stream;
  stream.alive_ = std::make_shared<bool>(true);
  pool_.env().resolver.Resolve(
      listener->target, stream.alive_, [raw](absl::StatusOr<dns::Resolver::Addresses> found) {
        PooledLink* link = raw->link_;
        if (link == nullptr || raw->finished_) {
          return;
        }
        if (!found.ok()) {
          link->Respond(*raw, 502, StreamResult::kAppUnavailable, found.status().message());
        } else {
          raw->app_addresses_ = *std::move(found);
          link->ConnectApp(*raw);
        }
        link->Pump();  // a no-op inside the pump; the answer goes out now when called later
      });
}

void PooledLink::ConnectApp(PooledStream& stream) {
  while (stream.next_app_address_ < stream.app_addresses_.size()) {
    const net::SocketAddress& address = stream.app_addresses_[stream.next_app_address_++];
    absl::StatusOr<base::UniqueFd> fd = net::ConnectTcp(address);
    if (!fd.ok()) {
      stream.app_connect_error_ = std::string(fd.status().message());
      if (fd.status().code() == absl::StatusCode::kResourceExhausted) {
        break;  // out of descriptors: another address would not help
      }
      continue;
    }
    stream.app_ = *std::move(fd);
    stream.app_connecting_ = true;
    stream.UpdateAppInterest();
    return;
  }
  Respond(stream, 502, StreamResult::kAppUnavailable,
          stream.app_connect_error_.empty() ? "no address for the app" : stream.app_connect_error_);
}

void PooledLink::OnAppConnected(PooledStream& stream) {
  if (int err = net::SocketError(stream.app_.get()); err != 0) {
    stream.app_connect_error_ = absl::StrCat(
        "connect to the app (", stream.app_addresses_[stream.next_app_address_ - 1].ToString(),
        "): ", std::strerror(err));
    SetInterest(pool_.env().loop, stream.app_.get(), &stream, stream.in_epoll_, stream.registered_,
                0);
    stream.app_.reset();
    stream.app_connecting_ = false;
    ConnectApp(stream);
    return;
  }
  stream.app_connecting_ = false;
  const nghttp2_nv headers[] = {Header(":status", "200")};
  nghttp2_data_provider provider{};
  provider.source.ptr = &stream;
  provider.read_callback = PooledCallbacks::ReadApp;
  if (nghttp2_submit_response(session_, stream.id_, headers, 1, &provider) != 0) {
    ResetStream(stream, NGHTTP2_INTERNAL_ERROR, true);
    return;
  }
  WorkerCounters& c = pool_.env().counters;
  const int d = static_cast<int>(Direction::kInbound);
  stream.established_ = true;
  stream.CountResult(StreamResult::kSuccess);
  c.stream_setup[d].Observe(SecondsSince(stream.start_));
  c.connections_total[d].Add();
  c.connections_active[d].Add(1);
  c.pooled_streams_active[d].Add(1);
  stream.counted_active_ = true;
  stream.last_activity_ = net::EventLoop::Now();
  net::SetNoDelay(stream.app_.get());
  FlushToApp(stream);  // what arrived while the app connection was being made
  if (!stream.finished_) {
    stream.UpdateAppInterest();
  }
}

void PooledLink::Respond(PooledStream& stream, int status, StreamResult result,
                         absl::string_view why) {
  stream.CountResult(result);
  Log("pooled stream refused", why);
  const std::string text = absl::StrCat(status);
  const nghttp2_nv headers[] = {Header(":status", text)};
  if (nghttp2_submit_response(session_, stream.id_, headers, 1, nullptr) != 0) {
    QueueReset(stream.id_, NGHTTP2_REFUSED_STREAM);
  }
  FinishStream(stream, /*abortive=*/true);
}

void PooledLink::ResumeData(PooledStream& stream) {
  if (stream.data_deferred_ && session_ != nullptr) {
    stream.data_deferred_ = false;
    nghttp2_session_resume_data(session_, stream.id_);
  }
}

void PooledLink::FlushToApp(PooledStream& stream) {
  if (!stream.app_.valid() && !stream.finished_) {
    return;  // the app's name is being resolved: what arrives waits in pending_
  }
  while (stream.pending_begin_ < stream.pending_.size() && !stream.finished_ &&
         !stream.app_connecting_) {
    const ssize_t n = ::send(stream.app_.get(), stream.pending_.data() + stream.pending_begin_,
                             stream.pending_.size() - stream.pending_begin_, MSG_NOSIGNAL);
    if (n > 0) {
      stream.pending_begin_ += static_cast<size_t>(n);
      nghttp2_session_consume_stream(session_, stream.id_, static_cast<size_t>(n));
      ReleasePending(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    }
    ResetStream(stream, NGHTTP2_CONNECT_ERROR, /*abortive=*/true);  // the app is gone
    return;
  }
  if (stream.finished_ || stream.app_connecting_) {
    return;
  }
  if (stream.pending_begin_ == stream.pending_.size() && !stream.pending_.empty()) {
    std::string().swap(stream.pending_);  // an idle stream holds no buffer
    stream.pending_begin_ = 0;
  }
  if (stream.peer_eof_ && stream.pending_.empty() && !stream.app_write_shut_ &&
      stream.established_) {
    ::shutdown(stream.app_.get(), SHUT_WR);  // END_STREAM: the app sees the half-close
    stream.app_write_shut_ = true;
  }
  if (stream.app_eof_ && stream.app_write_shut_ &&
      nghttp2_session_get_stream_user_data(session_, stream.id_) == nullptr) {
    FinishStream(stream, /*abortive=*/false);  // both ways done, and nghttp2 let go of it
    return;
  }
  stream.UpdateAppInterest();
}

void PooledLink::ResetStream(PooledStream& stream, uint32_t error_code, bool abortive) {
  if (stream.finished_) {
    return;
  }
  QueueReset(stream.id_, error_code);
  if (!stream.established_) {
    stream.CountResult(StreamResult::kReset);
  }
  FinishStream(stream, abortive);
  if (!in_pump_) {
    Pump();
  }
}

void PooledLink::FinishStream(PooledStream& stream, bool abortive) {
  if (stream.finished_) {
    return;
  }
  stream.finished_ = true;
  if (session_ != nullptr && stream.id_ > 0) {
    nghttp2_session_set_stream_user_data(session_, stream.id_, nullptr);
  }
  if (session_ != nullptr && stream.pending_begin_ < stream.pending_.size()) {
    ReleasePending(stream.pending_.size() - stream.pending_begin_);  // dropped with the stream
  }
  if (stream.app_.valid()) {
    SetInterest(pool_.env().loop, stream.app_.get(), &stream, stream.in_epoll_, stream.registered_,
                0);
    if (abortive) {
      net::SetAbortiveClose(stream.app_.get());
    }
    stream.app_.reset();
  }
  auto it = streams_.find(&stream);
  if (it != streams_.end()) {
    std::unique_ptr<PooledStream> owned = std::move(it->second);
    streams_.erase(it);
    if (streams_.empty()) {
      idle_since_ = net::EventLoop::Now();
    }
    pool_.Retire(std::move(owned));
  }
  if (role_ == Role::kClient && state_ == State::kOpen) {
    pool_.LinkReady(*this);  // a stream slot is free
  }
}

void PooledLink::ProcessResets() {
  if (session_ == nullptr) {
    resets_.clear();
    return;
  }
  for (const auto& [id, code] : resets_) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, code);
  }
  resets_.clear();
}

void PooledLink::OnEvents(uint32_t events) {
  switch (state_) {
    case State::kResolving:
    case State::kClosed:
      return;
    case State::kConnecting:
      OnConnected();
      return;
    case State::kHandshaking:
      Handshake();
      return;
    case State::kOpen:
      if ((events & EPOLLOUT) != 0) {
        tls_wants_write_ = false;
      }
      if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) {
        tls_readable_ = true;
      }
      Pump();
      return;
  }
}

bool PooledLink::ReadTls() {
  // Bounded per pump: a busy link does not starve the worker's other connections.
  for (int i = 0; i < 16; ++i) {
    if (!tls_readable_ && SSL_has_pending(ssl_.get()) != 1) {
      return true;  // nothing to read until epoll says so
    }
    ERR_clear_error();
    tls_socket_reads_ = 0;
    const int n = SSL_read(ssl_.get(), pool_.scratch(), Pool::kScratchSize);
    if (n > 0) {
      if (tls_socket_reads_ > 0 && tls_socket_drained_ && SSL_has_pending(ssl_.get()) != 1) {
        tls_readable_ = false;  // nothing left in the socket or in OpenSSL's buffer
      }
      const ssize_t used = nghttp2_session_mem_recv(
          session_, reinterpret_cast<const uint8_t*>(pool_.scratch()), static_cast<size_t>(n));
      if (used < 0) {
        Close(false, absl::StrCat("HTTP/2 error from the peer: ",
                                  nghttp2_strerror(static_cast<int>(used))));
        return false;
      }
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_WANT_READ) {
      tls_readable_ = false;
      return true;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
      tls_wants_write_ = true;
      return true;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      Close(/*graceful=*/true, "the peer closed the connection");
      return false;
    }
    if (verdict_pending_) {
      verdict_pending_ = false;
      std::optional<HandshakeFailure> refusal = ClassifyRefusalAfterHandshake();
      const HandshakeResult result =
          refusal.has_value() ? refusal->result : HandshakeResult::kPeerClosed;
      pool_.env()
          .counters.handshakes[static_cast<int>(Direction::kOutbound)][static_cast<int>(result)]
          .Add();
      Close(false, refusal.has_value() ? refusal->reason
                                       : "the server ended the connection before accepting us");
      return false;
    }
    Close(false, "the connection failed (reset, or EOF without close_notify)");
    return false;
  }
  pump_again_ = true;
  return true;
}

bool PooledLink::FlushOut() {
  while (out_begin_ < out_.size() && !tls_wants_write_) {
    ERR_clear_error();
    const int n =
        SSL_write(ssl_.get(), out_.data() + out_begin_, static_cast<int>(out_.size() - out_begin_));
    if (n > 0) {
      out_begin_ += static_cast<size_t>(n);
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), n);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      tls_wants_write_ = err == SSL_ERROR_WANT_WRITE;
      break;
    }
    Close(false, "writing to the peer failed");
    return false;
  }
  return true;
}

bool PooledLink::WriteTls() {
  // Small frames (HEADERS, WINDOW_UPDATE, short DATA) are gathered into out_ and written
  // together; a large DATA frame goes from nghttp2's buffer straight to SSL_write (no copy),
  // after what out_ holds. Whatever SSL_write does not take waits in out_ (OpenSSL takes a
  // retry from another buffer with the same bytes: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
  while (!tls_wants_write_ && out_.size() - out_begin_ < kOutHighWater) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) {
      Close(false, absl::StrCat("HTTP/2: ", nghttp2_strerror(static_cast<int>(n))));
      return false;
    }
    if (n == 0) {
      break;
    }
    const char* bytes = reinterpret_cast<const char*>(data);
    size_t done = 0;
    if (static_cast<size_t>(n) >= kDirectWrite) {
      if (!FlushOut()) {
        return false;
      }
      while (out_begin_ == out_.size() && !tls_wants_write_ && done < static_cast<size_t>(n)) {
        ERR_clear_error();
        const int w = SSL_write(ssl_.get(), bytes + done, static_cast<int>(n - done));
        if (w > 0) {
          done += static_cast<size_t>(w);
          continue;
        }
        const int err = SSL_get_error(ssl_.get(), w);
        if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) {
          Close(false, "writing to the peer failed");
          return false;
        }
        tls_wants_write_ = err == SSL_ERROR_WANT_WRITE;
      }
    }
    out_.append(bytes + done, static_cast<size_t>(n) - done);
  }
  if (!FlushOut()) {
    return false;
  }
  if (out_begin_ == out_.size()) {
    out_.clear();
    out_begin_ = 0;
    if (out_.capacity() > kOutHighWater * 2) {
      std::string().swap(out_);
    }
    // More may be ready now that the buffer is empty.
    if (nghttp2_session_want_write(session_) != 0 && !tls_wants_write_) {
      pump_again_ = true;
    }
  }
  return true;
}

void PooledLink::Pump() {
  if (state_ != State::kOpen) {
    return;
  }
  if (in_pump_) {
    pump_again_ = true;
    return;
  }
  in_pump_ = true;
  int rounds = 0;
  do {
    pump_again_ = false;
    ProcessResets();
    if (!ReadTls()) {
      in_pump_ = false;
      return;
    }
    ProcessResets();
    SubmitDueGoaway();
    if (!WriteTls()) {
      in_pump_ = false;
      return;
    }
  } while (pump_again_ && ++rounds < 64 && state_ == State::kOpen);
  in_pump_ = false;
  if (state_ != State::kOpen) {
    return;
  }
  if (pump_again_) {
    // Still busy after a fair share: continue after the worker's other events.
    pool_.env().loop.Defer([this, alive = std::weak_ptr<bool>(alive_)] {
      if (!alive.expired()) {
        Pump();
      }
    });
  }
  MaybeClose();
  if (state_ == State::kOpen) {
    UpdateInterest();
  }
}

void PooledLink::UpdateInterest() {
  uint32_t events = EPOLLIN;
  if (tls_wants_write_ || out_begin_ < out_.size()) {
    events |= EPOLLOUT;
  }
  if (!SetInterest(pool_.env().loop, fd_.get(), this, in_epoll_, registered_, events)) {
    Close(false, "epoll registration failed");
  }
}

void PooledLink::MaybeClose() {
  if (session_ == nullptr) {
    return;
  }
  // A draining server waits for its final GOAWAY: a stream sent before the client saw the
  // notice may still be on its way.
  const bool drained = draining_ && streams_.empty() &&
                       (role_ == Role::kClient || goaway_sent_ || !shutdown_notice_sent_);
  const bool done = drained || (nghttp2_session_want_read(session_) == 0 &&
                                nghttp2_session_want_write(session_) == 0);
  if (done && out_begin_ == out_.size()) {
    Close(/*graceful=*/true, draining_ ? "drained" : "the session ended");
  }
}

void PooledLink::Drain() {
  if (draining_ && (goaway_sent_ || shutdown_notice_sent_)) {
    return;
  }
  draining_ = true;
  if (session_ == nullptr || goaway_sent_) {
    Pump();
    return;
  }
  if (role_ == Role::kClient) {
    goaway_sent_ = true;
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
    Pump();
    return;
  }
  shutdown_notice_sent_ = true;  // OnFrameSend sends the PING once the notice is out
  // nghttp2 sends no notice once the peer said GOAWAY: it opens nothing more anyway.
  if (peer_goaway_ || nghttp2_submit_shutdown_notice(session_) != 0) {
    SendFinalGoaway();
    return;
  }
  goaway_timer_ = pool_.env().loop.AddTimer(pool_.settings().keepalive_timeout, [this] {
    goaway_timer_ = 0;
    SendFinalGoaway();
  });
  Pump();
}

void PooledLink::SendFinalGoaway() {
  if (goaway_timer_ != 0) {
    pool_.env().loop.CancelTimer(goaway_timer_);
    goaway_timer_ = 0;
  }
  if (session_ == nullptr || goaway_sent_ || state_ != State::kOpen) {
    return;
  }
  final_goaway_due_ = true;
  Pump();
}

void PooledLink::SubmitDueGoaway() {
  if (!final_goaway_due_ || goaway_sent_ || session_ == nullptr) {
    return;
  }
  // After the pump's reads: a stream whose HEADERS were just read is named, so it is served,
  // not refused after its app connection was made.
  final_goaway_due_ = false;
  goaway_sent_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
}

bool PooledLink::MayRequeue(const PooledStream& stream) const {
  return role_ == Role::kClient && !stream.established_ && !stream.retried_ && !pool_.draining();
}

void PooledLink::RequeueUnanswered(PooledStream& stream) {
  if (session_ != nullptr && stream.id_ > 0) {
    nghttp2_session_set_stream_user_data(session_, stream.id_, nullptr);
  }
  auto it = streams_.find(&stream);
  std::unique_ptr<PooledStream> owned = std::move(it->second);
  streams_.erase(it);
  owned->link_ = nullptr;
  owned->id_ = -1;
  owned->retried_ = true;
  pool_.Requeue(std::move(owned));
}

void PooledLink::Close(bool graceful, absl::string_view why) {
  if (state_ == State::kClosed) {
    return;
  }
  const bool was_open = state_ == State::kOpen;
  state_ = State::kClosed;
  *alive_ = false;
  for (net::EventLoop::TimerId* t : {&timer_, &expiry_timer_, &goaway_timer_}) {
    if (*t != 0) {
      pool_.env().loop.CancelTimer(*t);
      *t = 0;
    }
  }
  if (!graceful || !streams_.empty()) {
    Log(was_open ? "pooled connection closed" : "pooled connection failed", why);
  }
  // Streams still open end with the connection: an established one is reset (its bytes may be
  // cut), or closed with FIN when the close is graceful (drain deadline, expiry).
  std::vector<PooledStream*> open;
  for (auto& [raw, owned] : streams_) {
    open.push_back(raw);
  }
  for (PooledStream* stream : open) {
    if (MayRequeue(*stream)) {
      // This connection failed or closed under it (a GOAWAY and close racing its HEADERS).
      RequeueUnanswered(*stream);
      continue;
    }
    if (!stream->established_) {
      stream->CountResult(role_ == Role::kClient ? StreamResult::kConnectionFailed
                                                 : StreamResult::kReset);
    }
    FinishStream(*stream, /*abortive=*/!graceful || !stream->established_);
  }
  if (was_open && session_ != nullptr) {
    if (!goaway_sent_) {
      nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
      const uint8_t* data = nullptr;
      ssize_t n = 0;
      while ((n = nghttp2_session_mem_send(session_, &data)) > 0) {
        out_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
      }
    }
    if (out_begin_ < out_.size()) {
      ERR_clear_error();
      (void)SSL_write(ssl_.get(), out_.data() + out_begin_,
                      static_cast<int>(out_.size() - out_begin_));  // best effort
    }
    if (graceful) {
      ERR_clear_error();
      SSL_shutdown(ssl_.get());
    }
    ERR_clear_error();
  }
  if (fd_.valid()) {
    SetInterest(pool_.env().loop, fd_.get(), this, in_epoll_, registered_, 0);
    if (!graceful) {
      net::SetAbortiveClose(fd_.get());
    }
    fd_.reset();
  }
  if (counted_) {
    counted_ = false;
    pool_.env().counters.pooled_connections[role_ == Role::kClient ? 1 : 0].Add(-1);
  }
  if (holds_slot_) {
    holds_slot_ = false;
    pool_.hooks().release_slot();
  }
  pool_.LinkClosed(*this);
}

// ---------------------------------------------------------------------------------------------
// Pool

struct Pool::Peer {
  const ListenerRuntime* route = nullptr;
  std::optional<net::SocketAddress> dial;  // transparent: the destination's pooled port
  std::vector<PooledLink*> links;
  std::deque<std::unique_ptr<PooledStream>> waiting;
  bool dispatch_scheduled = false;
};

Pool::Pool(ConnectionEnv& env, PoolSettings settings, Hooks hooks)
    : env_(env), settings_(settings), hooks_(std::move(hooks)), scratch_(new char[kScratchSize]) {}

Pool::~Pool() { CloseAll(); }

void Pool::CloseAll() {
  draining_ = true;  // nothing is requeued: every stream ends here
  std::vector<PooledLink*> links;
  for (auto& [raw, owned] : links_) {
    links.push_back(raw);
  }
  for (PooledLink* link : links) {
    link->Close(/*graceful=*/true, "the worker stopped");
  }
  for (auto& [key, peer] : peers_) {
    for (auto& stream : peer->waiting) {
      net::SetAbortiveClose(stream->app_.get());
    }
  }
  peers_.clear();
  links_.clear();
  retired_.clear();
  retired_links_.clear();
}

void Pool::Open(const ListenerRuntime& route, const net::SocketAddress* original_destination,
                base::UniqueFd app, net::MonoTime accepted_at) {
  auto stream = std::make_unique<PooledStream>(*this, PooledStream::Role::kOutbound, std::move(app),
                                               accepted_at);
  stream->counted_active_ = true;  // the Connection's count of the app connection moves here
  stream->holds_slot_ = true;
  env_.counters.pooled_streams_active[static_cast<int>(Direction::kOutbound)].Add(1);
  std::string key;
  std::optional<net::SocketAddress> dial;
  if (original_destination != nullptr) {
    stream->authority_ = original_destination->ToString();
    dial = WithPort(*original_destination, route.pooled_port);
    // One pool per peer sidecar: the destination's address, whatever its port.
    key = absl::StrCat(route.id, " ", dial->ToString());
  } else {
    key = absl::StrCat(route.id);
  }
  stream->peer_key_ = key;
  std::unique_ptr<Peer>& peer = peers_[key];
  if (peer == nullptr) {
    peer = std::make_unique<Peer>();
    peer->route = &route;
    peer->dial = dial;
  }
  PooledStream* raw = stream.get();
  raw->wait_timer_ = env_.loop.AddTimer(env_.connect_timeout, [this, raw] {
    raw->wait_timer_ = 0;
    OnWaitTimeout(raw);
  });
  peer->waiting.push_back(std::move(stream));
  Dispatch(key);
}

void Pool::OnWaitTimeout(PooledStream* stream) {
  if (stream->link_ != nullptr) {
    // Submitted, but no answer yet: reset it.
    stream->CountResult(StreamResult::kTimeout);
    stream->link_->ResetStream(*stream, NGHTTP2_CANCEL, /*abortive=*/true);
    return;
  }
  auto it = peers_.find(stream->peer_key_);
  if (it == peers_.end()) {
    return;
  }
  auto& waiting = it->second->waiting;
  for (auto w = waiting.begin(); w != waiting.end(); ++w) {
    if (w->get() == stream) {
      stream->CountResult(StreamResult::kTimeout);
      net::SetAbortiveClose(stream->app_.get());
      Retire(std::move(*w));
      waiting.erase(w);
      if (waiting.empty() && it->second->links.empty()) {
        peers_.erase(it);
      }
      return;
    }
  }
}

void Pool::Dispatch(const std::string& key) {
  // Links are pumped after the loop: a pump may close a link, and LinkClosed may erase the
  // Peer, so the Peer is looked up again for every stream and nothing is pumped meanwhile.
  std::vector<PooledLink*> to_pump;
  while (true) {
    auto it = peers_.find(key);
    if (it == peers_.end() || it->second->waiting.empty()) {
      break;
    }
    Peer& peer = *it->second;
    // The open connection with the fewest streams takes the next one.
    PooledLink* room = nullptr;
    bool opening = false;
    size_t usable = 0;  // open or opening, not draining
    for (PooledLink* link : peer.links) {
      if (link->HasRoom() && (room == nullptr || link->stream_count() < room->stream_count())) {
        room = link;
      }
      opening = opening || link->IsOpening();
      usable += link->IsOpen() || link->IsOpening() ? 1 : 0;
    }
    if (room == nullptr) {
      // One connection opens at a time per peer; draining ones (rotation) do not count against
      // the limit, but the total stays bounded.
      if (!opening && !draining_ && usable < settings_.max_connections_per_peer &&
          peer.links.size() < settings_.max_connections_per_peer * 2) {
        // A new connection; the streams wait for its handshake.
        auto link = std::make_unique<PooledLink>(*this, PooledLink::Role::kClient);
        PooledLink* raw = link.get();
        links_.emplace(raw, std::move(link));
        peer.links.push_back(raw);
        std::vector<net::SocketAddress> addresses;
        if (peer.dial.has_value()) {
          addresses.push_back(*peer.dial);
        } else if (absl::StatusOr<net::SocketAddress> a = net::ToSocketAddress(peer.route->target);
                   a.ok()) {
          addresses.push_back(*a);
        }
        raw->StartClient(*peer.route, key, std::move(addresses));  // may close, and erase peer
      }
      break;  // the rest wait for a free stream (or their deadline)
    }
    std::unique_ptr<PooledStream> stream = std::move(peer.waiting.front());
    peer.waiting.pop_front();
    if (!room->Submit(stream)) {
      // nghttp2 refused a new stream here (its stream ids ran out): this connection takes no
      // more, and the stream goes first in line for another.
      Requeue(std::move(stream));  // first: the waiting stream keeps the Peer (and its address)
      room->Drain();
      break;
    }
    if (std::find(to_pump.begin(), to_pump.end(), room) == to_pump.end()) {
      to_pump.push_back(room);
    }
  }
  for (PooledLink* link : to_pump) {
    link->Pump();  // retired links stay allocated until the next loop turn
  }
}

void Pool::LinkReady(PooledLink& link) {
  if (!link.peer_key().empty()) {
    ScheduleDispatch(link.peer_key());
  }
}

void Pool::ScheduleDispatch(const std::string& key) {
  // Deferred: LinkReady comes from inside nghttp2's callbacks, where submitting is unsafe.
  auto it = peers_.find(key);
  if (it == peers_.end() || it->second->waiting.empty() || it->second->dispatch_scheduled) {
    return;
  }
  it->second->dispatch_scheduled = true;
  env_.loop.Defer([this, key] {
    auto p = peers_.find(key);
    if (p != peers_.end()) {
      p->second->dispatch_scheduled = false;
      Dispatch(key);
    }
  });
}

void Pool::LinkClosed(PooledLink& link) {
  if (!link.peer_key().empty()) {
    auto it = peers_.find(link.peer_key());
    if (it != peers_.end()) {
      Peer& peer = *it->second;
      peer.links.erase(std::remove(peer.links.begin(), peer.links.end(), &link), peer.links.end());
      bool others_open = false;
      for (PooledLink* l : peer.links) {
        others_open = others_open || l->IsOpen() || l->IsOpening();
      }
      if (!link.opened() && !others_open) {
        // The connection failed (connect, handshake): the app connections waiting for it are
        // refused now, as a failed `tls` connection's app connection is, rather than each
        // retrying until its deadline.
        while (!peer.waiting.empty()) {
          std::unique_ptr<PooledStream> stream = std::move(peer.waiting.front());
          peer.waiting.pop_front();
          stream->CountResult(StreamResult::kConnectionFailed);
          net::SetAbortiveClose(stream->app_.get());
          Retire(std::move(stream));
        }
      } else if (!peer.waiting.empty()) {
        ScheduleDispatch(link.peer_key());
      }
      if (peer.links.empty() && peer.waiting.empty()) {
        peers_.erase(it);
      }
    }
  }
  RetireLink(&link);
}

void Pool::Requeue(std::unique_ptr<PooledStream> stream) {
  // Every caller requeues while the stream's link is still in its Peer, so the Peer exists; a
  // Peer made here would lack the address a mesh rule dials. Refuse rather than misroute.
  auto it = peers_.find(stream->peer_key_);
  if (it == peers_.end()) {
    stream->CountResult(StreamResult::kConnectionFailed);
    net::SetAbortiveClose(stream->app_.get());
    Retire(std::move(stream));
    return;
  }
  Peer& peer = *it->second;
  const std::string key = stream->peer_key_;
  peer.waiting.push_front(std::move(stream));
  ScheduleDispatch(key);
}

void Pool::Retire(std::unique_ptr<PooledStream> stream) {
  stream->finished_ = true;
  if (stream->wait_timer_ != 0) {
    env_.loop.CancelTimer(stream->wait_timer_);
    stream->wait_timer_ = 0;
  }
  retired_.push_back(std::move(stream));
  ScheduleRetire();
}

void Pool::ScheduleRetire() {
  if (!retire_scheduled_) {
    retire_scheduled_ = true;
    env_.loop.Defer([this] {
      retire_scheduled_ = false;
      retired_.clear();
      retired_links_.clear();
    });
  }
}

void Pool::RetireLink(PooledLink* link) {
  auto it = links_.find(link);
  if (it == links_.end()) {
    return;
  }
  retired_links_.push_back(std::move(it->second));
  links_.erase(it);
  ScheduleRetire();
}

void Pool::Adopt(const InboundRoute& route, base::UniqueFd fd, SslPtr ssl, PeerCheck check,
                 std::shared_ptr<const TlsContext> context, net::PeerAddress peer) {
  auto link = std::make_unique<PooledLink>(*this, PooledLink::Role::kServer);
  PooledLink* raw = link.get();
  links_.emplace(raw, std::move(link));
  absl::Status s = raw->StartServer(route, std::move(fd), std::move(ssl), std::move(check),
                                    std::move(context), peer);
  if (!s.ok()) {
    raw->Close(false, s.message());
  }
}

void Pool::Drain() {
  draining_ = true;
  std::vector<PooledLink*> links;
  for (auto& [raw, owned] : links_) {
    links.push_back(raw);
  }
  for (PooledLink* link : links) {
    link->Drain();
  }
}

namespace {

// SameCredentials: the same certificate and trust bundle (a context republished unchanged, as
// when certmgr's trust-bundle stream repeats the bundle, moves no connection).
bool SameCredentials(const TlsContext& a, const TlsContext& b) {
  const pki::CredentialBundle& x = a.bundle();
  const pki::CredentialBundle& y = b.bundle();
  if (x.chain.empty() || y.chain.empty() || x.chain[0].ToDer() != y.chain[0].ToDer() ||
      x.trust_bundle.size() != y.trust_bundle.size()) {
    return false;
  }
  for (size_t i = 0; i < x.trust_bundle.size(); ++i) {
    if (x.trust_bundle[i].ToDer() != y.trust_bundle[i].ToDer()) {
      return false;
    }
  }
  return true;
}

}  // namespace

void Pool::OnNewCredentials() {
  std::shared_ptr<const TlsContext> current = env_.tls.Snapshot();
  std::vector<PooledLink*> stale;
  for (auto& [raw, owned] : links_) {
    // A publish can reach this worker after a link took the same context (the post races the
    // first app connections): only links whose credentials differ from the current ones move,
    // open or still handshaking (Drain keeps those from taking streams once open).
    if (current != nullptr && raw->context() != nullptr &&
        raw->generation() != current->generation() && !SameCredentials(*raw->context(), *current) &&
        (raw->IsOpen() || raw->IsOpening())) {
      stale.push_back(raw);
    }
  }
  for (PooledLink* link : stale) {
    link->Drain();
  }
}

}  // namespace meshtls::sidecar

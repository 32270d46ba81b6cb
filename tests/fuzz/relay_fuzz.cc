// Fuzz target: the relay state machine (sidecar/proxy/connection.cc). One input is one proxied
// connection, inbound or outbound, driven through a real EventLoop and real loopback TCP sockets
// by a script of reads, writes, half-closes, closes, resets and raw bytes on both of its sides:
// the remote peer (a TLS endpoint, or raw bytes) and the local app (plain TCP). The loop is
// stepped by the driver (EventLoop::RunOnce), so nothing runs on another thread and an input
// replays the same way.
//
// What it checks, beyond the sanitizers:
//   - every byte either side receives is the next byte the other side sent (no loss, reorder,
//     duplication or foreign byte in the middle of a stream);
//   - an unauthorized or unverifiable peer, or one that speaks no TLS, never gets a connection
//     to the app (inbound) and never receives an app byte (outbound), and is never counted a
//     successful handshake;
//   - once both ends have closed, the connection closes without waiting for a timer (bounded),
//     and its active-connection gauge is back to zero (a refused peer's lingering close, too,
//     ends when the peer closes, not at its 2 s bound);
//   - a clean run (authorized peer; only graceful writes, reads and half-closes) delivers
//     every byte both ways, ends both ways with a graceful EOF, and the byte counters match.
//
// Input: see relay_script.h (byte 0 the direction and the kind of peer, then operations with
// their arguments, at most kMaxOps of them).

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "common/net/event_loop.h"
#include "common/net/socket.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/proxy/connection.h"
#include "sidecar/tls/tls_context.h"
#include "tests/fuzz/relay_script.h"
#include "tests/testing/test_ca.h"

namespace {

using namespace meshtls;
using namespace meshtls::sidecar;

constexpr char kTrustDomain[] = "fuzz.test";
constexpr char kSidecarId[] = "spiffe://fuzz.test/ns/mesh/sa/sidecar";
constexpr char kPeerId[] = "spiffe://fuzz.test/ns/mesh/sa/peer";
constexpr char kStrangerId[] = "spiffe://fuzz.test/ns/mesh/sa/stranger";
constexpr size_t kMaxOps = 200;
constexpr uint64_t kMaxStreamBytes = 1 << 20;  // per direction per input
constexpr size_t kChunk = 16 * 1024;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "relay_fuzz: %s\n", what.c_str());
  std::abort();
}

// Byte `offset` of the stream one side sends (0 peer->app, 1 app->peer). Depends on the
// offset, so a lost, repeated or reordered byte shows up.
uint8_t StreamByte(uint64_t offset, int stream) {
  return static_cast<uint8_t>(((offset * 2654435761u) >> 11) ^ (offset >> 8) ^ (stream * 0x5a));
}

using fuzz::RelayOp;
using PeerKind = fuzz::RelayPeer;
constexpr const char* kPeerKindNames[] = {"authorized", "not-allowed", "untrusted", "raw"};

// World is made once per process: certificates (the sidecar's, and the peer's in each kind),
// and the TLS contexts.
struct World {
  testing::TestCa ca{kTrustDomain, absl::Now() - absl::Hours(1)};
  testing::TestCa other_ca{kTrustDomain, absl::Now() - absl::Hours(1)};
  std::shared_ptr<const TlsContext> sidecar;
  std::shared_ptr<const TlsContext> peer[3];  // by PeerKind, TLS kinds only
  TlsContextStore store;
  PeerAuthorizer allow_peer = Authorizer(kPeerId);
  PeerAuthorizer expect_sidecar = Authorizer(kSidecarId);

  World() {
    // As in the sidecar's main(): OpenSSL writes to sockets with write(), and a peer that is
    // gone must be an EPIPE, not a signal.
    std::signal(SIGPIPE, SIG_IGN);
    sidecar = Context(ca.Issue(kSidecarId, absl::Hours(48)));
    peer[0] = Context(ca.Issue(kPeerId, absl::Hours(48)));
    peer[1] = Context(ca.Issue(kStrangerId, absl::Hours(48)));
    peer[2] = Context(other_ca.Issue(kPeerId, absl::Hours(48)));
    store.Publish(sidecar);
  }
  std::shared_ptr<const TlsContext> Context(const testing::IssuedLeaf& leaf) {
    pki::CredentialBundle bundle{.chain = leaf.chain, .key = leaf.key, .trust_bundle = {}};
    bundle.trust_bundle.push_back(ca.root());
    auto context = TlsContext::Create(bundle, kTrustDomain, TlsSettings{}, 1);
    if (!context.ok()) {
      Fail(std::string(context.status().message()));
    }
    return *context;
  }
  static PeerAuthorizer Authorizer(const std::string& id) {
    auto authorizer = PeerAuthorizer::Create({id});
    if (!authorizer.ok()) {
      Fail(std::string(authorizer.status().message()));
    }
    return *std::move(authorizer);
  }
};

// Endpoint is the driver's end of one side of the connection.
struct Endpoint {
  const char* name = "";
  int send_stream = 0;  // which StreamByte sequence this end sends
  base::UniqueFd fd;
  SslPtr ssl;  // the peer in a TLS kind, once its socket exists
  PeerCheck check;
  bool handshake_done = false;
  bool tls_failed = false;    // the driver's SSL object hit an error (alert, reset, garbage)
  uint64_t queued = 0;        // stream bytes the script asked this end to send
  uint64_t sent = 0;          // stream bytes accepted by the socket (or SSL_write)
  uint64_t received = 0;      // stream bytes received, each checked
  bool graceful_eof = false;  // FIN (plain) or close_notify (TLS) received
  bool read_error = false;    // a reset, or EOF without close_notify
  bool close_notify_sent = false;
  bool fin_sent = false;
  bool closed = false;    // the driver closed (or reset) this end's socket
  bool accepted = false;  // the socket exists (the sidecar connected to it, or we did)

  bool Finished() const { return !accepted || closed || graceful_eof || read_error || tls_failed; }
};

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

class Driver {
 public:
  Driver(World& world, bool inbound, PeerKind kind, bool refuse_upstream)
      : world_(world),
        inbound_(inbound),
        kind_(kind),
        refuse_upstream_(refuse_upstream),
        counters_(1, 0) {
    peer_.name = "peer";
    peer_.send_stream = 0;
    app_.name = "app";
    app_.send_stream = 1;
  }

  ~Driver() {
    connection_.reset();  // before the loop it is registered with
  }

  void Start() {
    auto loop = net::EventLoop::Create();
    if (!loop.ok()) {
      Fail("EventLoop::Create failed");
    }
    loop_ = *std::move(loop);
    // Idle: the targets are IP literals, answered without DNS.
    auto resolver = dns::Resolver::Create(*loop_, {});
    if (!resolver.ok()) {
      Fail("Resolver::Create failed");
    }
    resolver_ = *std::move(resolver);
    listen_ = Listen();
    const uint16_t port = net::LocalPort(listen_.get());
    listener_ = std::make_unique<ListenerRuntime>(
        ListenerRuntime{.id = 0,
                        .direction = inbound_ ? Direction::kInbound : Direction::kOutbound,
                        .name = "fuzz",
                        .target = *base::ParseHostPort("127.0.0.1:" + std::to_string(port)),
                        .authorizer = world_.allow_peer});  // inbound `allow`, outbound `expect`
    env_ = std::make_unique<ConnectionEnv>(
        ConnectionEnv{.loop = *loop_,
                      .resolver = *resolver_,
                      .counters = counters_,
                      .buffers = buffers_,
                      .tls = world_.store,
                      // Far beyond one input's run: no timer may be what ends a connection here.
                      .handshake_timeout = std::chrono::seconds(60),
                      .connect_timeout = std::chrono::seconds(60),
                      .idle_timeout = std::chrono::seconds(600),
                      .close_on_expiry = true,
                      .on_closed = [this](uint64_t) { connection_closed_ = true; },
                      .may_log = [] { return std::getenv("RELAY_FUZZ_VERBOSE") != nullptr; },
                      // A refused peer's lingering close runs to its end here: nothing
                      // needs its place.
                      .on_lingering = nullptr,
                      .mesh_sessions = nullptr,
                      .pool = nullptr,
                      .on_handed_off = nullptr});
    // The accepted side: our own connection to the listener, accepted at once.
    Endpoint& accepted_side = inbound_ ? peer_ : app_;
    base::UniqueFd ours = ConnectBlocking(port);
    sockaddr_storage from{};
    socklen_t from_length = sizeof(from);
    base::UniqueFd theirs(
        ::accept4(listen_.get(), reinterpret_cast<sockaddr*>(&from), &from_length, SOCK_NONBLOCK));
    if (!theirs.valid()) {
      Fail("accept failed");
    }
    SetNonBlocking(ours.get());
    accepted_side.fd = std::move(ours);
    accepted_side.accepted = true;
    if (inbound_) {
      MakePeerSsl(/*server=*/false);
    }
    if (refuse_upstream_) {
      listen_.reset();  // the sidecar's connect is refused
      clean_ = false;
    }
    connection_ = std::make_unique<Connection>(
        1, *env_, *listener_, nullptr, std::move(theirs),
        net::PeerAddress::From(reinterpret_cast<sockaddr*>(&from), from_length));
    connection_->Start();
    Step(0);
  }

  // Run interprets the script.
  void Run(const uint8_t* data, size_t size) {
    size_t i = 0;
    auto next = [&]() -> uint8_t { return i < size ? data[i++] : 0; };
    auto length = [&]() -> uint64_t {  // two bytes, high first: length-1 (mod 64 KiB)
      const uint64_t high = next();
      return ((high << 8) | next()) + 1;
    };
    for (size_t ops = 0; i < size && ops < kMaxOps; ++ops) {
      const uint8_t op = next();
      switch (static_cast<RelayOp>(op % fuzz::kRelayOpCount)) {
        case RelayOp::kPeerWrite:
          Queue(peer_, length());
          break;
        case RelayOp::kAppWrite:
          Queue(app_, length());
          break;
        case RelayOp::kPeerRead:
          Read(peer_, length());
          break;
        case RelayOp::kAppRead:
          Read(app_, length());
          break;
        case RelayOp::kPeerCloseNotify:
          CloseNotify();
          break;
        case RelayOp::kPeerFin:
          Fin(peer_);
          break;
        case RelayOp::kPeerReset:
          Reset(peer_);
          break;
        case RelayOp::kAppFin:
          Fin(app_);
          break;
        case RelayOp::kAppReset:
          Reset(app_);
          break;
        case RelayOp::kPeerRaw: {  // between or inside the peer's records
          const size_t n = std::min<size_t>(next() % 64 + 1, size - std::min(i, size));
          if (peer_.accepted && !peer_.closed && !peer_.fin_sent) {
            [[maybe_unused]] ssize_t w = ::send(peer_.fd.get(), data + i, n, MSG_NOSIGNAL);
            if (kind_ != PeerKind::kRaw) {
              clean_ = false;
            }
          }
          i += n;
          break;
        }
        case RelayOp::kSteps: {
          const int steps = next() % 16 + 1;
          for (int s = 0; s < steps; ++s) {
            Step(0);
          }
          break;
        }
        case RelayOp::kAppClose:
          Close(app_);
          break;
        case RelayOp::kPeerClose:
          Close(peer_);
          break;
        case RelayOp::kRefuseUpstream:
          if (listen_.valid()) {
            listen_.reset();
            if (!(inbound_ ? app_ : peer_).accepted) {
              clean_ = false;
            }
          }
          break;
        case RelayOp::kCount:
          break;
      }
      Step(0);
    }
  }

  // Finish ends both sides gracefully (what is still open sends what it has, then half-closes),
  // reads everything, and requires the connection to close; then checks the outcome.
  void Finish() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (int round = 0;; ++round) {
      for (Endpoint* e : {&peer_, &app_}) {
        Read(*e, kMaxStreamBytes);
        if (!e->accepted || e->closed || e->fin_sent) {
          continue;
        }
        if (e == &peer_ && peer_.ssl != nullptr && !peer_.handshake_done && !peer_.tls_failed) {
          continue;  // the handshake is still going: FIN now would make it a truncation
        }
        if (e->sent == e->queued || Blocked(*e)) {
          if (e == &peer_) {
            CloseNotify();
          }
          Fin(*e);
        }
      }
      if (connection_closed_ && peer_.Finished() && app_.Finished() && round > 0) {
        break;
      }
      if (round > 20000 || std::chrono::steady_clock::now() > deadline) {
        Fail(std::string("the connection did not close after both ends closed: closed=") +
             (connection_closed_ ? "yes" : "no") + " peer " + Describe(peer_) + "; app " +
             Describe(app_));
      }
      Step(1);
    }
    if (std::getenv("RELAY_FUZZ_VERBOSE") != nullptr) {  // what an input did, for seed writers
      std::fprintf(stderr, "%s %s clean=%d handshake_ok=%d\n  peer %s\n  app %s\n",
                   inbound_ ? "inbound" : "outbound", kPeerKindNames[static_cast<int>(kind_)],
                   clean_ ? 1 : 0,
                   static_cast<int>(counters_
                                        .handshakes[static_cast<int>(listener_->direction)]
                                                   [static_cast<int>(HandshakeResult::kSuccess)]
                                        .Get()),
                   Describe(peer_).c_str(), Describe(app_).c_str());
    }
    Check();
  }

 private:
  static std::string Describe(const Endpoint& e) {
    return "accepted=" + std::to_string(e.accepted) + " closed=" + std::to_string(e.closed) +
           " handshake_done=" + std::to_string(e.handshake_done) +
           " tls_failed=" + std::to_string(e.tls_failed) + " queued=" + std::to_string(e.queued) +
           " sent=" + std::to_string(e.sent) + " received=" + std::to_string(e.received) +
           " eof=" + std::to_string(e.graceful_eof) +
           " read_error=" + std::to_string(e.read_error) +
           " fin_sent=" + std::to_string(e.fin_sent);
  }

  base::UniqueFd Listen() {
    base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!fd.valid() || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) ||
        ::listen(fd.get(), 8) != 0) {
      Fail("cannot listen on 127.0.0.1");
    }
    return fd;
  }

  static base::UniqueFd ConnectBlocking(uint16_t port) {
    base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!fd.valid() ||
        ::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      Fail("cannot connect to the driver's listener");
    }
    return fd;
  }

  void MakePeerSsl(bool server) {
    if (kind_ == PeerKind::kRaw) {
      return;
    }
    const TlsContext& context = *world_.peer[static_cast<int>(kind_)];
    peer_.check.authorizer = &world_.expect_sidecar;
    auto ssl = context.NewSsl(server, peer_.fd.get(), &peer_.check);
    if (!ssl.ok()) {
      Fail("NewSsl failed");
    }
    peer_.ssl = *std::move(ssl);
    // The driver retries a blocked write with a possibly longer span of the same stream.
    SSL_set_mode(peer_.ssl.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  }

  // Step runs one loop batch and then lets the driver's ends make the progress they can
  // without being asked (accept, handshake, pending writes).
  void Step(int wait_ms) {
    loop_->RunOnce(wait_ms);
    Pump();
  }

  void Pump() {
    Endpoint& dialed = inbound_ ? app_ : peer_;  // the side the sidecar connects to
    if (!dialed.accepted && !dialed.closed && listen_.valid()) {
      base::UniqueFd fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK));
      if (fd.valid()) {
        dialed.fd = std::move(fd);
        dialed.accepted = true;
        if (!inbound_) {
          MakePeerSsl(/*server=*/true);
        }
        if (inbound_ && kind_ != PeerKind::kAuthorized) {
          Fail("the sidecar connected to the app for a peer it must not authorize");
        }
      }
    }
    if (peer_.ssl != nullptr && peer_.accepted && !peer_.closed && !peer_.handshake_done &&
        !peer_.tls_failed) {
      ERR_clear_error();
      const int rc = SSL_do_handshake(peer_.ssl.get());
      if (rc == 1) {
        peer_.handshake_done = true;
      } else if (const int err = SSL_get_error(peer_.ssl.get(), rc);
                 err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        peer_.tls_failed = true;
        clean_ = false;
      }
      ERR_clear_error();
    }
    Flush(peer_);
    Flush(app_);
  }

  bool CanSend(const Endpoint& e) const {
    if (!e.accepted || e.closed || e.fin_sent) {
      return false;
    }
    if (&e == &peer_) {
      return kind_ != PeerKind::kRaw && peer_.handshake_done && !peer_.tls_failed &&
             !peer_.close_notify_sent;
    }
    return true;
  }

  // Blocked: this end can never send again (so Finish need not wait for its queue).
  bool Blocked(const Endpoint& e) const {
    return e.closed || e.fin_sent || e.read_error ||
           (&e == &peer_ && (kind_ == PeerKind::kRaw || e.tls_failed || e.close_notify_sent));
  }

  void Queue(Endpoint& e, uint64_t n) {
    if (e.fin_sent || e.closed || (&e == &peer_ && e.close_notify_sent)) {
      return;  // the script writes after its own close: nothing to send
    }
    e.queued = std::min(e.queued + n, kMaxStreamBytes);
    Flush(e);
  }

  void Flush(Endpoint& e) {
    char buffer[kChunk];
    while (e.sent < e.queued && CanSend(e)) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(e.queued - e.sent, kChunk));
      for (size_t k = 0; k < n; ++k) {
        buffer[k] = static_cast<char>(StreamByte(e.sent + k, e.send_stream));
      }
      if (e.ssl != nullptr) {
        ERR_clear_error();
        const int w = SSL_write(e.ssl.get(), buffer, static_cast<int>(n));
        if (w > 0) {
          e.sent += static_cast<uint64_t>(w);
          continue;
        }
        const int err = SSL_get_error(e.ssl.get(), w);
        ERR_clear_error();
        if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) {
          e.tls_failed = true;
          clean_ = false;
        }
        return;
      }
      const ssize_t w = ::send(e.fd.get(), buffer, n, MSG_NOSIGNAL);
      if (w > 0) {
        e.sent += static_cast<uint64_t>(w);
        continue;
      }
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        clean_ = false;  // the sidecar reset this side
        e.read_error = true;
      }
      return;
    }
  }

  void Read(Endpoint& e, uint64_t limit) {
    if (!e.accepted || e.closed || e.graceful_eof || e.read_error || e.tls_failed) {
      return;
    }
    const int stream = 1 - e.send_stream;
    const uint64_t expected_max = (&e == &peer_ ? app_ : peer_).sent;
    char buffer[kChunk];
    uint64_t total = 0;
    while (total < limit) {
      const int want = static_cast<int>(std::min<uint64_t>(limit - total, kChunk));
      ssize_t n;
      if (&e == &peer_ && kind_ == PeerKind::kRaw) {
        // A raw peer reads TLS records (alerts, the server's flight), not the stream.
        n = ::recv(e.fd.get(), buffer, want, 0);
        if (n > 0) {
          total += static_cast<uint64_t>(n);
          continue;
        }
        if (n == 0) {
          e.graceful_eof = true;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          e.read_error = true;
        }
        return;
      }
      if (e.ssl != nullptr) {
        if (!e.handshake_done) {
          return;
        }
        ERR_clear_error();
        const int r = SSL_read(e.ssl.get(), buffer, want);
        if (r <= 0) {
          const int err = SSL_get_error(e.ssl.get(), r);
          ERR_clear_error();
          if (err == SSL_ERROR_ZERO_RETURN) {
            e.graceful_eof = true;
          } else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
            e.read_error = true;
          }
          return;
        }
        n = r;
      } else {
        n = ::recv(e.fd.get(), buffer, want, 0);
        if (n == 0) {
          e.graceful_eof = true;
          return;
        }
        if (n < 0) {
          if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            e.read_error = true;
          }
          return;
        }
      }
      for (ssize_t k = 0; k < n; ++k) {
        if (static_cast<uint8_t>(buffer[k]) != StreamByte(e.received + k, stream)) {
          Fail(std::string(e.name) + " received a wrong byte at offset " +
               std::to_string(e.received + k));
        }
      }
      e.received += static_cast<uint64_t>(n);
      total += static_cast<uint64_t>(n);
      if (e.received > expected_max) {
        Fail(std::string(e.name) + " received more bytes than the other side sent");
      }
    }
  }

  void CloseNotify() {
    if (peer_.ssl == nullptr || !peer_.handshake_done || peer_.tls_failed || peer_.closed ||
        peer_.close_notify_sent || peer_.fin_sent) {
      return;
    }
    ERR_clear_error();
    SSL_shutdown(peer_.ssl.get());  // sends close_notify; the reply is read as EOF later
    ERR_clear_error();
    peer_.close_notify_sent = true;
  }

  void Fin(Endpoint& e) {
    if (!e.accepted || e.closed || e.fin_sent) {
      return;
    }
    if (&e == &peer_ && kind_ != PeerKind::kRaw && !peer_.close_notify_sent) {
      clean_ = false;  // a TLS stream ended without close_notify reads as truncated
    }
    ::shutdown(e.fd.get(), SHUT_WR);
    e.fin_sent = true;
  }

  void Reset(Endpoint& e) {
    if (!e.accepted || e.closed) {
      return;
    }
    net::SetAbortiveClose(e.fd.get());
    Close(e);
  }

  void Close(Endpoint& e) {
    if (!e.accepted || e.closed) {
      return;
    }
    clean_ = false;  // data in flight to a closed socket draws a reset
    e.ssl.reset();
    e.fd.reset();
    e.closed = true;
  }

  void Check() {
    const int d = static_cast<int>(listener_->direction);
    const uint64_t successes =
        counters_.handshakes[d][static_cast<int>(HandshakeResult::kSuccess)].Get();
    uint64_t outcomes = 0;
    for (int r = 0; r < kHandshakeResultCount; ++r) {
      outcomes += counters_.handshakes[d][r].Get();
    }
    uint64_t refusals = 0;
    for (int r = 0; r < kRefusedReasonCount; ++r) {
      refusals += counters_.refused[d][r].Get();
    }
    if (outcomes > 1) {
      Fail("one connection counted " + std::to_string(outcomes) + " handshake outcomes");
    }
    if (outcomes + refusals == 0) {
      Fail("the connection ended with neither a handshake outcome nor a refusal counted");
    }
    if (counters_.connections_active[d].Get() != 0) {
      Fail("the active-connection gauge is not back to zero");
    }
    if (kind_ != PeerKind::kAuthorized) {
      if (successes != 0) {
        Fail("a peer that must be refused was counted as a successful handshake");
      }
      if (inbound_ && app_.accepted) {
        Fail("the app got a connection for a refused peer");
      }
      if (!inbound_ && peer_.received != 0) {
        Fail("a refused server received app bytes");
      }
    }
    if (!clean_ || kind_ != PeerKind::kAuthorized) {
      return;
    }
    // A clean run: every byte both ways, graceful ends, counters that agree.
    if (successes != 1 || !peer_.handshake_done) {
      Fail("a clean run did not complete its handshake");
    }
    if (app_.received != peer_.sent || peer_.received != app_.sent) {
      Fail("a clean run lost bytes: peer " + Describe(peer_) + "; app " + Describe(app_));
    }
    if (!app_.graceful_eof || !peer_.graceful_eof) {
      Fail("a clean run did not end with a graceful EOF both ways: peer " + Describe(peer_) +
           "; app " + Describe(app_));
    }
    if (counters_.bytes_received[d].Get() != peer_.sent ||
        counters_.bytes_sent[d].Get() != app_.sent) {
      Fail("the byte counters disagree with what was relayed");
    }
  }

  World& world_;
  const bool inbound_;
  const PeerKind kind_;
  const bool refuse_upstream_;
  bool clean_ = true;
  bool connection_closed_ = false;
  WorkerCounters counters_;
  BufferPool buffers_;
  std::unique_ptr<net::EventLoop> loop_;
  std::unique_ptr<dns::Resolver> resolver_;  // after loop_: destroyed before it
  std::unique_ptr<ConnectionEnv> env_;
  std::unique_ptr<ListenerRuntime> listener_;
  base::UniqueFd listen_;
  Endpoint peer_;
  Endpoint app_;
  std::unique_ptr<Connection> connection_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();  // certificates and contexts for the whole run
  if (size == 0) {
    return 0;
  }
  const bool inbound = (data[0] & 1) == 0;
  const auto kind = static_cast<PeerKind>((data[0] >> 1) & 3);
  const bool refuse_upstream = (data[0] & 8) != 0;
  Driver driver(*world, inbound, kind, refuse_upstream);
  driver.Start();
  driver.Run(data + 1, size - 1);
  driver.Finish();
  return 0;
}

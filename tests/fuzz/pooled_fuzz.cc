// Fuzz target: the inbound HTTP/2 path of the pooled transport (sidecar/proxy/pooled.cc). One
// input is what an authenticated peer sends after a real mutual-TLS handshake that selected
// ALPN h2: the bytes go to a real inbound Connection, which hands the connection to a Pool, on a
// real EventLoop stepped by the driver (nothing runs on another thread). Streams the input opens
// reach a local echo app on loopback.
//
// What it checks, beyond the sanitizers: whatever the bytes, once the peer has closed, the pooled
// connection and every stream end within a bounded number of loop steps, and the gauges of
// connections, streams and app connections are back to zero.
//
// Input: byte 0's low bit prepends the HTTP/2 client preface and an empty SETTINGS frame (so
// that most inputs get past the preface); the rest is sent as TLS application data in chunks
// whose sizes come from the input, with loop steps between them. "127.0.0.1:00000" anywhere in
// the input is replaced by the inbound listener's own address (the only CONNECT target an
// explicit listener serves), so seeds can name it.

#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/net/event_loop.h"
#include "common/net/socket.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/proxy/connection.h"
#include "sidecar/proxy/pooled.h"
#include "sidecar/tls/tls_context.h"
#include "tests/testing/test_ca.h"

namespace {

using namespace meshtls;
using namespace meshtls::sidecar;

constexpr char kTrustDomain[] = "fuzz.test";
constexpr char kSidecarId[] = "spiffe://fuzz.test/ns/mesh/sa/sidecar";
constexpr char kPeerId[] = "spiffe://fuzz.test/ns/mesh/sa/peer";
constexpr char kPlaceholder[] = "127.0.0.1:00000";

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "pooled_fuzz: %s\n", what.c_str());
  std::abort();
}

struct World {
  testing::TestCa ca{kTrustDomain, absl::Now() - absl::Hours(1)};
  std::shared_ptr<const TlsContext> sidecar;
  std::shared_ptr<const TlsContext> peer;
  TlsContextStore store;
  PeerAuthorizer allow_peer = *PeerAuthorizer::Create({kPeerId});
  PeerAuthorizer expect_sidecar = *PeerAuthorizer::Create({kSidecarId});

  World() {
    std::signal(SIGPIPE, SIG_IGN);
    sidecar = Context(ca.Issue(kSidecarId, absl::Hours(48)));
    peer = Context(ca.Issue(kPeerId, absl::Hours(48)));
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
};

base::UniqueFd ListenLoopback() {
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (!fd.valid() || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(fd.get(), 64) != 0) {
    Fail("listen failed");
  }
  return fd;
}

class Driver {
 public:
  explicit Driver(World& world) : world_(world), counters_(1, 0) {}
  ~Driver() {
    pool_.reset();  // streams and links before the loop they are registered with
    connection_.reset();
  }

  void Start() {
    loop_ = *net::EventLoop::Create();
    resolver_ = *dns::Resolver::Create(*loop_, {});
    app_listen_ = ListenLoopback();
    sidecar_listen_ = ListenLoopback();
    listener_ = std::make_unique<ListenerRuntime>(ListenerRuntime{
        .id = 0,
        .direction = Direction::kInbound,
        .name = "fuzz",
        .target =
            *base::ParseHostPort("127.0.0.1:" + std::to_string(net::LocalPort(app_listen_.get()))),
        .authorizer = world_.allow_peer});
    env_ = std::make_unique<ConnectionEnv>(
        ConnectionEnv{.loop = *loop_,
                      .resolver = *resolver_,
                      .counters = counters_,
                      .buffers = buffers_,
                      .tls = world_.store,
                      .handshake_timeout = std::chrono::seconds(60),
                      .connect_timeout = std::chrono::seconds(60),
                      .idle_timeout = std::chrono::seconds(600),
                      .close_on_expiry = true,
                      .on_closed = [](uint64_t) {},
                      .may_log = [] { return std::getenv("POOLED_FUZZ_VERBOSE") != nullptr; },
                      .on_lingering = nullptr,
                      .mesh_sessions = nullptr,
                      .pool = nullptr,
                      .on_handed_off = [](uint64_t) {}});
    pool_ = std::make_unique<Pool>(*env_, PoolSettings{.max_streams_per_connection = 16},
                                   Pool::Hooks{.take_slot = [this] { return ++slots_ <= 64; },
                                               .release_slot = [this] { --slots_; }});
    env_->pool = pool_.get();

    peer_fd_ = base::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(net::LocalPort(sidecar_listen_.get()));
    if (::connect(peer_fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      Fail("connect failed");
    }
    ::fcntl(peer_fd_.get(), F_SETFL, O_NONBLOCK);
    sockaddr_storage from{};
    socklen_t from_length = sizeof(from);
    base::UniqueFd accepted(::accept4(sidecar_listen_.get(), reinterpret_cast<sockaddr*>(&from),
                                      &from_length, SOCK_NONBLOCK));
    if (!accepted.valid()) {
      Fail("accept failed");
    }
    peer_ssl_ = *world_.peer->NewSsl(/*server=*/false, peer_fd_.get(), &peer_check_);
    peer_check_.authorizer = &world_.expect_sidecar;
    SSL_set_alpn_protos(peer_ssl_.get(), kPooledAlpn, kMeshtlsH2AlpnLength);
    connection_ = std::make_unique<Connection>(
        1, *env_, *listener_, nullptr, std::move(accepted),
        net::PeerAddress::From(reinterpret_cast<sockaddr*>(&from), from_length));
    connection_->Start();
    for (int i = 0; i < 2000; ++i) {
      ERR_clear_error();
      if (SSL_do_handshake(peer_ssl_.get()) == 1) {
        return;
      }
      Step();
    }
    Fail("the handshake did not complete");
  }

  void Run(const uint8_t* data, size_t size) {
    std::string input(reinterpret_cast<const char*>(data), size);
    const std::string own = "127.0.0.1:" + std::to_string(net::LocalPort(sidecar_listen_.get()));
    if (own.size() == sizeof(kPlaceholder) - 1) {
      for (size_t at = input.find(kPlaceholder); at != std::string::npos;
           at = input.find(kPlaceholder, at + 1)) {
        input.replace(at, own.size(), own);
      }
    }
    std::string bytes;
    size_t i = 0;
    if (!input.empty() && (static_cast<uint8_t>(input[0]) & 1) != 0) {
      bytes = std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) +
              std::string("\0\0\0\4\0\0\0\0\0", 9);
    }
    i = input.empty() ? 0 : 1;
    bytes += input.substr(i);
    // Chunk sizes: the input's own bytes, 1..256.
    size_t sent = 0;
    for (size_t k = 0; sent < bytes.size() && k < 4096; ++k) {
      const size_t n =
          std::min<size_t>(bytes.size() - sent, static_cast<uint8_t>(bytes[k % bytes.size()]) + 1);
      Write(bytes.data() + sent, n);
      sent += n;
      Step();
      Drain();
    }
  }

  void Finish() {
    ERR_clear_error();
    SSL_shutdown(peer_ssl_.get());
    ::shutdown(peer_fd_.get(), SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (int round = 0; round < 20000; ++round) {
      Step();
      Drain();
      ServeApps();
      if (round == 0 && std::getenv("POOLED_FUZZ_VERBOSE") != nullptr) {
        uint64_t results[kStreamResultCount];
        std::string line;
        for (int r = 0; r < kStreamResultCount; ++r) {
          results[r] = counters_.pooled_streams[0][r].Get();
          line += std::string(" ") + kStreamResultNames[r] + "=" + std::to_string(results[r]);
        }
        std::fprintf(stderr, "pooled_fuzz: streams%s\n", line.c_str());
      }
      if (round > 2 && counters_.pooled_connections[0].Get() == 0 &&
          counters_.pooled_streams_active[0].Get() == 0 && slots_ == 0 &&
          counters_.connections_active[0].Get() == 0) {
        return;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        break;
      }
    }
    Fail("the pooled connection did not end after the peer closed: connections=" +
         std::to_string(counters_.pooled_connections[0].Get()) +
         " streams=" + std::to_string(counters_.pooled_streams_active[0].Get()) +
         " slots=" + std::to_string(slots_));
  }

 private:
  void Step() {
    loop_->RunOnce(0);
    ServeApps();
  }
  void Write(const char* data, size_t n) {
    ERR_clear_error();
    (void)SSL_write(peer_ssl_.get(), data, static_cast<int>(n));  // blocked or closed: dropped
  }
  // Drain reads (and drops) what the sidecar sends the peer, so it never blocks on us.
  void Drain() {
    char buf[16384];
    for (int i = 0; i < 64; ++i) {
      ERR_clear_error();
      if (SSL_read(peer_ssl_.get(), buf, sizeof(buf)) <= 0) {
        return;
      }
    }
  }
  // ServeApps accepts the sidecar's connections to the app and echoes what they carry; an app
  // connection the sidecar closed is closed here too.
  void ServeApps() {
    while (true) {
      base::UniqueFd fd(::accept4(app_listen_.get(), nullptr, nullptr, SOCK_NONBLOCK));
      if (!fd.valid()) {
        break;
      }
      apps_.push_back(std::move(fd));
    }
    char buf[16384];
    for (base::UniqueFd& fd : apps_) {
      if (!fd.valid()) {
        continue;
      }
      const ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
      if (n > 0) {
        (void)::send(fd.get(), buf, static_cast<size_t>(n), MSG_NOSIGNAL);
      } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        fd.reset();
      }
    }
  }

  World& world_;
  WorkerCounters counters_;
  BufferPool buffers_;
  std::unique_ptr<net::EventLoop> loop_;
  std::unique_ptr<dns::Resolver> resolver_;
  base::UniqueFd app_listen_;
  base::UniqueFd sidecar_listen_;
  std::unique_ptr<ListenerRuntime> listener_;
  std::unique_ptr<ConnectionEnv> env_;
  int slots_ = 1;  // the accepted connection's place, which its pooled link gives back
  std::unique_ptr<Pool> pool_;
  std::unique_ptr<Connection> connection_;
  base::UniqueFd peer_fd_;
  PeerCheck peer_check_;
  SslPtr peer_ssl_;
  std::vector<base::UniqueFd> apps_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();
  if (size > 64 * 1024) {
    return 0;
  }
  Driver driver(*world);
  driver.Start();
  driver.Run(data, size);
  driver.Finish();
  return 0;
}

#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/fd.h"
#include "common/net/event_loop.h"
#include "common/net/socket.h"
#include "sidecar/proxy/capture.h"
#include "sidecar/proxy/connection.h"
#include "sidecar/tls/peer_authorizer.h"
#include "sidecar/tls/ssl_ptr.h"
#include "sidecar/tls/tls_context.h"

// The pooled transport: app connections carried as HTTP/2 CONNECT streams (RFC 9113 §8.5) over
// a few long-lived mutual-TLS connections between sidecars, as Istio's HBONE does. A new app
// connection then costs one stream, not a handshake. nghttp2 does the HTTP/2; everything here
// runs on one worker's event loop (no threads, no locks). nghttp2 types stay in pooled.cc.

namespace meshtls::sidecar {

// PoolSettings is the `pooled` config section, in the worker's units.
struct PoolSettings {
  uint32_t max_streams_per_connection = 1000;
  size_t max_connections_per_peer = 8;
  net::MonoDuration idle_timeout = std::chrono::seconds(60);
  net::MonoDuration keepalive_interval = std::chrono::seconds(10);
  net::MonoDuration keepalive_timeout = std::chrono::seconds(5);
};

// Flow control. A stream's window bounds what one app connection may have in flight towards a
// slow app (what this side buffers for it). 2 MiB keeps one stream at full speed on a busy
// machine: with 256 KiB (and 1 MiB) the sender stalled for a WINDOW_UPDATE every 128 KiB
// whenever the receiving sidecar waited for a core, and one stream made about 0.85x of the `tls`
// transport's bulk rate (strace: 760 sleeps per 100 MiB on each side, against 7). The
// connection's window (32 MiB) is given back as soon as bytes arrive, so one stream whose app
// does not read never stalls the others: each is held back by its own window alone. Only when
// a connection holds kMaxLinkPending for slow apps does it stop giving the connection's window
// back, which bounds it at that plus one connection window whatever the peer does.
inline constexpr int32_t kPooledStreamWindow = 2 * 1024 * 1024;
inline constexpr int32_t kPooledConnectionWindow = 32 * 1024 * 1024;
// What one pooled connection holds at most for apps that read slower than their peers send,
// before it stops giving the connection's window back.
inline constexpr size_t kMaxLinkPending = 16 * 1024 * 1024;
// The largest DATA frame this side accepts (SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is 16 KiB).
inline constexpr uint32_t kPooledMaxFrame = 64 * 1024;

class PooledLink;
class PooledStream;

// Pool is one worker's pooled transport: its outbound pools (per outbound listener, or per
// mesh rule and destination address), and the inbound pooled connections its listeners handed
// over. Owned by the worker; used only on its thread.
class Pool {
 public:
  // Hooks is what the pool needs from its worker besides ConnectionEnv.
  struct Hooks {
    // An inbound stream takes a place under limits.max_connections (false: over the limit);
    // every place taken, and every outbound app connection handed to the pool, is given back
    // with release_slot when its stream ends.
    std::function<bool()> take_slot;
    std::function<void()> release_slot;
  };
  Pool(ConnectionEnv& env, PoolSettings settings, Hooks hooks);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Open carries one outbound app connection (already counted active and under
  // limits.max_connections) as a stream to `route`'s peer: an explicit outbound listener's
  // `connect`, or for a mesh rule `original_destination`'s address on the rule's pooled port.
  void Open(const ListenerRuntime& route, const net::SocketAddress* original_destination,
            base::UniqueFd app, net::MonoTime accepted_at);

  // InboundRoute is where an adopted connection's streams may go: an explicit listener's
  // `forward` (capture == nullptr), or transparent inbound's ports of the address the
  // connection arrived at.
  struct InboundRoute {
    const ListenerRuntime* listener = nullptr;
    const InboundCapture* capture = nullptr;
    net::SocketAddress arrived_at;  // transparent: the connection's original destination
  };
  // Adopt takes an inbound mutual-TLS connection whose handshake (verified, authorized for
  // `route.listener`) selected ALPN `meshtls-h2` (or `h2` on the pooled port). It keeps its place
  // under limits.max_connections until it closes.
  void Adopt(const InboundRoute& route, base::UniqueFd fd, SslPtr ssl, PeerCheck check,
             std::shared_ptr<const TlsContext> context, net::PeerAddress peer);

  // Drain (SIGTERM): every connection sends GOAWAY and closes once its streams are done; no
  // new outbound connection is opened.
  void Drain();
  // OnNewCredentials: a rotation or trust-bundle change. Connections of an older TLS context
  // take no new streams (the next stream opens a connection with the new one); inbound ones
  // send GOAWAY. Each closes once its streams are done.
  void OnNewCredentials();
  // CloseAll ends every stream and connection now (the worker is stopping).
  void CloseAll();

  // Internal interface for PooledLink and PooledStream.
  ConnectionEnv& env() { return env_; }
  const PoolSettings& settings() const { return settings_; }
  Hooks& hooks() { return hooks_; }
  char* scratch() { return scratch_.get(); }
  bool draining() const { return draining_; }
  static constexpr size_t kScratchSize = 16 * 1024;
  // LinkReady: `link` can take (more) streams; LinkClosed: it is gone (its streams ended or
  // handed back with Requeue).
  void LinkReady(PooledLink& link);
  void LinkClosed(PooledLink& link);
  // Requeue puts an outbound stream never answered back into its pool, once: refused before the
  // peer processed it (REFUSED_STREAM, GOAWAY), its connection closed under it, or no stream id
  // left on it.
  void Requeue(std::unique_ptr<PooledStream> stream);
  // Retire deletes a finished stream after the current event (its handler may be on the stack).
  void Retire(std::unique_ptr<PooledStream> stream);

 private:
  struct Peer;
  void Dispatch(const std::string& key);
  void ScheduleDispatch(const std::string& key);
  void OnWaitTimeout(PooledStream* stream);
  void RetireLink(PooledLink* link);
  // ScheduleRetire deletes what was retired after the current event batch, once.
  void ScheduleRetire();

  ConnectionEnv& env_;
  PoolSettings settings_;
  Hooks hooks_;
  std::unique_ptr<char[]> scratch_;  // SSL_read's buffer for every link (nghttp2 copies out)
  std::map<std::string, std::unique_ptr<Peer>> peers_;
  std::unordered_map<PooledLink*, std::unique_ptr<PooledLink>> links_;
  std::vector<std::unique_ptr<PooledStream>> retired_;
  std::vector<std::unique_ptr<PooledLink>> retired_links_;
  bool retire_scheduled_ = false;
  bool draining_ = false;
};

}  // namespace meshtls::sidecar

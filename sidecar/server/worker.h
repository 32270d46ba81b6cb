#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/fd.h"
#include "common/base/log.h"
#include "common/net/event_loop.h"
#include "sidecar/dns/resolver.h"
#include "sidecar/metrics/worker_counters.h"
#include "sidecar/proxy/connection.h"
#include "sidecar/proxy/pooled.h"
#include "sidecar/tls/tls_context.h"

namespace meshtls::sidecar {

// ListenFd is one listening socket of a worker and the listener it serves (a transparent
// capture port has one socket per address family).
struct ListenFd {
  size_t listener = 0;  // index into the listeners
  base::UniqueFd fd;
};

struct WorkerLimits {
  net::MonoDuration handshake_timeout;
  net::MonoDuration connect_timeout;
  net::MonoDuration idle_timeout;
  int max_connections = 20000;
  bool close_on_expiry = true;
  bool session_resumption = false;  // outbound listeners keep a session cache per worker
  PoolSettings pooled;
};

// kMaxLingeringPerWorker bounds the refused connections one worker keeps in their lingering
// close (their descriptors and at most 2 s each); beyond it the oldest is closed at once.
inline constexpr size_t kMaxLingeringPerWorker = 256;

// Worker is one data-plane thread: its own epoll loop, its own SO_REUSEPORT listening socket
// per listener, its own connections and its own metric shard. Other threads reach it only
// through EventLoop::Post. `listeners`, the store and `open_connections` (shared by all
// workers, touched once per connection) must outlive it. Each worker resolves names with its
// own Resolver on its own loop (its own DNS cache): no lock and no thread between a new
// connection and its upstream's addresses.
class Worker {
 public:
  // `capture_decision_count` sizes the transparent-mode decision counters.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(
      int index, const std::vector<ListenerRuntime>& listeners, std::vector<ListenFd> listen_fds,
      size_t capture_decision_count, const TlsContextStore& tls, const dns::ResolverOptions& dns,
      WorkerLimits limits, std::atomic<int>& open_connections);
  ~Worker();

  void Start();
  // StopAccepting closes this worker's listening sockets and sends GOAWAY on its pooled
  // connections (drain). Thread-safe.
  void StopAccepting();
  // OnNewCredentials moves new pooled streams off connections of an older TLS context (a
  // rotation or trust-bundle change). Thread-safe.
  void OnNewCredentials();
  // Stop closes every connection and joins the thread. Call from the owning thread.
  void Stop();
  const WorkerCounters& counters() const { return counters_; }

 private:
  class Acceptor final : public net::EventHandler {
   public:
    Acceptor(Worker& w, const ListenerRuntime& l, base::UniqueFd fd)
        : worker(w), listener(l), fd(std::move(fd)) {}
    void OnEvents(uint32_t) override { worker.Accept(*this); }
    Worker& worker;
    const ListenerRuntime& listener;
    base::UniqueFd fd;
    // This worker's TLS sessions for the listener's upstream (outbound with resumption on).
    std::unique_ptr<SessionCache> sessions;
    bool paused = false;
  };

  Worker(int index, const TlsContextStore& tls, WorkerLimits limits,
         std::atomic<int>& open_connections, size_t listener_count, size_t capture_decision_count,
         std::unique_ptr<net::EventLoop> loop, std::unique_ptr<dns::Resolver> resolver);
  void Accept(Acceptor& acceptor);
  // EndOldestLingering closes the longest-lingering refused connection, if there is one (to
  // keep at most kMaxLingeringPerWorker); false if none lingers.
  bool EndOldestLingering();
  bool MayLog();
  // MeshSessions is ConnectionEnv::mesh_sessions: this worker's session cache for one
  // destination of a mesh rule, made on first use. Each keeps kMeshSessionsPerDestination
  // tickets, as an explicit outbound listener's cache does (one per concurrent new connection:
  // a ticket resumes once); at most kMaxMeshSessionCaches destinations are kept, the least
  // recently used dropped first (a connection using a dropped one keeps it until it closes).
  // Tickets exist only as servers send them: at most 2048 per worker.
  std::shared_ptr<SessionCache> MeshSessions(const ListenerRuntime& rule,
                                             const net::SocketAddress& destination);

  const int index_;
  WorkerLimits limits_;
  std::atomic<int>& open_connections_;
  WorkerCounters counters_;
  BufferPool buffers_;  // before env_, which refers to it
  std::unique_ptr<net::EventLoop> loop_;
  std::unique_ptr<dns::Resolver> resolver_;  // after loop_: destroyed before it
  ConnectionEnv env_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
  // The pooled transport's connections and streams (after connections_: a stream may outlive
  // the Connection that handed it over, never the other way round).
  std::unique_ptr<Pool> pool_;
  // Connections in their lingering close (Connection::kLingerMaxBytes), oldest first: ids only
  // grow, and every connection lingers for the same bounded time. They no longer count in
  // open_connections_ (a new client on any worker may take their place under
  // limits.max_connections); kMaxLingeringPerWorker bounds them instead.
  std::set<uint64_t> lingering_;
  static constexpr size_t kMaxMeshSessionCaches = 64;
  static constexpr size_t kMeshSessionsPerDestination = 32;
  // Least recently used first; the map points into the list.
  std::list<std::pair<std::string, std::shared_ptr<SessionCache>>> mesh_sessions_lru_;
  std::unordered_map<std::string, decltype(mesh_sessions_lru_)::iterator> mesh_sessions_;
  uint64_t next_connection_id_ = 1;
  // Failure-log budget, per worker: 10 lines/s, burst 20 (a handshake flood cannot flood the
  // log; the first line after a refusal says how many were dropped).
  base::LogRateLimiter log_limiter_{10, 20, net::EventLoop::Now()};
  std::thread thread_;
};

}  // namespace meshtls::sidecar

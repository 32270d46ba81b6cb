#include "sidecar/server/worker.h"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/net/socket.h"

namespace meshtls::sidecar {

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(
    int index, const std::vector<ListenerRuntime>& listeners, std::vector<ListenFd> listen_fds,
    size_t capture_decision_count, const TlsContextStore& tls, const dns::ResolverOptions& dns,
    WorkerLimits limits, std::atomic<int>& open_connections) {
  absl::StatusOr<std::unique_ptr<net::EventLoop>> loop = net::EventLoop::Create();
  if (!loop.ok()) {
    return loop.status();
  }
  absl::StatusOr<std::unique_ptr<dns::Resolver>> resolver = dns::Resolver::Create(**loop, dns);
  if (!resolver.ok()) {
    return resolver.status();
  }
  auto worker = std::unique_ptr<Worker>(new Worker(index, tls, limits, open_connections,
                                                   listeners.size(), capture_decision_count,
                                                   *std::move(loop), *std::move(resolver)));
  for (ListenFd& listen : listen_fds) {
    const ListenerRuntime& listener = listeners.at(listen.listener);
    auto acceptor = std::make_unique<Acceptor>(*worker, listener, std::move(listen.fd));
    if (limits.session_resumption && listener.direction == Direction::kOutbound &&
        listener.outbound_capture == nullptr) {
      acceptor->sessions = std::make_unique<SessionCache>();
    }
    absl::Status s = worker->loop_->Add(acceptor->fd.get(), EPOLLIN, acceptor.get());
    if (!s.ok()) {
      return s;
    }
    worker->acceptors_.push_back(std::move(acceptor));
  }
  return worker;
}

Worker::Worker(int index, const TlsContextStore& tls, WorkerLimits limits,
               std::atomic<int>& open_connections, size_t listener_count,
               size_t capture_decision_count, std::unique_ptr<net::EventLoop> loop,
               std::unique_ptr<dns::Resolver> resolver)
    : index_(index),
      limits_(limits),
      open_connections_(open_connections),
      counters_(listener_count, capture_decision_count),
      loop_(std::move(loop)),
      resolver_(std::move(resolver)),
      env_{.loop = *loop_,
           .resolver = *resolver_,
           .counters = counters_,
           .buffers = buffers_,
           .tls = tls,
           .handshake_timeout = limits.handshake_timeout,
           .connect_timeout = limits.connect_timeout,
           .idle_timeout = limits.idle_timeout,
           .close_on_expiry = limits.close_on_expiry,
           .on_closed = nullptr,
           .may_log = nullptr,
           .on_lingering = nullptr,
           .mesh_sessions = nullptr,
           .pool = nullptr,
           .on_handed_off = nullptr} {
  env_.on_closed = [this](uint64_t id) {
    if (lingering_.erase(id) == 0) {
      // A lingering connection gave its place back when it started lingering.
      open_connections_.fetch_sub(1, std::memory_order_relaxed);
    }
    // Delete after the current event batch: the connection's handlers may still be on the stack.
    loop_->Defer([this, id] { connections_.erase(id); });
  };
  env_.may_log = [this] { return MayLog(); };
  env_.on_handed_off = [this](uint64_t id) {
    // Its place under limits.max_connections went with it, to the pool.
    loop_->Defer([this, id] { connections_.erase(id); });
  };
  pool_ = std::make_unique<Pool>(
      env_, limits.pooled,
      Pool::Hooks{
          .take_slot =
              [this] {
                if (open_connections_.fetch_add(1, std::memory_order_relaxed) >=
                    limits_.max_connections) {
                  open_connections_.fetch_sub(1, std::memory_order_relaxed);
                  return false;
                }
                return true;
              },
          .release_slot = [this] { open_connections_.fetch_sub(1, std::memory_order_relaxed); }});
  env_.pool = pool_.get();
  if (limits.session_resumption) {
    env_.mesh_sessions = [this](const ListenerRuntime& rule, const net::SocketAddress& to) {
      return MeshSessions(rule, to);
    };
  }
  env_.on_lingering = [this](uint64_t id) {
    // Its place under limits.max_connections is free for a new client on any worker at once.
    open_connections_.fetch_sub(1, std::memory_order_relaxed);
    lingering_.insert(id);
    if (lingering_.size() > kMaxLingeringPerWorker) {
      EndOldestLingering();
    }
  };
  static_assert(kDnsLookupResultCount == dns::kLookupOutcomeCount);
  resolver_->set_observer([this](dns::LookupOutcome outcome) {
    counters_.dns_lookups[static_cast<int>(outcome)].Add();
  });
}

bool Worker::EndOldestLingering() {
  while (!lingering_.empty()) {
    const uint64_t id = *lingering_.begin();
    auto it = connections_.find(id);
    if (it == connections_.end()) {
      lingering_.erase(lingering_.begin());  // not ours to end: nothing was freed
      continue;
    }
    // Left in lingering_ for on_closed, which erases it there (and so does not give back a
    // place twice).
    it->second->Shutdown();
    return true;
  }
  return false;
}

Worker::~Worker() { Stop(); }

std::shared_ptr<SessionCache> Worker::MeshSessions(const ListenerRuntime& rule,
                                                   const net::SocketAddress& destination) {
  std::string key = absl::StrCat(rule.id, " ", destination.ToString());
  if (auto it = mesh_sessions_.find(key); it != mesh_sessions_.end()) {
    mesh_sessions_lru_.splice(mesh_sessions_lru_.end(), mesh_sessions_lru_, it->second);
    return it->second->second;
  }
  if (mesh_sessions_.size() >= kMaxMeshSessionCaches) {
    mesh_sessions_.erase(mesh_sessions_lru_.front().first);
    mesh_sessions_lru_.pop_front();
  }
  auto cache = std::make_shared<SessionCache>(kMeshSessionsPerDestination);
  mesh_sessions_lru_.emplace_back(key, cache);
  mesh_sessions_.emplace(std::move(key), std::prev(mesh_sessions_lru_.end()));
  return cache;
}

bool Worker::MayLog() {
  const base::LogRateLimiter::Verdict verdict = log_limiter_.Allow(net::EventLoop::Now());
  if (verdict.allowed && verdict.suppressed_before > 0) {
    base::LogWarning("log lines suppressed by the rate limit",
                     {{"worker", std::to_string(index_)},
                      {"suppressed", std::to_string(verdict.suppressed_before)}});
  }
  return verdict.allowed;
}

void Worker::Accept(Acceptor& acceptor) {
  const int direction = static_cast<int>(acceptor.listener.direction);
  for (int i = 0; i < 64; ++i) {
    net::PeerAddress peer;
    base::UniqueFd accepted = net::AcceptTcp(acceptor.fd.get(), peer);
    if (!accepted.valid()) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: pause this listener briefly instead of spinning on it.
        if (MayLog()) {
          base::LogWarning("accept paused: out of file descriptors",
                           {{"listener", acceptor.listener.name}, {"error", std::strerror(errno)}});
        }
        loop_->Remove(acceptor.fd.get());
        acceptor.paused = true;
        loop_->AddTimer(std::chrono::milliseconds(100), [this, &acceptor] {
          if (acceptor.paused && acceptor.fd.valid()) {
            acceptor.paused = false;
            (void)loop_->Add(acceptor.fd.get(), EPOLLIN, &acceptor);
          }
        });
      }
      return;  // EAGAIN, or a connection that died before accept
    }
    // Lingering connections are not counted: a refused peer draining its last bytes never
    // keeps a new client out, whichever worker either lands on.
    if (open_connections_.fetch_add(1, std::memory_order_relaxed) >= limits_.max_connections) {
      open_connections_.fetch_sub(1, std::memory_order_relaxed);
      counters_.refused[direction][static_cast<int>(RefusedReason::kMaxConnections)].Add();
      net::SetAbortiveClose(accepted.get());
      continue;
    }
    const uint64_t id = next_connection_id_++;
    auto connection = std::make_unique<Connection>(
        id, env_, acceptor.listener, acceptor.sessions.get(), std::move(accepted), peer);
    Connection* raw = connection.get();
    connections_.emplace(id, std::move(connection));
    raw->Start();
  }
}

void Worker::Start() {
  thread_ = std::thread([this] { loop_->Run(); });
}

void Worker::StopAccepting() {
  loop_->Post([this] {
    for (auto& acceptor : acceptors_) {
      if (acceptor->fd.valid()) {
        loop_->Remove(acceptor->fd.get());
        acceptor->fd.reset();
      }
    }
    pool_->Drain();
  });
}

void Worker::OnNewCredentials() {
  loop_->Post([this] { pool_->OnNewCredentials(); });
}

void Worker::Stop() {
  if (!thread_.joinable()) {
    return;
  }
  loop_->Post([this] {
    // Close what is left gracefully, then stop.
    std::vector<Connection*> open;
    for (auto& [id, c] : connections_) {
      open.push_back(c.get());
    }
    for (Connection* c : open) {
      c->Shutdown();
    }
    pool_->CloseAll();
    loop_->Defer([this] { loop_->Stop(); });
  });
  thread_.join();
  connections_.clear();
  pool_.reset();
}

}  // namespace meshtls::sidecar

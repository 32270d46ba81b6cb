#include "sidecar/dns/resolver.h"

#include <ares.h>
#include <netinet/in.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace meshtls::sidecar::dns {
namespace {

absl::Status AresError(absl::string_view what, int status) {
  return absl::InternalError(absl::StrCat(what, ": ", ares_strerror(status)));
}

net::MonoDuration ToMono(absl::Duration d) {
  return std::chrono::duration_cast<net::MonoDuration>(absl::ToChronoNanoseconds(d));
}

Resolver::Addresses WithPort(const Resolver::Addresses& addresses, uint16_t port) {
  Resolver::Addresses out = addresses;
  for (net::SocketAddress& a : out) {
    if (a.storage.ss_family == AF_INET6) {
      reinterpret_cast<sockaddr_in6*>(&a.storage)->sin6_port = htons(port);
    } else {
      reinterpret_cast<sockaddr_in*>(&a.storage)->sin_port = htons(port);
    }
  }
  return out;
}

// Each server is tried twice; each try waits between kMinTryTimeout and kMaxTryTimeout.
constexpr int kTries = 2;
constexpr absl::Duration kMinTryTimeout = absl::Milliseconds(10);
constexpr absl::Duration kMaxTryTimeout = absl::Seconds(1);

// SystemServerCount counts the nameservers of the system's configuration (/etc/resolv.conf).
absl::StatusOr<size_t> SystemServerCount() {
  ares_channeldata* probe = nullptr;
  ares_options none{};
  if (int s = ares_init_options(&probe, &none, 0); s != ARES_SUCCESS) {
    return AresError("ares_init_options", s);
  }
  ares_addr_port_node* servers = nullptr;
  const int s = ares_get_servers_ports(probe, &servers);
  size_t count = 0;
  for (ares_addr_port_node* n = servers; n != nullptr; n = n->next) {
    ++count;
  }
  if (servers != nullptr) {
    ares_free_data(servers);
  }
  ares_destroy(probe);
  if (s != ARES_SUCCESS) {
    return AresError("ares_get_servers_ports", s);
  }
  return count;
}

}  // namespace

// SocketWatcher forwards epoll events on one c-ares socket. Once c-ares closes the socket the
// watcher is marked closed (events already fetched in the loop's batch are ignored) and deleted
// after the batch.
class Resolver::SocketWatcher final : public net::EventHandler {
 public:
  SocketWatcher(Resolver& resolver, int fd) : resolver_(resolver), fd_(fd) {}
  void OnEvents(uint32_t events) override {
    if (!closed) {
      resolver_.OnSocketEvents(fd_, events);
    }
  }
  bool closed = false;

 private:
  Resolver& resolver_;
  const int fd_;
};

// Lookup is the argument of one ares_getaddrinfo call.
struct Resolver::Lookup {
  Resolver* resolver;
  std::string name;
};

absl::StatusOr<std::unique_ptr<Resolver>> Resolver::Create(net::EventLoop& loop,
                                                           const ResolverOptions& options) {
  static std::once_flag library_once;
  static int library_status = ARES_SUCCESS;
  std::call_once(library_once, [] { library_status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (library_status != ARES_SUCCESS) {
    return AresError("ares_library_init", library_status);
  }
  auto resolver = std::unique_ptr<Resolver>(new Resolver(loop, options));
  size_t server_count = options.servers.size();
  if (server_count == 0) {
    absl::StatusOr<size_t> system = SystemServerCount();
    if (!system.ok()) {
      return system.status();
    }
    server_count = *system;
  }
  ares_options ares{};
  ares.sock_state_cb = &Resolver::OnSocketState;
  ares.sock_state_cb_data = resolver.get();
  // c-ares tries each server `tries` times, in rounds, doubling the wait every round: with
  // two tries a lookup takes at most 3 x servers x the first wait. Its defaults (5 s, 4 tries)
  // would take 75 s per server, long after every connection waiting for it gave up.
  const absl::Duration per_try = std::clamp(
      options.lookup_timeout / (3 * static_cast<int64_t>(std::max<size_t>(server_count, 1))),
      kMinTryTimeout, kMaxTryTimeout);
  ares.timeout = static_cast<int>(absl::ToInt64Milliseconds(per_try));
  ares.tries = kTries;
  if (int s = ares_init_options(&resolver->channel_, &ares,
                                ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
      s != ARES_SUCCESS) {
    resolver->channel_ = nullptr;
    return AresError("ares_init_options", s);
  }
  if (!options.servers.empty()) {
    std::vector<std::string> servers;
    for (const base::HostPort& s : options.servers) {
      servers.push_back(s.ToString());  // "1.2.3.4:53", "[::1]:53": c-ares's CSV syntax
    }
    const std::string csv = absl::StrJoin(servers, ",");
    if (int s = ares_set_servers_ports_csv(resolver->channel_, csv.c_str()); s != ARES_SUCCESS) {
      return AresError(absl::StrCat("dns.servers ", csv), s);
    }
  }
  return resolver;
}

Resolver::Resolver(net::EventLoop& loop, const ResolverOptions& options)
    : loop_(loop), options_(options) {}

Resolver::~Resolver() {
  // Waiters are dropped: their owners are going away with the loop. ares_destroy ends the
  // queries (OnAddrInfo sees ARES_EDESTRUCTION) and closes the sockets (OnSocketState).
  pending_.clear();
  if (timer_ != 0) {
    loop_.CancelTimer(timer_);
    timer_ = 0;
  }
  if (channel_ != nullptr) {
    ares_destroy(channel_);
  }
  for (auto& [fd, watcher] : sockets_) {
    loop_.Remove(fd);
  }
}

void Resolver::Count(LookupOutcome outcome) {
  if (observer_ != nullptr) {
    observer_(outcome);
  }
}

size_t Resolver::waiters_for_test(const std::string& name) const {
  auto it = pending_.find(name);
  return it == pending_.end() ? 0 : it->second.waiters.size();
}

void Resolver::Resolve(const base::HostPort& target, std::weak_ptr<const void> owner,
                       Callback callback) {
  if (target.host_is_ip) {
    absl::StatusOr<net::SocketAddress> address = net::ToSocketAddress(target);
    if (!address.ok()) {
      callback(address.status());
      return;
    }
    callback(Addresses{*address});
    return;
  }
  const std::string name = absl::AsciiStrToLower(target.host);
  if (auto it = cache_.find(name); it != cache_.end()) {
    if (net::EventLoop::Now() < it->second.expires) {
      Count(LookupOutcome::kCacheHit);
      if (!it->second.error.ok()) {
        callback(it->second.error);
      } else {
        callback(WithPort(it->second.addresses, target.port));
      }
      return;
    }
    cache_.erase(it);
  }
  auto [pending, first] = pending_.try_emplace(name);
  std::vector<Waiter>& waiters = pending->second.waiters;
  if (waiters.size() >= pending->second.prune_at ||
      waiters.size() >= options_.max_waiters_per_name) {
    // Connections that gave up (connect timeout, app closed) leave their waiter behind.
    std::erase_if(waiters, [](const Waiter& w) { return w.owner.expired(); });
    pending->second.prune_at = std::max<size_t>(16, 2 * waiters.size());
  }
  if (waiters.size() >= options_.max_waiters_per_name) {
    absl::Status refused = absl::ResourceExhaustedError(
        absl::StrCat("cannot resolve ", name, ": ", waiters.size(),
                     " connections are already waiting for its lookup"));
    if (first) {
      pending_.erase(pending);  // max_waiters_per_name 0: no lookup at all
    }
    Count(LookupOutcome::kError);
    callback(std::move(refused));
    return;
  }
  waiters.push_back(Waiter{target.port, std::move(owner), std::move(callback)});
  if (!first) {
    Count(LookupOutcome::kCoalesced);
    return;
  }
  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // May call OnAddrInfo before it returns (/etc/hosts, a bad name): the waiter is in place.
  ares_getaddrinfo(channel_, name.c_str(), nullptr, &hints, &Resolver::OnAddrInfo,
                   new Lookup{this, name});
  RearmTimer();
}

void Resolver::OnAddrInfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* result) {
  std::unique_ptr<Lookup> lookup(static_cast<Lookup*>(arg));
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
    if (result != nullptr) {
      ares_freeaddrinfo(result);
    }
    return;  // the Resolver is being destroyed
  }
  lookup->resolver->Finish(lookup->name, status, result);
}

void Resolver::Finish(const std::string& name, int status, ares_addrinfo* result) {
  CacheEntry entry;
  std::optional<int> ttl_seconds;
  if (status == ARES_SUCCESS && result != nullptr) {
    for (ares_addrinfo_node* n = result->nodes;
         n != nullptr && entry.addresses.size() < kMaxAddresses; n = n->ai_next) {
      if ((n->ai_family != AF_INET && n->ai_family != AF_INET6) || n->ai_addr == nullptr ||
          n->ai_addrlen > sizeof(sockaddr_storage)) {
        continue;
      }
      net::SocketAddress a;
      std::memcpy(&a.storage, n->ai_addr, n->ai_addrlen);
      a.length = n->ai_addrlen;
      entry.addresses.push_back(a);
      ttl_seconds = std::min(ttl_seconds.value_or(n->ai_ttl), n->ai_ttl);
    }
  }
  if (result != nullptr) {
    ares_freeaddrinfo(result);
  }
  LookupOutcome outcome = LookupOutcome::kSuccess;
  if (!entry.addresses.empty()) {
    entry.expires =
        net::EventLoop::Now() +
        ToMono(std::clamp(absl::Seconds(std::max(*ttl_seconds, 0)), kMinTtl, options_.max_ttl));
  } else {
    switch (status) {
      case ARES_SUCCESS:
      case ARES_ENOTFOUND:
      case ARES_ENODATA:
        outcome = LookupOutcome::kNxdomain;
        entry.error =
            absl::UnavailableError(absl::StrCat("cannot resolve ", name, ": no such name"));
        break;
      case ARES_ETIMEOUT:
        outcome = LookupOutcome::kTimeout;
        entry.error = absl::UnavailableError(
            absl::StrCat("cannot resolve ", name, ": the DNS servers did not answer"));
        break;
      default:
        outcome = LookupOutcome::kError;
        entry.error = absl::UnavailableError(
            absl::StrCat("cannot resolve ", name, ": ", ares_strerror(status)));
        break;
    }
    entry.expires = net::EventLoop::Now() + ToMono(options_.negative_ttl);
  }
  Count(outcome);
  std::vector<Waiter> waiters;
  if (auto it = pending_.find(name); it != pending_.end()) {
    waiters = std::move(it->second.waiters);
    pending_.erase(it);
  }
  Store(name, entry);
  // The callbacks run after the loop's current batch, outside c-ares's own stack frames, so
  // they may start new lookups and connections freely.
  loop_.Defer([waiters = std::move(waiters), entry = std::move(entry)]() mutable {
    for (Waiter& w : waiters) {
      if (w.owner.expired()) {
        continue;  // its connection is gone
      }
      if (!entry.error.ok()) {
        w.callback(entry.error);
      } else {
        w.callback(WithPort(entry.addresses, w.port));
      }
    }
  });
}

void Resolver::Store(const std::string& name, CacheEntry entry) {
  if (cache_.size() >= options_.max_names && cache_.find(name) == cache_.end()) {
    const net::MonoTime now = net::EventLoop::Now();
    std::erase_if(cache_, [now](const auto& e) { return e.second.expires <= now; });
    if (cache_.size() >= options_.max_names) {
      auto soonest = std::min_element(
          cache_.begin(), cache_.end(),
          [](const auto& a, const auto& b) { return a.second.expires < b.second.expires; });
      cache_.erase(soonest);
    }
  }
  if (options_.max_names > 0) {
    cache_[name] = std::move(entry);
  }
}

void Resolver::OnSocketState(void* data, int fd, int readable, int writable) {
  auto* self = static_cast<Resolver*>(data);
  auto it = self->sockets_.find(fd);
  if (readable == 0 && writable == 0) {
    if (it == self->sockets_.end()) {
      return;
    }
    self->loop_.Remove(fd);
    it->second->closed = true;
    // Deleted after the batch: this may run inside the watcher's own OnEvents.
    self->loop_.Defer([watcher = std::move(it->second)] {});
    self->sockets_.erase(it);
    return;
  }
  const uint32_t events =
      (readable != 0 ? uint32_t{EPOLLIN} : 0u) | (writable != 0 ? uint32_t{EPOLLOUT} : 0u);
  if (it == self->sockets_.end()) {
    auto watcher = std::make_unique<SocketWatcher>(*self, fd);
    if (self->loop_.Add(fd, events, watcher.get()).ok()) {
      self->sockets_.emplace(fd, std::move(watcher));
    }
    // Otherwise the query on this socket times out (the timer still runs).
    return;
  }
  (void)self->loop_.Modify(fd, events, it->second.get());
}

void Resolver::OnSocketEvents(int fd, uint32_t events) {
  const bool read = (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0;
  const bool write = (events & EPOLLOUT) != 0;
  ares_process_fd(channel_, read ? fd : ARES_SOCKET_BAD, write ? fd : ARES_SOCKET_BAD);
  RearmTimer();
}

void Resolver::RearmTimer() {
  if (timer_ != 0) {
    loop_.CancelTimer(timer_);
    timer_ = 0;
  }
  timeval tv{};
  if (pending_.empty() || ares_timeout(channel_, nullptr, &tv) == nullptr) {
    return;
  }
  const net::MonoDuration wait =
      std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
  timer_ = loop_.AddTimer(wait, [this] {
    timer_ = 0;
    ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    RearmTimer();
  });
}

}  // namespace meshtls::sidecar::dns

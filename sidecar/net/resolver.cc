#include "sidecar/net/resolver.h"

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

namespace meshtls::sidecar::net {
namespace {

absl::Status AresError(absl::string_view what, int status) {
  return absl::InternalError(absl::StrCat(what, ": ", ares_strerror(status)));
}

MonoDuration ToMono(absl::Duration d) {
  return std::chrono::duration_cast<MonoDuration>(absl::ToChronoNanoseconds(d));
}

Resolver::Addresses WithPort(const Resolver::Addresses& addresses, uint16_t port) {
  Resolver::Addresses out = addresses;
  for (SocketAddress& a : out) {
    if (a.storage.ss_family == AF_INET6) {
      reinterpret_cast<sockaddr_in6*>(&a.storage)->sin6_port = htons(port);
    } else {
      reinterpret_cast<sockaddr_in*>(&a.storage)->sin_port = htons(port);
    }
  }
  return out;
}

}  // namespace

// SocketWatcher forwards epoll events on one c-ares socket. Once c-ares closes the socket the
// watcher is marked closed (events already fetched in the loop's batch are ignored) and deleted
// after the batch.
class Resolver::SocketWatcher final : public EventHandler {
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

absl::StatusOr<std::unique_ptr<Resolver>> Resolver::Create(EventLoop& loop,
                                                           const ResolverOptions& options) {
  static std::once_flag library_once;
  static int library_status = ARES_SUCCESS;
  std::call_once(library_once, [] { library_status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (library_status != ARES_SUCCESS) {
    return AresError("ares_library_init", library_status);
  }
  auto resolver = std::unique_ptr<Resolver>(new Resolver(loop, options));
  ares_options ares{};
  ares.sock_state_cb = &Resolver::OnSocketState;
  ares.sock_state_cb_data = resolver.get();
  if (int s = ares_init_options(&resolver->channel_, &ares, ARES_OPT_SOCK_STATE_CB);
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

Resolver::Resolver(EventLoop& loop, const ResolverOptions& options)
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

void Resolver::Resolve(const base::HostPort& target, Callback callback) {
  if (target.host_is_ip) {
    absl::StatusOr<SocketAddress> address = ToSocketAddress(target);
    if (!address.ok()) {
      callback(address.status());
      return;
    }
    callback(Addresses{*address});
    return;
  }
  const std::string name = absl::AsciiStrToLower(target.host);
  if (auto it = cache_.find(name); it != cache_.end()) {
    if (EventLoop::Now() < it->second.expires) {
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
  pending->second.push_back(Waiter{target.port, std::move(callback)});
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
      SocketAddress a;
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
    entry.expires = EventLoop::Now() + ToMono(std::clamp(absl::Seconds(std::max(*ttl_seconds, 0)),
                                                         kMinTtl, options_.max_ttl));
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
    entry.expires = EventLoop::Now() + ToMono(options_.negative_ttl);
  }
  Count(outcome);
  std::vector<Waiter> waiters;
  if (auto it = pending_.find(name); it != pending_.end()) {
    waiters = std::move(it->second);
    pending_.erase(it);
  }
  Store(name, entry);
  // The callbacks run after the loop's current batch, outside c-ares's own stack frames, so
  // they may start new lookups and connections freely.
  loop_.Defer([waiters = std::move(waiters), entry = std::move(entry)]() mutable {
    for (Waiter& w : waiters) {
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
    const MonoTime now = EventLoop::Now();
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
  const MonoDuration wait = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
  timer_ = loop_.AddTimer(wait, [this] {
    timer_ = 0;
    ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    RearmTimer();
  });
}

}  // namespace meshtls::sidecar::net

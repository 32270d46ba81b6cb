#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/base/host_port.h"
#include "common/net/event_loop.h"
#include "common/net/socket.h"

// c-ares's channel type, without its header in ours.
struct ares_channeldata;
struct ares_addrinfo;

namespace meshtls::sidecar::dns {

// ResolverOptions configure a Resolver (the sidecar's `dns:` section).
struct ResolverOptions {
  // servers: DNS servers (IP literals with a port) used instead of /etc/resolv.conf's
  // nameservers; empty: the system's. Search domains, ndots and /etc/hosts apply either way.
  std::vector<base::HostPort> servers;
  // An answer is kept for its TTL (the smallest of its records), at least kMinTtl and at most
  // max_ttl; NXDOMAIN, no data and failures are kept for negative_ttl.
  absl::Duration max_ttl = absl::Minutes(5);
  absl::Duration negative_ttl = absl::Seconds(5);
  // max_names bounds the cache; when it is full the entry closest to expiry goes first.
  size_t max_names = 4096;
  // lookup_timeout bounds one lookup, every try of every server included (the worker passes
  // limits.connect_timeout, so a lookup ends no later than the connections waiting for it).
  absl::Duration lookup_timeout = absl::Seconds(5);
  // max_waiters_per_name bounds the connections waiting for one name's lookup in flight; one
  // more is refused at once. Waiters whose owner has gone do not count.
  size_t max_waiters_per_name = 1024;
};

// LookupOutcome is what one Resolve() of a name (not an IP literal) came to: a DNS lookup
// that succeeded, found no such name (or no address), timed out or failed otherwise; an
// answer from the cache (positive or negative); or a join onto a lookup already in flight.
enum class LookupOutcome : uint8_t { kSuccess, kNxdomain, kTimeout, kError, kCacheHit, kCoalesced };
inline constexpr int kLookupOutcomeCount = 6;

// Resolver resolves host names asynchronously with c-ares on one EventLoop: its UDP/TCP
// sockets are registered with the loop's epoll and its timeouts run as the loop's timers, so a
// slow or silent DNS server delays only the connections waiting for that name. Answers are
// cached for their TTL and failures for negative_ttl; concurrent lookups of one name share one
// query. IP literals are answered at once, without DNS.
//
// Owned by one worker (one per EventLoop, so no lock and no cross-thread handoff); everything
// must be called on the loop's thread, and the Resolver must be destroyed before the loop.
class Resolver {
 public:
  // Addresses are every address of a name, in the order to try them, each with the port the
  // caller asked for.
  using Addresses = std::vector<net::SocketAddress>;
  using Callback = absl::AnyInvocable<void(absl::StatusOr<Addresses>)>;
  using OutcomeObserver = absl::AnyInvocable<void(LookupOutcome)>;

  // The shortest time an answer is cached: a TTL of 0 would send a query (and read
  // /etc/hosts) for every connection.
  static constexpr absl::Duration kMinTtl = absl::Seconds(1);
  // The most addresses kept per name.
  static constexpr size_t kMaxAddresses = 16;

  // Create reads the system resolver configuration (/etc/resolv.conf: call it where file I/O
  // is allowed, not on a running worker). Fails on a server list c-ares refuses.
  static absl::StatusOr<std::unique_ptr<Resolver>> Create(net::EventLoop& loop,
                                                          const ResolverOptions& options);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Resolve calls `callback` once, on the loop's thread: at once for an IP literal, a cached
  // answer or a name with max_waiters_per_name waiters already, else when the lookup ends (an
  // error names the host and what went wrong). The waiter lives only as long as `owner` (the
  // connection's liveness token): once `owner` has expired its callback is dropped without a
  // call, and so is every callback still waiting when the Resolver is destroyed.
  void Resolve(const base::HostPort& target, std::weak_ptr<const void> owner, Callback callback);

  // set_observer: `observer` is told the outcome of every later Resolve() of a name, on the
  // loop's thread (the worker counts them).
  void set_observer(OutcomeObserver observer) { observer_ = std::move(observer); }

  size_t cached_names_for_test() const { return cache_.size(); }
  // waiters_for_test counts the callbacks held for `name`'s lookup in flight.
  size_t waiters_for_test(const std::string& name) const;

 private:
  struct Waiter {
    uint16_t port;
    std::weak_ptr<const void> owner;
    Callback callback;
  };
  // PendingLookup is one name's lookup in flight and who waits for it. Expired waiters are
  // dropped when the list reaches prune_at, which then doubles the live count: amortized O(1)
  // per Resolve, and the list never holds more than twice its live waiters (plus 16).
  struct PendingLookup {
    std::vector<Waiter> waiters;
    size_t prune_at = 16;
  };
  struct CacheEntry {
    absl::Status error;   // OK for a positive answer
    Addresses addresses;  // port 0
    net::MonoTime expires;
  };
  class SocketWatcher;
  struct Lookup;

  Resolver(net::EventLoop& loop, const ResolverOptions& options);
  static void OnSocketState(void* data, int fd, int readable, int writable);
  static void OnAddrInfo(void* arg, int status, int timeouts, ares_addrinfo* result);
  void OnSocketEvents(int fd, uint32_t events);
  void Finish(const std::string& name, int status, ares_addrinfo* result);
  void Store(const std::string& name, CacheEntry entry);
  void RearmTimer();
  void Count(LookupOutcome outcome);

  net::EventLoop& loop_;
  const ResolverOptions options_;
  OutcomeObserver observer_;
  ares_channeldata* channel_ = nullptr;
  std::unordered_map<std::string, CacheEntry> cache_;       // by lower-case name
  std::unordered_map<std::string, PendingLookup> pending_;  // lookups in flight, by name
  std::unordered_map<int, std::unique_ptr<SocketWatcher>> sockets_;
  net::EventLoop::TimerId timer_ = 0;
};

}  // namespace meshtls::sidecar::dns

#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/time/time.h"
#include "common/pki/spiffe_id.h"
#include "sidecar/tls/ssl_ptr.h"

namespace meshtls::sidecar {

// ServerSessionStore holds the sessions the inbound side has issued tickets for, by ticket (the
// session ID a TLS 1.3 stateful ticket carries), with the client identity each was established
// with. One per TLS context generation, so no session outlives the certificate and trust
// bundle that verified its peer. Each ticket resumes once (RFC 8446 §C.4: a ticket reused by
// the client would link its connections); every resumption is issued a new one.
//
// Why stateful tickets rather than encrypted (stateless) ones: OpenSSL 3.0 serializes a
// session into every stateless ticket it issues and parses it back on every resumption, and
// each parse decodes the peer certificate's public key again (about 120 us of provider lookups
// per parse on the benchmark machine), which made a resumed handshake cost two thirds of a
// full one. A stored session is used as it is.
//
// Bounded: beyond `capacity` the oldest session is dropped (its client then does a full
// handshake). Thread-safe: workers issue and resume on their own threads, and a client's next
// connection may land on any worker; the lock is taken once per handshake, never per read.
class ServerSessionStore {
 public:
  struct Entry {
    SslSessionPtr session;
    pki::SpiffeId peer;  // the client identity verified when the session was established
    absl::Time expires;  // the session lifetime or the client certificate's expiry
  };

  // About 6.4 KiB each (the session and the parsed client certificate it keeps; measured by
  // meshtls-handshake-bench, BM_StoredSessionMemory): under 7 MiB at most. Enough for the
  // tickets of 16 client sidecars with two workers each (32 per worker and listener); beyond
  // that the oldest tickets fall back to full handshakes.
  static constexpr size_t kDefaultCapacity = 1024;

  explicit ServerSessionStore(size_t capacity = kDefaultCapacity) : capacity_(capacity) {}
  ServerSessionStore(const ServerSessionStore&) = delete;
  ServerSessionStore& operator=(const ServerSessionStore&) = delete;

  void Put(std::string ticket, Entry entry) {
    std::lock_guard<std::mutex> lock(mu_);
    if (by_ticket_.count(ticket) != 0) {
      return;  // a ticket is 32 random bytes: a repeat is OpenSSL issuing the same one twice
    }
    while (by_ticket_.size() >= capacity_ && !order_.empty()) {
      by_ticket_.erase(order_.front());
      order_.pop_front();
    }
    if (order_.size() >= 2 * capacity_) {
      // Most names are of taken tickets: keep the live ones, in order (amortized O(1) a Put).
      std::erase_if(order_, [&](const std::string& t) { return by_ticket_.count(t) == 0; });
    }
    order_.push_back(ticket);
    by_ticket_.emplace(std::move(ticket), std::move(entry));
  }

  // Take removes the session of `ticket` and returns it if it has not expired.
  std::optional<Entry> Take(const std::string& ticket, absl::Time now) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_ticket_.find(ticket);
    if (it == by_ticket_.end()) {
      return std::nullopt;
    }
    Entry entry = std::move(it->second);
    by_ticket_.erase(it);
    // `order_` keeps the ticket until it reaches the front; Put() skips what is gone.
    if (entry.expires <= now) {
      return std::nullopt;
    }
    return entry;
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return by_ticket_.size();
  }
  // How many ticket names the eviction order holds (live or taken): at most 2 * capacity.
  size_t order_size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return order_.size();
  }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> by_ticket_;
  std::deque<std::string> order_;  // tickets oldest first; may name taken ones
};

}  // namespace meshtls::sidecar

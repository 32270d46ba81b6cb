#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>

#include "absl/time/time.h"
#include "common/pki/spiffe_id.h"
#include "sidecar/tls/ssl_ptr.h"

namespace meshtls::sidecar {

// SessionCache keeps the newest few TLS sessions (TLS 1.3 tickets) one outbound listener has
// received, for one worker: the worker's thread is the only one that touches it, so it takes
// no lock. Each entry remembers the server identity that was verified when the session was
// established (a resumed handshake does not verify certificates again, so the identity is
// authorized from here) and the TLS context generation it belongs to: a new generation (our
// certificate or the trust bundle changed) makes every older session unusable.
class SessionCache {
 public:
  struct Entry {
    SslSessionPtr session;
    pki::SpiffeId peer;
    uint64_t generation = 0;
    absl::Time expires;  // the ticket's lifetime or the server certificate's expiry
  };

  // The default covers a pool of 32 connections opened at once; an entry holds the session
  // and the parsed server certificate, about 6.4 KiB (what the inbound side's equivalent
  // measures in meshtls-handshake-bench).
  explicit SessionCache(size_t capacity = 32) : capacity_(capacity) {}

  // Take removes and returns the newest usable entry for `generation`; stale entries met on
  // the way are dropped. A ticket is used once, as RFC 8446 asks (a passive observer cannot
  // link connections by it); every resumed handshake brings the next one.
  std::optional<Entry> Take(uint64_t generation, absl::Time now) {
    while (!entries_.empty()) {
      Entry e = std::move(entries_.back());
      entries_.pop_back();
      if (e.generation == generation && e.expires > now) {
        return e;
      }
    }
    return std::nullopt;
  }

  void Put(Entry e) {
    if (entries_.size() >= capacity_) {
      entries_.pop_front();
    }
    entries_.push_back(std::move(e));
  }

 private:
  size_t capacity_;
  std::deque<Entry> entries_;  // oldest first
};

}  // namespace meshtls::sidecar

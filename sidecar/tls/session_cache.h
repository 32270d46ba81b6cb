#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>

#include "absl/time/time.h"
#include "certmgr/pki/spiffe_id.h"
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

  // The default covers a pool of 32 connections opened at once; each keeps about 2 KiB (the
  // session with the server certificate).
  explicit SessionCache(size_t capacity = 4) : capacity_(capacity) {}

  // Find returns the newest usable entry for `generation`, with a copy of its session (OpenSSL
  // marks a session it shares non-resumable when any connection using it ends without
  // close_notify); stale entries met on the way are dropped. The entry stays: a ticket is offered
  // again until a newer one arrives or it expires. RFC 8446 asks clients not to reuse tickets so a
  // passive observer cannot link connections; between two sidecars of one mesh that link is
  // no secret, and OpenSSL's server issues no new ticket on a resumed handshake, so single use
  // would make every other connection a full handshake.
  std::optional<Entry> Find(uint64_t generation, absl::Time now) {
    while (!entries_.empty()) {
      const Entry& e = entries_.back();
      if (e.generation == generation && e.expires > now &&
          SSL_SESSION_is_resumable(e.session.get()) == 1) {
        SslSessionPtr copy(SSL_SESSION_dup(e.session.get()));
        if (copy == nullptr) {
          return std::nullopt;
        }
        return Entry{.session = std::move(copy),
                     .peer = e.peer,
                     .generation = e.generation,
                     .expires = e.expires};
      }
      entries_.pop_back();
    }
    return std::nullopt;
  }

  void Put(Entry e) {
    if (entries_.size() >= capacity_) {
      entries_.pop_front();
    }
    entries_.push_back(std::move(e));
  }

  size_t size() const { return entries_.size(); }

 private:
  size_t capacity_;
  std::deque<Entry> entries_;  // oldest first
};

}  // namespace meshtls::sidecar

#pragma once

#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/time/time.h"
#include "common/pki/chain_verifier.h"
#include "common/pki/spiffe_id.h"

namespace meshtls::sidecar {

// VerifiedChainCache remembers the peer certificate chains one worker has verified, so that a
// peer reconnecting with the same chain is not put through path validation again: that is one
// ECDSA verification and OpenSSL's path building per handshake side, about a sixth of the CPU
// of a full handshake (tests/bench/handshake_bench.cc measures it).
//
// What makes a hit safe: the key is the SHA-256 of every certificate the peer sent, in order,
// with the role it was verified for and the verifier (trust bundle) it was verified against;
// the X.509 and X.509-SVID checks depend on nothing else except the time, and a hit is only
// taken inside the validity window of the path that was built. Only successes are stored. The
// handshake still proves possession of the leaf's key (CertificateVerify), and the listener's
// allow-list is checked on every connection, hit or not.
//
// Bounded (oldest dropped first). Not thread-safe: one per worker thread.
class VerifiedChainCache {
 public:
  explicit VerifiedChainCache(size_t capacity = 256) : capacity_(capacity) {}

  // MakeKey is the cache key of a chain: `verifier` (unique per verifier ever created in this
  // process), the role, and the SHA-256 of `leaf` and then of each certificate of `untrusted`
  // (the chain the peer sent, which may repeat the leaf). Nullopt if a certificate cannot be
  // encoded.
  static std::optional<std::string> MakeKey(uint64_t verifier, pki::PeerRole role, X509* leaf,
                                            STACK_OF(X509) * untrusted);

  // Find returns the identity verified for `key` if `now` is inside its path's validity window.
  std::optional<pki::SpiffeId> Find(const std::string& key, absl::Time now) const {
    auto it = entries_.find(key);
    if (it == entries_.end() || now < it->second.window.not_before ||
        now >= it->second.window.not_after) {
      return std::nullopt;
    }
    return it->second.id;
  }

  void Insert(std::string key, pki::SpiffeId id, pki::ValidityWindow window) {
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      it->second = Entry{std::move(id), window};
      return;
    }
    if (entries_.size() >= capacity_) {
      entries_.erase(order_.front());
      order_.pop_front();
    }
    order_.push_back(key);
    entries_.emplace(std::move(key), Entry{std::move(id), window});
  }

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    pki::SpiffeId id;
    pki::ValidityWindow window;
  };
  size_t capacity_;
  std::unordered_map<std::string, Entry> entries_;
  std::deque<std::string> order_;  // keys oldest first, exactly those in entries_
};

}  // namespace meshtls::sidecar

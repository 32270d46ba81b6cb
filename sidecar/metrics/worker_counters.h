#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "sidecar/metrics/labels.h"

namespace meshtls::sidecar {

// Counter is written by exactly one thread (its worker) and read by the scrape thread: a
// relaxed load+store, no read-modify-write, so the hot path has no locked instruction.
class Counter {
 public:
  void Add(uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t Get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// Gauge is a single-writer up/down value.
class Gauge {
 public:
  void Add(int64_t n) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  int64_t Get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Histogram is a single-writer histogram on `Buckets` (upper bounds, seconds).
template <const auto& Buckets>
class Histogram {
 public:
  static constexpr const auto& kBuckets = Buckets;
  void Observe(double seconds) {
    size_t i = 0;
    while (i < Buckets.size() && seconds > Buckets[i]) {
      ++i;
    }
    buckets_[i].Add();  // the last slot is +Inf
    sum_ns_.Add(static_cast<uint64_t>(seconds * 1e9));
  }
  uint64_t bucket(size_t i) const { return buckets_[i].Get(); }
  double sum_seconds() const { return static_cast<double>(sum_ns_.Get()) / 1e9; }

 private:
  std::array<Counter, Buckets.size() + 1> buckets_;
  Counter sum_ns_;
};
using LatencyHistogram = Histogram<kHandshakeBuckets>;
using StreamSetupHistogram = Histogram<kStreamSetupBuckets>;

// WorkerCounters is one worker's metric shard, written only by that worker's thread and
// summed by the collector at scrape time. Aligned so two workers never share a cache line.
struct alignas(64) WorkerCounters {
  WorkerCounters(size_t listener_count, size_t capture_decision_count)
      : authz_allow(new Counter[listener_count]),
        authz_deny(new Counter[listener_count]),
        capture_decisions(new Counter[capture_decision_count]) {}

  Counter handshakes[kDirectionCount][kHandshakeResultCount];
  LatencyHistogram handshake_latency[kDirectionCount][2];  // [direction][resumed]
  Counter connections_total[kDirectionCount];
  Gauge connections_active[kDirectionCount];
  Counter bytes_received[kDirectionCount];  // from the remote peer (the TLS side)
  Counter bytes_sent[kDirectionCount];      // to the remote peer
  Counter refused[kDirectionCount][kRefusedReasonCount];
  Counter dns_lookups[kDnsLookupResultCount];
  // The pooled transport: open pooled connections, app connections carried as streams by how
  // they were set up, streams open, and how long setting one up took (outbound: from the app's
  // connection to the peer's 200; inbound: from the CONNECT to the app's connection).
  Gauge pooled_connections[kDirectionCount];
  Counter pooled_streams[kDirectionCount][kStreamResultCount];
  Gauge pooled_streams_active[kDirectionCount];
  StreamSetupHistogram
      stream_setup[kDirectionCount];  // outbound and inbound targets given as names
  // Indexed by listener id (inbound listeners first, then outbound).
  std::unique_ptr<Counter[]> authz_allow;
  std::unique_ptr<Counter[]> authz_deny;
  // Transparent mode: indexed by decision id (CaptureDecisionLabel, in the collector).
  std::unique_ptr<Counter[]> capture_decisions;
};

}  // namespace meshtls::sidecar

#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/base/fd.h"

namespace meshtls::testing {

// TrafficLoad keeps traffic flowing through a plain-TCP port (a sidecar's outbound listener)
// until stopped: `long_lived` connections doing echo round trips of 1-6 KB, plus one thread
// opening new connections with one round trip each. Every byte is checked against what was
// sent; the first failure is kept and ends that thread. Each round trip is bounded (10 s), and
// Stop() (or destruction) ends the load.
class TrafficLoad {
 public:
  // Connect opens one connection of the load; it is called on the load's own threads.
  using Connect = std::function<absl::StatusOr<base::UniqueFd>()>;
  TrafficLoad(uint16_t port, int long_lived);
  // This one connects with `connect` (from inside a pod, to a pod's address, say).
  TrafficLoad(Connect connect, int long_lived);
  ~TrafficLoad() { Stop(); }
  void Stop();
  int failures() const { return failures_.load(); }
  int new_connections() const { return new_connections_.load(); }
  uint64_t bytes_checked() const { return bytes_.load(); }
  std::string first_failure();

 private:
  bool RoundTrip(int fd, size_t size, const std::string& what);
  void Fail(const std::string& what);
  std::atomic<bool> stop_{false};
  std::atomic<int> failures_{0};
  std::atomic<int> new_connections_{0};
  std::atomic<uint64_t> bytes_{0};
  std::mutex mu_;
  std::string first_failure_;  // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace meshtls::testing

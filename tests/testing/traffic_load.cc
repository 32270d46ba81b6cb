#include "tests/testing/traffic_load.h"

#include "absl/strings/str_cat.h"
#include "tests/testing/harness.h"

namespace meshtls::testing {

TrafficLoad::TrafficLoad(uint16_t port, int long_lived)
    : TrafficLoad([port] { return TcpConnect(port); }, long_lived) {}

TrafficLoad::TrafficLoad(Connect connect, int long_lived) {
  for (int i = 0; i < long_lived; ++i) {
    threads_.emplace_back([this, connect, i] {
      absl::StatusOr<base::UniqueFd> conn = connect();
      if (!conn.ok()) {
        Fail("long-lived connect: " + std::string(conn.status().message()));
        return;
      }
      for (int round = 0; !stop_.load(); ++round) {
        if (!RoundTrip(conn->get(), 1000 + 97 * ((round + i) % 50),
                       absl::StrCat("long-lived connection ", i, " round ", round))) {
          return;
        }
      }
    });
  }
  threads_.emplace_back([this, connect] {
    for (int n = 0; !stop_.load(); ++n) {
      absl::StatusOr<base::UniqueFd> conn = connect();
      if (!conn.ok()) {
        Fail(absl::StrCat("new connection ", n, ": ", conn.status().message()));
        return;
      }
      if (!RoundTrip(conn->get(), 4096 + n % 100, absl::StrCat("new connection ", n))) {
        return;
      }
      new_connections_.fetch_add(1);
    }
  });
}

void TrafficLoad::Stop() {
  stop_.store(true);
  for (std::thread& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
}

std::string TrafficLoad::first_failure() {
  std::lock_guard<std::mutex> lock(mu_);
  return first_failure_;
}

bool TrafficLoad::RoundTrip(int fd, size_t size, const std::string& what) {
  const std::string payload = RandomBytes(size);
  absl::Status sent = SendAll(fd, payload);
  absl::StatusOr<std::string> back = RecvExactly(fd, payload.size(), absl::Seconds(10));
  if (!sent.ok() || !back.ok() || *back != payload) {
    Fail(absl::StrCat(what, ": ",
                      !sent.ok()   ? std::string(sent.message())
                      : !back.ok() ? std::string(back.status().message())
                                   : "corrupted bytes"));
    return false;
  }
  bytes_.fetch_add(payload.size());
  return true;
}

void TrafficLoad::Fail(const std::string& what) {
  if (failures_.fetch_add(1) == 0) {
    std::lock_guard<std::mutex> lock(mu_);
    first_failure_ = what;
  }
}

}  // namespace meshtls::testing

#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "certmgr/base/host_port.h"
#include "sidecar/net/socket.h"

namespace meshtls::sidecar::net {

// Resolver runs getaddrinfo on its own thread so workers never block on DNS. IP literals are
// answered at once without the thread. Callbacks run on the resolver thread: callers Post
// results back to their loop. Thread-safe.
class Resolver {
 public:
  using Callback = absl::AnyInvocable<void(absl::StatusOr<SocketAddress>)>;
  Resolver();
  ~Resolver();
  void Resolve(const base::HostPort& target, Callback callback);

 private:
  struct Request {
    base::HostPort target;
    Callback callback;
  };
  void Run();
  // std::mutex (not absl::Mutex) so ThreadSanitizer sees the handoff (see EventLoop).
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Request> queue_;  // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
  std::thread thread_;
};

}  // namespace meshtls::sidecar::net

#pragma once

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
  absl::Mutex mu_;
  std::vector<Request> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace meshtls::sidecar::net

#include "sidecar/net/resolver.h"

#include <netdb.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace meshtls::sidecar::net {

Resolver::Resolver() : thread_([this] { Run(); }) {}

Resolver::~Resolver() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Resolver::Resolve(const base::HostPort& target, Callback callback) {
  if (target.host_is_ip) {
    callback(ToSocketAddress(target));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back({target, std::move(callback)});
  }
  cv_.notify_one();
}

void Resolver::Run() {
  while (true) {
    std::vector<Request> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) {
        return;
      }
      batch.swap(queue_);
    }
    for (Request& r : batch) {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* result = nullptr;
      const std::string port = absl::StrCat(r.target.port);
      int rc = ::getaddrinfo(r.target.host.c_str(), port.c_str(), &hints, &result);
      if (rc != 0 || result == nullptr) {
        r.callback(absl::UnavailableError(
            absl::StrCat("cannot resolve ", r.target.host, ": ", gai_strerror(rc))));
        continue;
      }
      SocketAddress a;
      std::memcpy(&a.storage, result->ai_addr, result->ai_addrlen);
      a.length = result->ai_addrlen;
      ::freeaddrinfo(result);
      r.callback(a);
    }
  }
}

}  // namespace meshtls::sidecar::net

#include "sidecar/server/app_prober.h"

#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/base/fd.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace meshtls::sidecar {
namespace {

admin::HttpResponse Failed(absl::string_view why) {
  return admin::HttpResponse{.status = 503, .body = absl::StrCat(why, "\n")};
}

// WaitFor polls `fd` for `events` until `deadline`; false on timeout or error.
bool WaitFor(int fd, short events, absl::Time deadline) {
  while (true) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      return false;
    }
    pollfd p{.fd = fd, .events = events, .revents = 0};
    const int n = ::poll(&p, 1, static_cast<int>(left_ms));
    if (n > 0) {
      return true;
    }
    if (n < 0 && errno != EINTR) {
      return false;
    }
  }
}

}  // namespace

namespace {

// GrpcCheck asks the app's gRPC health service, in plain text (h2c) on loopback, on a channel
// of its own that ends with the probe.
admin::HttpResponse GrpcCheck(const SidecarConfig::AppProbe& probe, absl::Time deadline) {
  const std::string target = absl::StrCat("127.0.0.1:", probe.port);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  std::unique_ptr<grpc::health::v1::Health::Stub> stub = grpc::health::v1::Health::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(probe.grpc_service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  const std::string what = absl::StrCat("gRPC health of \"", probe.grpc_service, "\" on ", target);
  if (!status.ok()) {
    return Failed(absl::StrCat(what, ": ", status.error_message(), " (code ",
                               static_cast<int>(status.error_code()), ")"));
  }
  const std::string serving =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return Failed(absl::StrCat(what, ": ", serving));
  }
  return admin::HttpResponse{.body = absl::StrCat(what, ": ", serving, "\n")};
}

}  // namespace

admin::HttpResponse ProbeApp(const SidecarConfig::AppProbe& probe) {
  const absl::Time deadline = absl::Now() + probe.timeout;
  if (probe.grpc) {
    return GrpcCheck(probe, deadline);
  }
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return Failed(absl::StrCat("socket: ", std::strerror(errno)));
  }
  sockaddr_in app{};
  app.sin_family = AF_INET;
  app.sin_port = htons(probe.port);
  app.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const std::string target = absl::StrCat("127.0.0.1:", probe.port);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&app), sizeof(app)) != 0 &&
      errno != EINPROGRESS) {
    return Failed(absl::StrCat("connect ", target, ": ", std::strerror(errno)));
  }
  if (!WaitFor(fd.get(), POLLOUT, deadline)) {
    return Failed(absl::StrCat("connect ", target, ": timed out"));
  }
  int error = 0;
  socklen_t length = sizeof(error);
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) {
    return Failed(absl::StrCat("connect ", target, ": ", std::strerror(error)));
  }
  if (probe.http_path.empty()) {
    return admin::HttpResponse{.body = absl::StrCat("connected to ", target, "\n")};
  }

  // The kubelet's request: its User-Agent and Accept, the configured headers (a Host header
  // among them replaces the default), and no keep-alive.
  bool has_host = false;
  std::string headers;
  for (const auto& [name, value] : probe.http_headers) {
    has_host = has_host || absl::EqualsIgnoreCase(name, "Host");
    absl::StrAppend(&headers, name, ": ", value, "\r\n");
  }
  const std::string request = absl::StrCat(
      "GET ", probe.http_path, " HTTP/1.1\r\n",
      has_host ? "" : absl::StrCat("Host: ", target, "\r\n"),
      "User-Agent: kube-probe/meshtls\r\nAccept: */*\r\nConnection: close\r\n", headers, "\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!WaitFor(fd.get(), POLLOUT, deadline)) {
        return Failed(absl::StrCat("GET ", probe.http_path, " on ", target, ": timed out"));
      }
    } else {
      return Failed(
          absl::StrCat("GET ", probe.http_path, " on ", target, ": ", std::strerror(errno)));
    }
  }
  // Only the status line matters: "HTTP/1.x NNN ...".
  std::string head;
  while (head.find("\r\n") == std::string::npos && head.size() < 1024) {
    if (!WaitFor(fd.get(), POLLIN, deadline)) {
      return Failed(absl::StrCat("GET ", probe.http_path, " on ", target, ": timed out"));
    }
    char buffer[512];
    const ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
    if (n == 0) {
      break;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        continue;
      }
      return Failed(
          absl::StrCat("GET ", probe.http_path, " on ", target, ": ", std::strerror(errno)));
    }
    head.append(buffer, static_cast<size_t>(n));
  }
  int status = 0;
  const absl::string_view line = absl::string_view(head).substr(0, head.find("\r\n"));
  if (!absl::StartsWith(line, "HTTP/1.") || line.size() < 12 || line[8] != ' ' ||
      !absl::SimpleAtoi(line.substr(9, 3), &status)) {
    return Failed(
        absl::StrCat("GET ", probe.http_path, " on ", target, ": the answer is not HTTP/1.x"));
  }
  if (status < 200 || status >= 400) {
    return Failed(absl::StrCat("GET ", probe.http_path, " on ", target, ": status ", status));
  }
  return admin::HttpResponse{
      .body = absl::StrCat("GET ", probe.http_path, " on ", target, ": status ", status, "\n")};
}

void AppProber::Probe(const SidecarConfig::AppProbe& probe, admin::Reply reply) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<admin::Reply>& waiting = waiting_[probe.path];
    waiting.push_back(std::move(reply));
    if (waiting.size() > 1) {
      return;  // this path's probe is running: its answer is this request's too
    }
  }
  // Answer everyone waiting for `path` with `r`.
  auto answer = [this](const std::string& path, const admin::HttpResponse& r) {
    std::vector<admin::Reply> replies;
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies.swap(waiting_[path]);
      waiting_.erase(path);
    }
    for (admin::Reply& waiting : replies) {
      waiting(r);
    }
  };
  if (!threads_.TryRun([probe, answer] { answer(probe.path, ProbeApp(probe)); })) {
    answer(probe.path, Failed("too many app probes in flight"));
  }
}

}  // namespace meshtls::sidecar

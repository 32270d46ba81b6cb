// ProbeApp and AppProber against real loopback servers: what passes and fails as for the
// kubelet (a TCP connect; an HTTP status 200-399), the request the app sees, and the bounds
// (the probe's timeout, the cap on probes in flight).

#include "sidecar/server/app_prober.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::sidecar {
namespace {

using ::testing::HasSubstr;

// HttpApp answers each connection with `status_line` after reading the request head, which it
// keeps for the test.
class HttpApp {
 public:
  explicit HttpApp(std::string status_line)
      : server_([this, status_line = std::move(status_line)](base::UniqueFd fd) {
          std::string head;
          char buffer[1024];
          while (head.find("\r\n\r\n") == std::string::npos) {
            const ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
            if (n <= 0) {
              return;
            }
            head.append(buffer, static_cast<size_t>(n));
          }
          {
            std::lock_guard<std::mutex> lock(mu_);
            last_request_ = head;
          }
          (void)testing::SendAll(fd.get(), status_line + "\r\nContent-Length: 0\r\n\r\n");
        }) {}
  uint16_t port() const { return server_.port(); }
  std::string last_request() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_request_;
  }

 private:
  std::mutex mu_;
  std::string last_request_;
  testing::ScriptedTcpServer server_;
};

SidecarConfig::AppProbe Probe(uint16_t port, std::string http_path = "") {
  SidecarConfig::AppProbe probe;
  probe.path = "/app-health/app/livez";
  probe.port = port;
  probe.http_path = std::move(http_path);
  probe.timeout = absl::Seconds(2);
  return probe;
}

TEST(ProbeAppTest, HttpStatusesPassAndFailAsForTheKubelet) {
  for (const auto& [line, want] :
       std::vector<std::pair<std::string, int>>{{"HTTP/1.1 200 OK", 200},
                                                {"HTTP/1.1 204 No Content", 200},
                                                {"HTTP/1.0 302 Found", 200},
                                                {"HTTP/1.1 404 Not Found", 503},
                                                {"HTTP/1.1 500 Internal Server Error", 503},
                                                {"SSH-2.0-OpenSSH", 503}}) {
    HttpApp app(line);
    admin::HttpResponse r = ProbeApp(Probe(app.port(), "/healthz?full=1"));
    EXPECT_EQ(r.status, want) << line << ": " << r.body;
  }
}

TEST(ProbeAppTest, SendsTheKubeletsRequestWithTheConfiguredHeaders) {
  HttpApp app("HTTP/1.1 200 OK");
  SidecarConfig::AppProbe probe = Probe(app.port(), "/healthz?full=1");
  probe.http_headers = {{"X-Probe", "yes"}, {"Host", "web.local"}};
  ASSERT_EQ(ProbeApp(probe).status, 200);
  const std::string request = app.last_request();
  EXPECT_THAT(request, ::testing::StartsWith("GET /healthz?full=1 HTTP/1.1\r\n"));
  EXPECT_THAT(request, HasSubstr("\r\nX-Probe: yes\r\n"));
  EXPECT_THAT(request, HasSubstr("\r\nHost: web.local\r\n"));
  EXPECT_THAT(request, ::testing::Not(HasSubstr("Host: 127.0.0.1")));
  EXPECT_THAT(request, HasSubstr("User-Agent: kube-probe/meshtls\r\n"));
}

TEST(ProbeAppTest, TcpProbePassesOnConnectAndFailsOnRefusal) {
  testing::ScriptedTcpServer app([](base::UniqueFd) {});
  EXPECT_EQ(ProbeApp(Probe(app.port())).status, 200);
  uint16_t closed = 0;
  {
    // A port nobody listens on: reserved (bound, not listening) while the probe runs.
    base::UniqueFd reserved = testing::ReserveLoopbackPort(&closed);
    admin::HttpResponse refused = ProbeApp(Probe(closed));
    EXPECT_EQ(refused.status, 503);
    EXPECT_THAT(refused.body, HasSubstr("Connection refused"));
  }
}

TEST(ProbeAppTest, AnAppThatNeverAnswersFailsAtTheTimeout) {
  std::promise<void> done;
  std::shared_future<void> released = done.get_future().share();
  testing::ScriptedTcpServer app([released](base::UniqueFd) { released.wait(); });
  SidecarConfig::AppProbe probe = Probe(app.port(), "/healthz");
  probe.timeout = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  admin::HttpResponse r = ProbeApp(probe);
  EXPECT_EQ(r.status, 503);
  EXPECT_THAT(r.body, HasSubstr("timed out"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  done.set_value();
}

// HealthService is an app's gRPC health service: a status per service name, NOT_FOUND for
// names it does not know (as gRPC's own implementation answers).
class HealthService final : public grpc::health::v1::Health::Service {
 public:
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override {
    using Status = grpc::health::v1::HealthCheckResponse;
    if (request->service().empty() || request->service() == "shop.Cart") {
      response->set_status(Status::SERVING);
    } else if (request->service() == "shop.Pay") {
      response->set_status(Status::NOT_SERVING);
    } else {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service");
    }
    return grpc::Status::OK;
  }
};

TEST(ProbeAppTest, GrpcHealthPassesOnlyWhenServing) {
  HealthService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto check = [&](const std::string& name) {
    SidecarConfig::AppProbe probe = Probe(static_cast<uint16_t>(port));
    probe.grpc = true;
    probe.grpc_service = name;
    return ProbeApp(probe);
  };
  EXPECT_EQ(check("").status, 200) << check("").body;
  EXPECT_EQ(check("shop.Cart").status, 200);
  admin::HttpResponse not_serving = check("shop.Pay");
  EXPECT_EQ(not_serving.status, 503);
  EXPECT_THAT(not_serving.body, HasSubstr("NOT_SERVING"));
  admin::HttpResponse unknown = check("shop.Unknown");
  EXPECT_EQ(unknown.status, 503);
  EXPECT_THAT(unknown.body, HasSubstr("unknown service"));
  server->Shutdown();
  server->Wait();
  admin::HttpResponse gone = check("");
  EXPECT_EQ(gone.status, 503);
  EXPECT_THAT(gone.body, HasSubstr("gRPC health of \"\" on 127.0.0.1:"));
}

TEST(AppProberTest, ProbesRunOffTheCallersThreadAndBeyondTheCapFailAtOnce) {
  std::promise<void> done;
  std::shared_future<void> released = done.get_future().share();
  testing::ScriptedTcpServer app([released](base::UniqueFd fd) {
    released.wait();
    (void)testing::SendAll(fd.get(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  });
  AppProber prober(/*max_in_flight=*/1);
  std::promise<admin::HttpResponse> first;
  prober.Probe(Probe(app.port(), "/healthz"),
               [&first](admin::HttpResponse r) { first.set_value(std::move(r)); });
  // The first probe waits on the app; one of another path is over the cap and fails at once.
  SidecarConfig::AppProbe other = Probe(app.port(), "/healthz");
  other.path = "/app-health/app/readyz";
  std::promise<admin::HttpResponse> second;
  prober.Probe(other, [&second](admin::HttpResponse r) { second.set_value(std::move(r)); });
  std::future<admin::HttpResponse> second_result = second.get_future();
  ASSERT_EQ(second_result.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  admin::HttpResponse over_cap = second_result.get();
  EXPECT_EQ(over_cap.status, 503);
  EXPECT_THAT(over_cap.body, HasSubstr("too many app probes in flight"));
  done.set_value();
  std::future<admin::HttpResponse> first_result = first.get_future();
  ASSERT_EQ(first_result.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(first_result.get().status, 200);
}

TEST(AppProberTest, RequestsForAPathBeingProbedShareItsAnswer) {
  std::promise<void> done;
  std::shared_future<void> released = done.get_future().share();
  testing::ScriptedTcpServer app([released](base::UniqueFd fd) {
    released.wait();
    (void)testing::SendAll(fd.get(), "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
  });
  AppProber prober(/*max_in_flight=*/1);
  std::vector<std::promise<admin::HttpResponse>> answers(5);
  for (auto& answer : answers) {
    prober.Probe(Probe(app.port(), "/healthz"),
                 [&answer](admin::HttpResponse r) { answer.set_value(std::move(r)); });
  }
  done.set_value();
  for (auto& answer : answers) {
    std::future<admin::HttpResponse> result = answer.get_future();
    ASSERT_EQ(result.wait_for(std::chrono::seconds(5)), std::future_status::ready);
    admin::HttpResponse r = result.get();
    EXPECT_EQ(r.status, 503);
    EXPECT_THAT(r.body, HasSubstr("status 500"));
  }
  EXPECT_EQ(app.accepted(), 1);  // one probe of the app for all five requests
}

}  // namespace
}  // namespace meshtls::sidecar

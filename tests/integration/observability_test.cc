// The observability contract, proven against a real Prometheus (Debian's `prometheus`) on
// loopback: it scrapes certmgr and two sidecars carrying traffic, some of it failing. Then
//  - every metric family listed below (from docs/metrics.md) is in the live scrapes and `promtool
//  check metrics` accepts them;
//  - tests/observability/check-dashboards.mjs validates both dashboards against the Grafana
//    schema, fills their variables from this Prometheus, and every panel query returns data;
//  - the alert rules load into this Prometheus and evaluate without error, and
//    `promtool check rules` / `promtool test rules` / `promtool check config` pass.
// Everything binds 127.0.0.1, lives in a temporary directory, and is stopped at the end.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tls_peer.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::IsOk;
using testing::SidecarProcess;

constexpr char kTd[] = "mesh.test";
const std::string kFrontend = "spiffe://mesh.test/ns/shop/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/shop/sa/backend";
const std::string kSource = MESHTLS_SOURCE_DIR;

// The documented metrics (docs/metrics.md), as metric families (a histogram by its base name).
constexpr const char* kSidecarFamilies[] = {"meshtls_tls_handshakes_total",
                                            "meshtls_tls_handshake_duration_seconds",
                                            "meshtls_connections_active",
                                            "meshtls_connections_total",
                                            "meshtls_bytes_total",
                                            "meshtls_authz_decisions_total",
                                            "meshtls_cert_not_after_timestamp_seconds",
                                            "meshtls_cert_not_before_timestamp_seconds",
                                            "meshtls_cert_renewal_due_timestamp_seconds",
                                            "meshtls_cert_last_renewal_timestamp_seconds",
                                            "meshtls_cert_renewals_total",
                                            "meshtls_trust_bundle_roots",
                                            "meshtls_trust_bundle_sequence",
                                            "meshtls_tls_context_generation",
                                            "meshtls_pooled_connections",
                                            "meshtls_pooled_streams_total",
                                            "meshtls_pooled_streams_active",
                                            "meshtls_pooled_stream_setup_seconds"};
constexpr const char* kCertmgrFamilies[] = {
    "meshtls_certmgr_sign_requests_total", "meshtls_certmgr_sign_duration_seconds",
    "meshtls_certmgr_ca_not_after_timestamp_seconds", "meshtls_certmgr_trust_bundle_watchers"};

std::string UrlEncode(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// RunToExit runs argv to completion (bounded) and returns its exit code and output.
struct RunResult {
  int exit_code = -1;
  std::string output;
};
RunResult RunToExit(const testing::TempDir& dir, const std::string& name,
                    std::vector<std::string> argv, absl::Duration timeout = absl::Seconds(120)) {
  RunResult r;
  absl::StatusOr<std::unique_ptr<testing::Subprocess>> p =
      testing::Subprocess::Start(std::move(argv), dir.File(name + ".out"));
  if (!p.ok()) {
    r.output = std::string(p.status().message());
    return r;
  }
  std::optional<int> code = (*p)->WaitForExit(timeout);
  r.exit_code = code.value_or(-1);
  r.output = (*p)->Log();
  if (!code.has_value()) {
    (*p)->Signal(SIGKILL);
    (void)(*p)->WaitForExit(absl::Seconds(5));
  }
  return r;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prometheus_bin_ = testing::FindProgram("prometheus");
    promtool_bin_ = testing::FindProgram("promtool");
    node_bin_ = testing::FindProgram("node");
    ASSERT_FALSE(prometheus_bin_.empty() || promtool_bin_.empty())
        << "Debian's prometheus package is needed (scripts/test.sh installs it)";
    ASSERT_FALSE(node_bin_.empty()) << "node is needed (scripts/test.sh installs it)";
    ASSERT_TRUE(
        base::ReadFileToString(kSource + "/tests/observability/node_modules/.package-lock.json")
            .ok())
        << "run `npm ci --prefix tests/observability` (scripts/test.sh does)";
  }

  // WritePrometheusConfig scrapes certmgr and, once started, the sidecars, every second; with
  // namespace/pod labels as the Kubernetes example config attaches them.
  void WritePrometheusConfig() {
    std::string c = absl::StrCat(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n", "rule_files: ['", kSource,
        "/deploy/prometheus/meshtls-alerts.yaml']\n", "scrape_configs:\n",
        "  - job_name: meshtls-certmgr\n    static_configs:\n      - targets: ['127.0.0.1:",
        certmgr_->admin_port(),
        "']\n        labels: {namespace: meshtls-system, pod: certmgr-0}\n");
    if (backend_ != nullptr) {
      absl::StrAppend(&c, "  - job_name: meshtls-sidecar\n    static_configs:\n",
                      "      - targets: ['127.0.0.1:", backend_->admin_port(),
                      "']\n        labels: {namespace: shop, pod: backend-0}\n",
                      "      - targets: ['127.0.0.1:", frontend_->admin_port(),
                      "']\n        labels: {namespace: shop, pod: frontend-0}\n");
    }
    dir_.Write("prometheus.yml", c);
  }

  // StartPrometheus runs Prometheus on a port of the kernel's choice; Prometheus does not print
  // it, so it is read from the process's one listening socket.
  void StartPrometheus() {
    WritePrometheusConfig();
    auto p = testing::Subprocess::Start(
        {prometheus_bin_, absl::StrCat("--config.file=", dir_.File("prometheus.yml")),
         absl::StrCat("--storage.tsdb.path=", dir_.File("tsdb")),
         "--web.listen-address=127.0.0.1:0", "--storage.tsdb.retention.time=1h",
         "--log.level=warn"},
        dir_.File("prometheus.log"));
    ASSERT_THAT(p, IsOk());
    prometheus_ = *std::move(p);
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          const std::vector<uint16_t> ports = testing::ListeningPorts(prometheus_->pid());
          prometheus_port_ = ports.size() == 1 ? ports[0] : 0;
          return prometheus_port_ != 0 || prometheus_->WaitForExit(absl::ZeroDuration());
        },
        absl::Seconds(30)))
        << prometheus_->Log();
    ASSERT_NE(prometheus_port_, 0) << prometheus_->Log();
    const uint16_t port = prometheus_port_;
    ASSERT_TRUE(testing::WaitFor(
        [port] {
          absl::StatusOr<testing::HttpResult> r = testing::HttpGet(port, "/-/ready");
          return r.ok() && r->status == 200;
        },
        absl::Seconds(30)))
        << prometheus_->Log();
  }

  // Query runs an instant query and returns the raw JSON body ("" on error).
  std::string Query(const std::string& promql) {
    absl::StatusOr<testing::HttpResult> r =
        testing::HttpGet(prometheus_port_, "/api/v1/query?query=" + UrlEncode(promql));
    if (!r.ok() || r->status != 200) {
      return "";
    }
    return r->body;
  }
  // HasResult: the query succeeded and returned at least one series.
  bool HasResult(const std::string& promql) {
    const std::string body = Query(promql);
    return absl::StrContains(body, R"("status":"success")") &&
           absl::StrContains(body, R"("result":[{)");
  }

  absl::StatusOr<std::unique_ptr<SidecarProcess>> StartSidecar(const std::string& name,
                                                               const std::string& id,
                                                               const std::string& listeners) {
    return SidecarProcess::Start(
        dir_, name,
        absl::StrCat("trust_domain: ", kTd, "\n",
                     certmgr_->SidecarIdentityYaml(certmgr_->TokenFile(id, name + ".token")),
                     listeners));
  }

  testing::TempDir dir_;
  testing::EchoServer app_;
  std::string prometheus_bin_, promtool_bin_, node_bin_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
  std::unique_ptr<testing::Subprocess> prometheus_;  // declared last: stopped first
  uint16_t prometheus_port_ = 0;
};

TEST_F(ObservabilityTest, DashboardsAndAlertRulesWorkOnARealPrometheusScrapingALiveMesh) {
  const absl::Time start = absl::Now();
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd));
  ASSERT_NO_FATAL_FAILURE(StartPrometheus());
  // certmgr is scraped before any sidecar asks for a certificate, so its sign counters and
  // histogram rise under Prometheus's eyes (rate() needs a sample before the rise).
  ASSERT_TRUE(testing::WaitFor([&] { return HasResult(R"(up{job="meshtls-certmgr"} == 1)"); },
                               absl::Seconds(30)))
      << prometheus_->Log();

  // backend: `http` lets the frontend in; `admin` lets nobody in (the frontend's second
  // outbound listener goes there, to be denied). frontend: both outbound listeners.
  // The backend first: the frontend's config names the backend's inbound ports.
  MESHTLS_ASSERT_OK_AND_MOVE(
      backend_,
      StartSidecar("backend", kBackend,
                   absl::StrCat("inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                "\n    forward: 127.0.0.1:", app_.port(), "\n    allow: [",
                                kFrontend, "]\n  - name: admin\n    listen: 127.0.0.1:0",
                                "\n    forward: 127.0.0.1:", app_.port(),
                                "\n    allow: [spiffe://mesh.test/ns/ops/sa/operator]\n")));
  const uint16_t http_port = backend_->port("inbound.http");
  const uint16_t admin_port = backend_->port("inbound.admin");
  MESHTLS_ASSERT_OK_AND_MOVE(
      frontend_,
      StartSidecar("frontend", kFrontend,
                   absl::StrCat("outbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                                "\n    connect: 127.0.0.1:", http_port, "\n    expect: [", kBackend,
                                "]\n  - name: backend-admin\n    listen: 127.0.0.1:0",
                                "\n    connect: 127.0.0.1:", admin_port, "\n    expect: [",
                                kBackend, "]\n  - name: backend-pooled\n    listen: 127.0.0.1:0",
                                "\n    connect: 127.0.0.1:", http_port, "\n    expect: [",
                                kBackend, "]\n    transport: pooled\n")));
  const uint16_t to_http = frontend_->port("outbound.backend");
  const uint16_t to_admin = frontend_->port("outbound.backend-admin");
  const uint16_t to_pooled = frontend_->port("outbound.backend-pooled");
  ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
  ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  WritePrometheusConfig();
  prometheus_->Signal(SIGHUP);
  ASSERT_TRUE(
      testing::WaitFor([&] { return HasResult(R"(count(up{job="meshtls-sidecar"} == 1) == 2)"); },
                       absl::Seconds(30)))
      << prometheus_->Log();

  // Traffic, until Prometheus holds 15 s of it: echo round trips on new connections (full and
  // resumed handshakes), and every 10th round one failing handshake of each kind: no client
  // certificate, plaintext on the TLS port, and an identity the listener denies. Bounded in
  // rounds and time.
  const std::string enough =
      R"(count_over_time(meshtls_tls_handshakes_total{pod="backend-0",direction="inbound",result="success"}[1m]) >= 15)";
  int rounds = 0;
  bool have_enough = false;
  for (; rounds < 20000 && !have_enough && absl::Now() - start < absl::Seconds(90); ++rounds) {
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(to_http);
    ASSERT_THAT(conn, IsOk());
    const std::string payload = testing::RandomBytes(512 + rounds % 1024);
    ASSERT_THAT(testing::SendAll(conn->get(), payload), IsOk());
    absl::StatusOr<std::string> echo =
        testing::RecvExactly(conn->get(), payload.size(), absl::Seconds(10));
    ASSERT_THAT(echo, IsOk()) << "round " << rounds;
    ASSERT_EQ(*echo, payload);
    // The same through the pooled transport: one stream per round, one pooled connection.
    absl::StatusOr<base::UniqueFd> pooled = testing::TcpConnect(to_pooled);
    ASSERT_THAT(pooled, IsOk());
    ASSERT_THAT(testing::SendAll(pooled->get(), payload), IsOk());
    absl::StatusOr<std::string> pooled_echo =
        testing::RecvExactly(pooled->get(), payload.size(), absl::Seconds(10));
    ASSERT_THAT(pooled_echo, IsOk()) << "round " << rounds;
    ASSERT_EQ(*pooled_echo, payload);
    if (rounds % 10 == 0) {
      auto no_cert = testing::TlsClient::Connect(http_port, {}, "");
      if (no_cert.ok()) {
        (void)(*no_cert)->Read(1);
      }
      absl::StatusOr<base::UniqueFd> plain = testing::TcpConnect(http_port);
      ASSERT_THAT(plain, IsOk());
      (void)testing::SendAll(plain->get(), "GET / HTTP/1.1\r\n\r\n");
      (void)testing::RecvUntilEof(plain->get(), absl::Seconds(5));
      // The frontend resets the app's connection once the backend denies it, sometimes before
      // the app's connect() has returned.
      ASSERT_THAT(testing::RefusedWithoutData(to_admin), IsOk());
      have_enough = HasResult(enough);
    }
  }
  ASSERT_TRUE(have_enough) << rounds << " rounds in " << (absl::Now() - start);
  EXPECT_GT(backend_->Metric(testing::HandshakeCount("inbound", true)), 0)
      << "no resumed handshakes: the resumed heatmap would have nothing to show";
  EXPECT_GT(
      backend_->Metric(
          R"(meshtls_authz_decisions_total{direction="inbound",decision="deny",listener="admin"})"),
      0);

  // 1. Every documented family in the live scrapes, which promtool accepts.
  const struct {
    std::string name;
    uint16_t port;
    std::vector<const char*> families;
  } targets[] = {
      {"certmgr",
       certmgr_->admin_port(),
       {std::begin(kCertmgrFamilies), std::end(kCertmgrFamilies)}},
      {"backend",
       backend_->admin_port(),
       {std::begin(kSidecarFamilies), std::end(kSidecarFamilies)}},
      {"frontend",
       frontend_->admin_port(),
       {std::begin(kSidecarFamilies), std::end(kSidecarFamilies)}},
  };
  for (const auto& t : targets) {
    absl::StatusOr<testing::HttpResult> scrape = testing::HttpGet(t.port, "/metrics");
    ASSERT_THAT(scrape, IsOk());
    for (const char* family : t.families) {
      EXPECT_TRUE(absl::StrContains(scrape->body, absl::StrCat("# TYPE ", family, " ")))
          << t.name << " does not export " << family;
    }
    const std::string file = dir_.Write(t.name + ".metrics", scrape->body);
    RunResult check = RunToExit(dir_, t.name + "-check-metrics",
                                {"/bin/sh", "-c", promtool_bin_ + " check metrics < " + file});
    EXPECT_EQ(check.exit_code, 0) << t.name << ": promtool check metrics:\n" << check.output;
  }

  // 2. The dashboards: schema, listing, and every panel query with data.
  const int window = static_cast<int>(absl::ToInt64Seconds(absl::Now() - start)) + 5;
  RunResult dashboards = RunToExit(
      dir_, "check-dashboards",
      {node_bin_, kSource + "/tests/observability/check-dashboards.mjs", "--dashboards",
       kSource + "/dashboards", "--prometheus", absl::StrCat("http://127.0.0.1:", prometheus_port_),
       "--window", std::to_string(window)});
  EXPECT_EQ(dashboards.exit_code, 0) << dashboards.output;
  EXPECT_TRUE(absl::StrContains(dashboards.output, "all dashboard checks passed"))
      << dashboards.output;

  // 3. The alert rules: loaded by this Prometheus and evaluated without error; promtool's
  // checks and unit tests.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        absl::StatusOr<testing::HttpResult> r =
            testing::HttpGet(prometheus_port_, "/api/v1/rules?type=alert");
        return r.ok() && absl::StrContains(r->body, R"("lastEvaluation")") &&
               !absl::StrContains(r->body, R"("lastEvaluation":"0001-)");
      },
      absl::Seconds(15)));
  absl::StatusOr<testing::HttpResult> rules =
      testing::HttpGet(prometheus_port_, "/api/v1/rules?type=alert");
  ASSERT_THAT(rules, IsOk());
  EXPECT_TRUE(absl::StrContains(rules->body, R"("name":"MeshtlsCertmgrDown")")) << rules->body;
  EXPECT_FALSE(absl::StrContains(rules->body, R"("health":"err")")) << rules->body;
  EXPECT_FALSE(absl::StrContains(rules->body, R"("state":"firing")"))
      << "a healthy mesh fires no alert:\n"
      << rules->body;

  const std::string deploy = kSource + "/deploy/prometheus/";
  RunResult check_rules = RunToExit(
      dir_, "check-rules", {promtool_bin_, "check", "rules", deploy + "meshtls-alerts.yaml"});
  EXPECT_EQ(check_rules.exit_code, 0) << check_rules.output;
  RunResult test_rules = RunToExit(
      dir_, "test-rules", {promtool_bin_, "test", "rules", deploy + "meshtls-alerts.test.yaml"});
  EXPECT_EQ(test_rules.exit_code, 0) << test_rules.output;
  EXPECT_TRUE(absl::StrContains(test_rules.output, "SUCCESS")) << test_rules.output;

  // The example scrape config, with Kubernetes discovery swapped for a static target: Debian
  // builds Prometheus without the Kubernetes discoverer, so promtool here cannot parse
  // `kubernetes_sd_configs`. The rest (jobs, relabelling, rule files) is checked as written.
  absl::StatusOr<std::string> example =
      base::ReadFileToString(deploy + "scrape-config.example.yaml");
  ASSERT_THAT(example, IsOk());
  std::vector<std::string> lines;
  bool in_sd = false;
  int swapped = 0;
  for (absl::string_view line : absl::StrSplit(*example, '\n')) {
    if (absl::StrContains(line, "kubernetes_sd_configs:")) {
      in_sd = true;
      ++swapped;
      lines.push_back("    static_configs: [{targets: ['127.0.0.1:9']}]");
      continue;
    }
    if (in_sd && (absl::StartsWith(line, "      ") || line.empty())) {
      continue;
    }
    in_sd = false;
    lines.emplace_back(line);
  }
  EXPECT_EQ(swapped, 2);
  const std::string config_dir = dir_.File("example");
  ASSERT_EQ(::mkdir(config_dir.c_str(), 0755), 0);
  dir_.Write("example/scrape-config.yaml", absl::StrJoin(lines, "\n"));
  absl::StatusOr<std::string> alert_rules = base::ReadFileToString(deploy + "meshtls-alerts.yaml");
  ASSERT_THAT(alert_rules, IsOk());
  dir_.Write("example/meshtls-alerts.yaml", *alert_rules);
  RunResult check_config = RunToExit(
      dir_, "check-config", {promtool_bin_, "check", "config", config_dir + "/scrape-config.yaml"});
  EXPECT_EQ(check_config.exit_code, 0) << check_config.output;
}

}  // namespace
}  // namespace meshtls

#include "sidecar/metrics/collector.h"

#include <prometheus/metric_family.h>

#include <limits>

namespace meshtls::sidecar {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

void AddCounter(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = value;
  f.metric.push_back(std::move(m));
}

void AddGauge(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  f.metric.push_back(std::move(m));
}

}  // namespace

std::vector<MetricFamily> SidecarCollector::Collect() const {
  std::vector<MetricFamily> out;

  MetricFamily handshakes = Family("meshtls_tls_handshakes_total",
                                   "TLS handshakes by direction and result.", MetricType::Counter);
  for (int d = 0; d < kDirectionCount; ++d) {
    for (int r = 0; r < kHandshakeResultCount; ++r) {
      uint64_t sum = 0;
      for (const WorkerCounters* s : shards_) {
        sum += s->handshakes[d][r].Get();
      }
      AddCounter(handshakes,
                 {{"direction", kDirectionNames[d]}, {"result", kHandshakeResultNames[r]}},
                 static_cast<double>(sum));
    }
  }
  out.push_back(std::move(handshakes));

  MetricFamily latency =
      Family("meshtls_tls_handshake_duration_seconds",
             "Time from accept (inbound) or TCP connect (outbound) to a completed handshake.",
             MetricType::Histogram);
  for (int d = 0; d < kDirectionCount; ++d) {
    for (int resumed = 0; resumed < 2; ++resumed) {
      ClientMetric m;
      m.label = {{"direction", kDirectionNames[d]}, {"resumed", resumed ? "true" : "false"}};
      uint64_t cumulative = 0;
      double sum = 0;
      for (size_t b = 0; b <= kHandshakeBuckets.size(); ++b) {
        for (const WorkerCounters* s : shards_) {
          cumulative += s->handshake_latency[d][resumed].bucket(b);
        }
        ClientMetric::Bucket bucket;
        bucket.upper_bound = b < kHandshakeBuckets.size() ? kHandshakeBuckets[b]
                                                          : std::numeric_limits<double>::infinity();
        bucket.cumulative_count = cumulative;
        m.histogram.bucket.push_back(bucket);
      }
      for (const WorkerCounters* s : shards_) {
        sum += s->handshake_latency[d][resumed].sum_seconds();
      }
      m.histogram.sample_count = cumulative;
      m.histogram.sample_sum = sum;
      latency.metric.push_back(std::move(m));
    }
  }
  out.push_back(std::move(latency));

  MetricFamily active =
      Family("meshtls_connections_active", "Open proxied connections.", MetricType::Gauge);
  MetricFamily total =
      Family("meshtls_connections_total", "Accepted connections.", MetricType::Counter);
  MetricFamily bytes = Family("meshtls_bytes_total",
                              "Application bytes relayed; received from / sent to the remote peer.",
                              MetricType::Counter);
  MetricFamily refused =
      Family("meshtls_connections_refused_total",
             "Connections closed before a handshake, by reason.", MetricType::Counter);
  for (int d = 0; d < kDirectionCount; ++d) {
    int64_t a = 0;
    uint64_t t = 0, rx = 0, tx = 0;
    uint64_t ref[kRefusedReasonCount] = {};
    for (const WorkerCounters* s : shards_) {
      a += s->connections_active[d].Get();
      t += s->connections_total[d].Get();
      rx += s->bytes_received[d].Get();
      tx += s->bytes_sent[d].Get();
      for (int r = 0; r < kRefusedReasonCount; ++r) {
        ref[r] += s->refused[d][r].Get();
      }
    }
    AddGauge(active, {{"direction", kDirectionNames[d]}}, static_cast<double>(a));
    AddCounter(total, {{"direction", kDirectionNames[d]}}, static_cast<double>(t));
    AddCounter(bytes, {{"direction", kDirectionNames[d]}, {"flow", "received"}},
               static_cast<double>(rx));
    AddCounter(bytes, {{"direction", kDirectionNames[d]}, {"flow", "sent"}},
               static_cast<double>(tx));
    for (int r = 0; r < kRefusedReasonCount; ++r) {
      AddCounter(refused, {{"direction", kDirectionNames[d]}, {"reason", kRefusedReasonNames[r]}},
                 static_cast<double>(ref[r]));
    }
  }
  out.push_back(std::move(active));
  out.push_back(std::move(total));
  out.push_back(std::move(bytes));
  out.push_back(std::move(refused));

  // The pooled transport.
  MetricFamily pooled =
      Family("meshtls_pooled_connections",
             "Open pooled mutual-TLS connections (HTTP/2), by direction.", MetricType::Gauge);
  MetricFamily streams =
      Family("meshtls_pooled_streams_total",
             "App connections carried as pooled streams (HTTP/2 CONNECT), by direction and result.",
             MetricType::Counter);
  MetricFamily streams_active = Family("meshtls_pooled_streams_active",
                                       "Open pooled streams, by direction.", MetricType::Gauge);
  MetricFamily setup = Family("meshtls_pooled_stream_setup_seconds",
                              "Time to set up a pooled stream: outbound from the app's "
                              "connection to the peer's 200, inbound from the CONNECT to the "
                              "app's connection.",
                              MetricType::Histogram);
  for (int d = 0; d < kDirectionCount; ++d) {
    int64_t links = 0, open_streams = 0;
    uint64_t results[kStreamResultCount] = {};
    for (const WorkerCounters* s : shards_) {
      links += s->pooled_connections[d].Get();
      open_streams += s->pooled_streams_active[d].Get();
      for (int r = 0; r < kStreamResultCount; ++r) {
        results[r] += s->pooled_streams[d][r].Get();
      }
    }
    AddGauge(pooled, {{"direction", kDirectionNames[d]}}, static_cast<double>(links));
    AddGauge(streams_active, {{"direction", kDirectionNames[d]}},
             static_cast<double>(open_streams));
    for (int r = 0; r < kStreamResultCount; ++r) {
      AddCounter(streams, {{"direction", kDirectionNames[d]}, {"result", kStreamResultNames[r]}},
                 static_cast<double>(results[r]));
    }
    ClientMetric m;
    m.label = {{"direction", kDirectionNames[d]}};
    uint64_t cumulative = 0;
    double sum = 0;
    for (size_t b = 0; b <= kStreamSetupBuckets.size(); ++b) {
      for (const WorkerCounters* s : shards_) {
        cumulative += s->stream_setup[d].bucket(b);
      }
      ClientMetric::Bucket bucket;
      bucket.upper_bound = b < kStreamSetupBuckets.size() ? kStreamSetupBuckets[b]
                                                          : std::numeric_limits<double>::infinity();
      bucket.cumulative_count = cumulative;
      m.histogram.bucket.push_back(bucket);
    }
    for (const WorkerCounters* s : shards_) {
      sum += s->stream_setup[d].sum_seconds();
    }
    m.histogram.sample_count = cumulative;
    m.histogram.sample_sum = sum;
    setup.metric.push_back(std::move(m));
  }
  out.push_back(std::move(pooled));
  out.push_back(std::move(streams));
  out.push_back(std::move(streams_active));
  out.push_back(std::move(setup));

  MetricFamily dns = Family("meshtls_dns_lookups_total",
                            "Resolutions of upstream host names (IP literals excluded), by result.",
                            MetricType::Counter);
  for (int r = 0; r < kDnsLookupResultCount; ++r) {
    uint64_t sum = 0;
    for (const WorkerCounters* s : shards_) {
      sum += s->dns_lookups[r].Get();
    }
    AddCounter(dns, {{"result", kDnsLookupResultNames[r]}}, static_cast<double>(sum));
  }
  out.push_back(std::move(dns));

  // Per worker (a small, fixed set: the configured worker count), to see how SO_REUSEPORT
  // spreads connections.
  MetricFamily per_worker =
      Family("meshtls_worker_connections_total",
             "Accepted connections by worker thread (both directions).", MetricType::Counter);
  for (size_t w = 0; w < shards_.size(); ++w) {
    uint64_t accepted = 0;
    for (int d = 0; d < kDirectionCount; ++d) {
      accepted += shards_[w]->connections_total[d].Get();
    }
    AddCounter(per_worker, {{"worker", std::to_string(w)}}, static_cast<double>(accepted));
  }
  out.push_back(std::move(per_worker));

  MetricFamily authz =
      Family("meshtls_authz_decisions_total", "Peer identity authorization decisions by listener.",
             MetricType::Counter);
  for (size_t i = 0; i < listeners_.size(); ++i) {
    if (!listeners_[i].authorizes) {
      continue;
    }
    uint64_t allow = 0, deny = 0;
    for (const WorkerCounters* s : shards_) {
      allow += s->authz_allow[i].Get();
      deny += s->authz_deny[i].Get();
    }
    const char* dir = kDirectionNames[static_cast<int>(listeners_[i].direction)];
    AddCounter(authz, {{"direction", dir}, {"decision", "allow"}, {"listener", listeners_[i].name}},
               static_cast<double>(allow));
    AddCounter(authz, {{"direction", dir}, {"decision", "deny"}, {"listener", listeners_[i].name}},
               static_cast<double>(deny));
  }
  out.push_back(std::move(authz));

  if (!capture_decisions_.empty()) {
    MetricFamily capture = Family("meshtls_capture_decisions_total",
                                  "Transparent-mode decisions on captured connections, by "
                                  "destination rule or inbound port, and action.",
                                  MetricType::Counter);
    for (size_t i = 0; i < capture_decisions_.size(); ++i) {
      uint64_t sum = 0;
      for (const WorkerCounters* s : shards_) {
        sum += s->capture_decisions[i].Get();
      }
      const CaptureDecisionLabel& l = capture_decisions_[i];
      AddCounter(capture,
                 {{"direction", kDirectionNames[static_cast<int>(l.direction)]},
                  {"rule", l.rule},
                  {"action", kCaptureActionNames[static_cast<int>(l.action)]}},
                 static_cast<double>(sum));
    }
    out.push_back(std::move(capture));
  }

  const CredentialGauges c = credentials_();
  auto gauge = [&](const char* name, const char* help, double value) {
    MetricFamily f = Family(name, help, MetricType::Gauge);
    AddGauge(f, {}, value);
    out.push_back(std::move(f));
  };
  gauge("meshtls_cert_not_after_timestamp_seconds",
        "NotAfter of the workload certificate, Unix seconds (0: none).", c.not_after);
  gauge("meshtls_cert_not_before_timestamp_seconds",
        "NotBefore of the workload certificate, Unix seconds (0: none).", c.not_before);
  gauge("meshtls_cert_renewal_due_timestamp_seconds",
        "When the next renewal attempt is due, Unix seconds (0: not scheduled).", c.renewal_due);
  gauge("meshtls_cert_last_renewal_timestamp_seconds",
        "Last successful renewal (or load), Unix seconds (0: never).", c.last_renewal);
  MetricFamily renewals = Family("meshtls_cert_renewals_total",
                                 "Certificate renewal attempts by result.", MetricType::Counter);
  AddCounter(renewals, {{"result", "success"}}, static_cast<double>(c.renewals_success));
  AddCounter(renewals, {{"result", "failure"}}, static_cast<double>(c.renewals_failure));
  out.push_back(std::move(renewals));
  gauge("meshtls_trust_bundle_roots", "Root certificates in the trust bundle.",
        static_cast<double>(c.trust_bundle_roots));
  gauge("meshtls_trust_bundle_sequence", "Sequence number of the trust bundle in use.",
        static_cast<double>(c.trust_bundle_sequence));
  gauge("meshtls_tls_context_generation", "TLS contexts built since start (bumps on rotation).",
        static_cast<double>(c.tls_context_generation));
  return out;
}

}  // namespace meshtls::sidecar

#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/admin/admin_server.h"
#include "common/base/thread_set.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::sidecar {

// ProbeApp runs one of the app's kubelet probes against 127.0.0.1 as the kubelet would: a TCP
// connect, an HTTP/1.1 GET whose status 200-399 passes, or a gRPC health Check answered
// SERVING. Blocks for at most probe.timeout.
// Returns 200 when the probe passes, 503 with the reason when it fails. Any thread.
admin::HttpResponse ProbeApp(const SidecarConfig::AppProbe& probe);

// AppProber answers the admin endpoint's app-probe routes (config `app_probes`). Each probe
// blocks on the app for up to its timeout, so it runs on a thread of its own, never on the
// admin server's (a hung app must not delay the sidecar's own probes or a scrape). One probe of
// a path runs at a time: requests for a path whose probe is running wait for it and share its
// answer (the kubelet asks each path one at a time; anyone else asking more often only shares
// the answers, and cannot crowd out the kubelet's). At most `max_in_flight` paths are probed at
// once; beyond that a probe fails at once (503). Thread-safe; the destructor waits for running
// probes (each ends within its timeout).
class AppProber {
 public:
  explicit AppProber(size_t max_in_flight = 16) : threads_(max_in_flight) {}

  void Probe(const SidecarConfig::AppProbe& probe, admin::Reply reply);

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<admin::Reply>> waiting_;  // by path, while probed; mu_
  base::ThreadSet threads_;  // last: joined before the members its threads use go
};

}  // namespace meshtls::sidecar

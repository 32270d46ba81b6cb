#pragma once

#include <cstddef>

#include "common/admin/admin_server.h"
#include "common/base/thread_set.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::sidecar {

// ProbeApp runs one of the app's kubelet probes against 127.0.0.1 as the kubelet would: a TCP
// connect, or an HTTP/1.1 GET whose status 200-399 passes. Blocks for at most probe.timeout.
// Returns 200 when the probe passes, 503 with the reason when it fails. Any thread.
admin::HttpResponse ProbeApp(const SidecarConfig::AppProbe& probe);

// AppProber answers the admin endpoint's app-probe routes (config `app_probes`). Each probe
// blocks on the app for up to its timeout, so it runs on a thread of its own, never on the
// admin server's (a hung app must not delay the sidecar's own probes or a scrape). At most
// `max_in_flight` run at once; beyond that a probe fails at once (503), which the kubelet
// counts like a timeout. Thread-safe; the destructor waits for running probes (each ends within
// its timeout).
class AppProber {
 public:
  explicit AppProber(size_t max_in_flight = 16) : threads_(max_in_flight) {}

  void Probe(const SidecarConfig::AppProbe& probe, admin::Reply reply);

 private:
  base::ThreadSet threads_;
};

}  // namespace meshtls::sidecar

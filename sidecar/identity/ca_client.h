#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/pki/certificate.h"
#include "common/pki/key.h"

namespace meshtls::sidecar {

// SignedCredentials is certmgr's answer to a CSR, as plain values.
struct SignedCredentials {
  std::vector<pki::Certificate> chain;  // leaf first
  std::vector<pki::Certificate> roots;
  uint64_t bundle_sequence = 0;
  absl::Time not_after;
};

// CallCredentials is what the client presents: its current certificate (renewal) and/or a
// bootstrap token. Either may be absent.
struct CallCredentials {
  std::vector<pki::Certificate> chain;
  std::optional<pki::PrivateKey> key;
  std::optional<std::string> bearer_token;
};

// CaClient talks to certmgr. Implementations are thread-safe.
class CaClient {
 public:
  virtual ~CaClient() = default;
  // Sign sends a CSR. Errors keep certmgr's status code (Unauthenticated, InvalidArgument, ...)
  // or Unavailable / DeadlineExceeded when certmgr cannot be reached.
  virtual absl::StatusOr<SignedCredentials> Sign(const std::string& csr_der,
                                                 const CallCredentials& credentials,
                                                 absl::Duration timeout) = 0;
  // WatchTrustBundle blocks, calling `on_bundle(roots, sequence)` for each bundle received,
  // until the stream ends (returning its status) or CancelWatch() is called. certmgr asks for
  // the same credentials as Sign.
  virtual absl::Status WatchTrustBundle(
      const CallCredentials& credentials,
      const std::function<void(std::vector<pki::Certificate>, uint64_t)>& on_bundle) = 0;
  virtual void CancelWatch() = 0;
  // SetExtraRoots adds roots to the ones trusted for certmgr's serving certificate (the
  // current trust bundle, so a CA rotation keeps certmgr reachable).
  virtual void SetExtraRoots(std::vector<pki::Certificate> roots) = 0;
};

// NewGrpcCaClient talks to the certmgr replicas at `addresses` (each host:port, or any gRPC
// target such as dns:///h:p; at least one), trusting `server_ca_pem` (plus roots set later) for
// certmgr's serving certificate. A name that resolves to several addresses is one entry: gRPC
// tries each of them. Sign fails over to the next entry when one is unreachable or does not
// answer in time; any other answer (a refusal) is final, as every replica would give it.
// With `server_ca_file` (where `server_ca_pem` came from), a changed file is read again before
// the next call, so a new bootstrap CA (after a CA directory was recreated) needs no restart.
std::unique_ptr<CaClient> NewGrpcCaClient(std::vector<std::string> addresses,
                                          std::string server_ca_pem,
                                          std::string server_ca_file = "");

}  // namespace meshtls::sidecar

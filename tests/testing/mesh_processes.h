#pragma once

// The real binaries as test fixtures: certmgr with a fresh CA, sidecars from YAML.

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tests/testing/harness.h"
#include "tests/testing/test_ca.h"

namespace meshtls::testing {

// CertmgrOptions shape one certmgr process of a test.
struct CertmgrOptions {
  std::string name = "certmgr";  // names its config and log files in the TempDir
  std::string extra_yaml;        // appended to the config (for example an issuance section)
  std::string ca_extra;          // added inside the `ca:` mapping (", rotation: {auto: false}")
  std::string ca_dir;            // default: <dir>/ca
  // launcher, when set, runs certmgr under these argv words (the binary and its flags follow).
  std::vector<std::string> launcher;
  // netns, when set, runs certmgr in that network namespace (after `launcher`'s words), where
  // its readiness and ports are checked too (InNetns in netns.h).
  std::string netns;
  // listen_ip is the IPv4 address the gRPC port listens on (admin stays on 127.0.0.1); the
  // serving certificate names it. A node's bridge address makes certmgr reachable from pods.
  std::string listen_ip = "127.0.0.1";
  // image, when set (with netns), runs certmgr from this image with podman in `netns` instead of
  // the build's binary: the test's directories mounted at their own paths, as root (the owner
  // of the test's files).
  std::string image;
};

// CertmgrProcess runs meshtls-certmgr on loopback with a CA directory in `dir`. Replicas made
// with StartReplica share the CA directory and the join-token file, as certmgr's replicas in
// Kubernetes share one Secret.
class CertmgrProcess {
 public:
  static absl::StatusOr<std::unique_ptr<CertmgrProcess>> Start(const TempDir& dir,
                                                               const std::string& trust_domain,
                                                               CertmgrOptions options);
  static absl::StatusOr<std::unique_ptr<CertmgrProcess>> Start(const TempDir& dir,
                                                               const std::string& trust_domain,
                                                               const std::string& extra_yaml = "",
                                                               const std::string& ca_extra = "") {
    CertmgrOptions options;
    options.extra_yaml = extra_yaml;
    options.ca_extra = ca_extra;
    return Start(dir, trust_domain, std::move(options));
  }
  // Start returns once certmgr has bound its ports (on 127.0.0.1, port 0: it reports them with
  // --bound-ports-file) and /readyz answers 200.
  //
  // StartReplica starts another certmgr with this one's configuration and other ports.
  absl::StatusOr<std::unique_ptr<CertmgrProcess>> StartReplica(const std::string& name) const;
  // Run runs `meshtls-certmgr <args> --config <this config>`; returns the exit code.
  int Run(const std::vector<std::string>& args) const;
  // Token runs `meshtls-certmgr token create` and returns the new token.
  std::string Token(const std::string& spiffe_id) const;
  // TokenFile writes a new token for `spiffe_id` to a file and returns its path.
  std::string TokenFile(const std::string& spiffe_id, const std::string& name) const;
  // SidecarIdentityYaml is a sidecar config's `identity:` section for this certmgr, bootstrapping
  // with the token in `token_file`.
  std::string SidecarIdentityYaml(const std::string& token_file) const;
  // PodIdentityYaml is the `identity:` section of a sidecar that runs as `uid` (in a pod): it
  // writes a join token for `spiffe_id` and a copy of the CA certificate into `dir`, and gives
  // `dir` to `uid` (GiveToUser), so the sidecar can read them and write its files there.
  absl::StatusOr<std::string> PodIdentityYaml(const TempDir& dir, const std::string& spiffe_id,
                                              uint32_t uid) const;

  // Stop ends the process (SIGTERM, exit 0 expected) and holds its ports (ReserveLoopbackPort)
  // until Restart starts it again with the same configuration, CA directory and ports (the ones
  // the first launch was given, now asked for by number). After a SIGKILL through process(),
  // call HoldPorts() at once if the process's clients keep its address.
  void Stop();
  void HoldPorts();
  absl::Status Restart();

  uint16_t grpc_port() const { return grpc_port_; }
  uint16_t admin_port() const { return admin_port_; }
  std::string address() const { return options_.listen_ip + ":" + std::to_string(grpc_port_); }
  std::string ca_pem_path() const { return options_.ca_dir + "/ca.pem"; }
  const std::string& config_path() const { return config_path_; }
  Subprocess& process() { return *process_; }

 private:
  CertmgrProcess(const TempDir& dir) : dir_(dir) {}
  // WriteConfig writes the config file, listening on 127.0.0.1 port 0; PinPortsInConfig puts
  // the ports the last launch was given in their place (for Restart).
  absl::Status WriteConfig();
  absl::Status PinPortsInConfig();
  absl::Status Launch();
  // OnHost runs `fn` in options_.netns (or where the test runs, without one).
  absl::Status OnHost(const std::function<void()>& fn) const;
  const TempDir& dir_;
  std::string trust_domain_;
  CertmgrOptions options_;
  std::string config_path_;
  uint16_t grpc_port_ = 0;
  uint16_t admin_port_ = 0;
  int launches_ = 0;
  std::unique_ptr<Subprocess> process_;
  base::UniqueFd grpc_hold_;   // grpc_port_ while the process is down
  base::UniqueFd admin_hold_;  // admin_port_ while the process is down
};

// SidecarProcess runs meshtls-sidecar with the given YAML (the admin section is added, on
// 127.0.0.1 port 0, unless the YAML has one), with two workers unless the YAML sets `workers`.
// Listeners in the YAML should listen on 127.0.0.1:0; port() tells where each one was bound.
class SidecarProcess {
 public:
  // `extra_args` follow the config flag (for example --namespace NS --service-account SA);
  // `launcher`, when set, runs the sidecar under these argv words (prlimit --nofile=N --, or a
  // pod's Launcher(uid)); `netns` names the network namespace the launcher puts it in, where
  // its admin port is reached (Metric, WaitReady, ServedSerial).
  static absl::StatusOr<std::unique_ptr<SidecarProcess>> Start(
      const TempDir& dir, const std::string& name, const std::string& yaml,
      const std::vector<std::string>& extra_args = {},
      const std::vector<std::string>& launcher = {}, const std::string& netns = "");
  // Start returns once the sidecar has bound every listener (it reports their ports with
  // --bound-ports-file), not when it is ready; Unavailable with its log if it exits first.
  // WaitReady polls /readyz until 200 (false after `timeout`).
  bool WaitReady(absl::Duration timeout = absl::Seconds(20));
  double Metric(const std::string& series) const;
  // WaitForMetric polls until the series reaches at least `value`.
  bool WaitForMetric(const std::string& series, double value,
                     absl::Duration timeout = absl::Seconds(10)) const;
  // ServedSerial returns the serial of the certificate in use, from /certs ("" if none).
  std::string ServedSerial() const;
  uint16_t admin_port() const { return admin_port_; }
  // port is where the listener "inbound.<name>" or "outbound.<name>" was bound (0, and a test
  // failure, for a name the sidecar did not report).
  uint16_t port(const std::string& listener) const;
  Subprocess& process() { return *process_; }

 private:
  // AdminGet is HttpGet on the admin port, in netns_ if set.
  absl::StatusOr<HttpResult> AdminGet(absl::string_view path,
                                      absl::Duration timeout = absl::Seconds(5)) const;
  uint16_t admin_port_ = 0;
  std::string netns_;
  BoundPorts ports_;
  std::unique_ptr<Subprocess> process_;
};

// FilesConfigHead is the start of a files-mode sidecar config in trust domain mesh.test:
// `leaf` (written as <name>.crt / <name>.key, 0600) with the trust bundle at `bundle_path`.
std::string FilesConfigHead(const TempDir& dir, const std::string& name, const IssuedLeaf& leaf,
                            const std::string& bundle_path);

// Handshakes returns the series name of meshtls_tls_handshakes_total for a direction/result.
std::string Handshakes(const std::string& direction, const std::string& result);
// HandshakeCount returns the series name of the handshake histogram's count for a
// direction and `resumed` label.
std::string HandshakeCount(const std::string& direction, bool resumed);

}  // namespace meshtls::testing

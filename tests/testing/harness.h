#pragma once

// Helpers for integration tests: temporary directories, the real binaries as subprocesses,
// loopback TCP with timeouts, polling with deadlines, and Prometheus scrapes.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/fd.h"

namespace meshtls::testing {

// TempDir is a fresh directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string File(absl::string_view name) const;
  // Write creates (or replaces) `name` and returns its path.
  std::string Write(absl::string_view name, absl::string_view contents, unsigned mode = 0644) const;

 private:
  std::string path_;
};

// BinaryPath returns the path of a built binary ("meshtls-sidecar", "meshtls-certmgr").
std::string BinaryPath(absl::string_view name);

// Subprocess runs a binary with stdout and stderr sent to a log file. If it still runs at
// destruction it gets SIGTERM and must exit 0 within 15 s (else the test fails and it is
// killed); a sanitizer report in its log also fails the test.
class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(std::vector<std::string> argv,
                                                           std::string log_path);
  ~Subprocess();
  void Signal(int signal_number);
  // WaitForExit returns the exit code (128 + N after signal N), or nullopt on timeout.
  std::optional<int> WaitForExit(absl::Duration timeout);
  std::string Log() const;
  pid_t pid() const { return pid_; }

 private:
  Subprocess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string args0_;
  std::string log_path_;
  std::optional<int> exit_code_;
};

// WaitFor polls `condition` every 20 ms until it holds (true) or `timeout` passes (false).
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// BoundPorts maps a listener name ("admin", "grpc", "inbound.<name>", "outbound.<name>") to the
// loopback port a binary bound for it.
using BoundPorts = std::map<std::string, uint16_t>;
// WaitForBoundPorts polls `path`, the --bound-ports-file `process` was started with, until the
// process has written it (the caller removes any older file there before the start). Unavailable,
// with the process's log, if the process exits first or `timeout` passes; InvalidArgument if the
// file does not parse.
absl::StatusOr<BoundPorts> WaitForBoundPorts(Subprocess& process, const std::string& path,
                                             absl::Duration timeout = absl::Seconds(20));

// RssKiB returns the resident memory of process `pid` in KiB (-1 if unknown).
int64_t RssKiB(pid_t pid);

// ListeningPorts returns the TCP ports process `pid` listens on (from /proc: its socket
// descriptors matched against /proc/net/tcp and tcp6), for programs that do not print the port
// they took for port 0.
std::vector<uint16_t> ListeningPorts(pid_t pid);

// FindProgram returns the absolute path of `name` on PATH ("" if absent).
std::string FindProgram(absl::string_view name);

// ReserveLoopbackPort binds a socket to 127.0.0.1 port 0 without listening, and returns it with
// its port in `*port`. While it is open, connections to the port are refused and no other
// socket can bind the port, except one that sets SO_REUSEPORT as this one does, in a process
// of the same user: a sidecar's listeners do. So a test can write a port into a sidecar's
// config before the sidecar starts (an outbound listener that loops back to the same
// sidecar's inbound one), with no window in which another test could be handed that port; the
// reservation can be closed once the sidecar listens. Also what "nothing listens there" tests
// point at. With `ip` (any of 127.0.0.0/8) and a non-zero `*port`, it reserves that port on
// that address, or returns an invalid fd if it is taken.
base::UniqueFd ReserveLoopbackPort(uint16_t* port, const std::string& ip = "127.0.0.1");

struct HttpResult {
  int status = 0;
  std::string body;
};
absl::StatusOr<HttpResult> HttpGet(uint16_t port, absl::string_view path,
                                   absl::Duration timeout = absl::Seconds(5));

// MetricValue finds one exact series ("name{label=\"v\",...}" as Prometheus prints it).
std::optional<double> MetricValue(absl::string_view metrics_text, absl::string_view series);
// ScrapeMetric reads a series from an admin port's /metrics; -1 when absent or unreachable.
double ScrapeMetric(uint16_t admin_port, absl::string_view series);

// Blocking loopback TCP with timeouts.
absl::StatusOr<base::UniqueFd> TcpConnect(uint16_t port, absl::Duration timeout = absl::Seconds(5));
// TcpConnectFrom connects from `source_ip` (any of 127.0.0.0/8, so that a test can play many
// clients with addresses of their own) to 127.0.0.1:`port`.
absl::StatusOr<base::UniqueFd> TcpConnectFrom(const std::string& source_ip, uint16_t port,
                                              absl::Duration timeout = absl::Seconds(5));
// TcpConnectTo connects to `ip` (IPv4 or IPv6) port `port` from the calling thread's network
// namespace (InNetns in netns.h picks another).
absl::StatusOr<base::UniqueFd> TcpConnectTo(const std::string& ip, uint16_t port,
                                            absl::Duration timeout = absl::Seconds(5));
absl::Status SendAll(int fd, absl::string_view data);
// RecvExactly reads n bytes; RecvUntilEof reads until EOF (at most `max` bytes).
absl::StatusOr<std::string> RecvExactly(int fd, size_t n, absl::Duration timeout);
absl::StatusOr<std::string> RecvUntilEof(int fd, absl::Duration timeout, size_t max = 64 << 20);
// ListenLoopback makes a listening socket on 127.0.0.1 with a free port, stored in `*port`.
base::UniqueFd ListenLoopback(uint16_t* port, int backlog = 128);
// ListenOn makes a listening socket on `ip` (IPv4 or IPv6; "::" takes IPv4 too) and `port`, in
// the calling thread's network namespace.
absl::StatusOr<base::UniqueFd> ListenOn(const std::string& ip, uint16_t port, int backlog = 128);

// ClosedWithoutData is OK when the peer ends the connection (FIN or reset) within `timeout`
// without sending a byte. A connection still open at the deadline, or any byte, is an error:
// "not ok" from a read must never pass for "refused".
absl::Status ClosedWithoutData(int fd, absl::Duration timeout = absl::Seconds(10));
// RefusedWithoutData connects to `port` and expects ClosedWithoutData; a reset during the
// connect itself also counts as refused.
absl::Status RefusedWithoutData(uint16_t port, absl::Duration timeout = absl::Seconds(10));

// RandomBytes returns n pseudo-random bytes.
std::string RandomBytes(size_t n);

// EchoServer is the "local app" of integration tests: it echoes every byte back on each
// connection, and on EOF echoes what is left, then half-closes. It counts connections and
// bytes, so tests can assert that nothing reached it.
// ScriptedTcpServer accepts on 127.0.0.1 in a thread and hands each connection, one at a time,
// to `serve` (which owns it and must return within a few seconds). For upstreams that
// misbehave on purpose: silent, closing mid-handshake, answering in plaintext.
class ScriptedTcpServer {
 public:
  explicit ScriptedTcpServer(std::function<void(base::UniqueFd)> serve);
  ~ScriptedTcpServer();
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  std::function<void(base::UniqueFd)> serve_;
  uint16_t port_ = 0;  // declared first: ListenLoopback fills it while listen_fd_ is built
  base::UniqueFd listen_fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

class EchoServer {
 public:
  EchoServer();
  // EchoServer(listen_fd) serves a listening socket of the caller's (one made inside a pod's
  // network namespace, for example); port() is its port.
  explicit EchoServer(base::UniqueFd listen_fd);
  ~EchoServer();
  uint16_t port() const { return port_; }
  int connections() const { return connections_.load(); }
  uint64_t bytes_received() const { return bytes_.load(); }

 private:
  void AcceptLoop();
  void Serve(base::UniqueFd fd);
  uint16_t port_ = 0;  // declared first: ListenLoopback fills it while listen_fd_ is built
  base::UniqueFd listen_fd_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::atomic<uint64_t> bytes_{0};
  std::thread accept_thread_;
  std::vector<std::thread> connection_threads_;  // touched only by accept_thread_ and ~
};

}  // namespace meshtls::testing

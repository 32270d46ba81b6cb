#include "tests/testing/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/base/bound_ports.h"
#include "common/base/file.h"
#include "common/base/status_macros.h"

extern char** environ;

namespace meshtls::testing {
namespace {

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int PollOne(int fd, short events, absl::Time deadline) {
  while (true) {
    const int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, static_cast<int>(ms));
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    return rc;
  }
}

// SocketAddress is an IPv4 or IPv6 address with a port, ready for bind or connect.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

absl::StatusOr<SocketAddress> ParseSocketAddress(const std::string& ip, uint16_t port) {
  SocketAddress out;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    out.length = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    out.length = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("not an IP address: \"", ip, "\""));
  }
  return out;
}

// FinishConnect connects the non-blocking socket `fd` to `address` within `timeout`, then
// makes it blocking with TCP_NODELAY.
absl::Status FinishConnect(int fd, const sockaddr* address, socklen_t length,
                           absl::Duration timeout) {
  if (::connect(fd, address, length) != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(errno)));
  }
  if (PollOne(fd, POLLOUT, absl::Now() + timeout) <= 0) {
    return absl::DeadlineExceededError("connect timed out");
  }
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(err)));
  }
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return absl::OkStatus();
}

}  // namespace

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "meshtls-test.XXXXXX").string();
  char* made = ::mkdtemp(tmpl.data());
  path_ = made == nullptr ? "/tmp" : made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::File(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

std::string TempDir::Write(absl::string_view name, absl::string_view contents,
                           unsigned mode) const {
  const std::string path = File(name);
  (void)base::WriteFileAtomically(path, std::string(contents), mode);
  return path;
}

std::string BinaryPath(absl::string_view name) {
  if (const char* dir = std::getenv("MESHTLS_BINARY_DIR")) {
    return absl::StrCat(dir, "/", name);
  }
  if (name == "meshtls-sidecar") {
    return MESHTLS_SIDECAR_BINARY;
  }
  return MESHTLS_CERTMGR_BINARY;
}

absl::StatusOr<std::unique_ptr<Subprocess>> Subprocess::Start(std::vector<std::string> argv,
                                                              std::string log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (std::string& a : argv) {
    args.push_back(a.data());
  }
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("posix_spawn ", argv[0], ": ", std::strerror(rc)));
  }
  auto process = std::unique_ptr<Subprocess>(new Subprocess(pid, std::move(log_path)));
  process->args0_ = argv[0];
  return process;
}

Subprocess::~Subprocess() {
  // Stop it the way production does (SIGTERM: drain, exit 0), so every test also checks a
  // clean shutdown, and under sanitizers a leak-free exit.
  if (!exit_code_.has_value()) {
    ::kill(pid_, SIGTERM);
    if (!WaitForExit(absl::Seconds(15)).has_value()) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      ADD_FAILURE() << args0_ << " did not exit within 15 s of SIGTERM; log:\n" << Log();
      return;
    }
    if (*exit_code_ != 0) {
      ADD_FAILURE() << args0_ << " exited with " << *exit_code_ << " after SIGTERM; log:\n"
                    << Log();
    }
  }
  const std::string log = Log();
  for (const char* report : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                             "runtime error:", "WARNING: ThreadSanitizer"}) {
    if (log.find(report) != std::string::npos) {
      ADD_FAILURE() << args0_ << " reported \"" << report << "\"; log:\n" << log;
      break;
    }
  }
}

void Subprocess::Signal(int signal_number) {
  if (!exit_code_.has_value()) {
    ::kill(pid_, signal_number);
  }
}

std::optional<int> Subprocess::WaitForExit(absl::Duration timeout) {
  if (exit_code_.has_value()) {
    return exit_code_;
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (absl::Now() >= deadline) {
      return std::nullopt;
    }
    absl::SleepFor(absl::Milliseconds(10));  // polling a child's exit with a deadline
  }
}

std::string Subprocess::Log() const {
  absl::StatusOr<std::string> text = base::ReadFileToString(log_path_, 64 << 20);
  return text.ok() ? *text : std::string();
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (condition()) {
      return true;
    }
    if (absl::Now() >= deadline) {
      return false;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::StatusOr<BoundPorts> WaitForBoundPorts(Subprocess& process, const std::string& path,
                                             absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    // The binaries write the file atomically: it is absent or whole.
    if (base::FileExists(path)) {
      absl::StatusOr<std::string> text = base::ReadFileToString(path);
      if (!text.ok()) {
        return text.status();
      }
      absl::StatusOr<std::map<std::string, base::HostPort>> parsed = base::ParseBoundPorts(*text);
      if (!parsed.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", parsed.status().message(), "\n", *text));
      }
      BoundPorts ports;
      for (const auto& [name, address] : *parsed) {
        ports[name] = address.port;
      }
      return ports;
    }
    if (std::optional<int> code = process.WaitForExit(absl::ZeroDuration())) {
      return absl::UnavailableError(absl::StrCat(
          "exited with ", *code, " before writing its bound ports; log:\n", process.Log()));
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("no bound ports in ", path, " after ",
                                                 absl::FormatDuration(timeout), "; log:\n",
                                                 process.Log()));
    }
    absl::SleepFor(absl::Milliseconds(10));  // polling for a file with a deadline
  }
}

base::UniqueFd ReserveLoopbackPort(uint16_t* port, const std::string& ip) {
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (*port != 0) {
    // Holding a port a process just left: its TIME_WAIT connections would refuse the bind.
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  }
  // A port-0 bind never shares a port through SO_REUSEPORT, so the kernel hands out a port
  // nobody holds, and no later port-0 bind elsewhere is given this one.
  sockaddr_in a = Loopback(*port);
  if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1 ||
      ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    return base::UniqueFd();
  }
  socklen_t len = sizeof(a);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

absl::StatusOr<base::UniqueFd> TcpConnect(uint16_t port, absl::Duration timeout) {
  return TcpConnectFrom("127.0.0.1", port, timeout);
}

absl::StatusOr<base::UniqueFd> TcpConnectFrom(const std::string& source_ip, uint16_t port,
                                              absl::Duration timeout) {
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  sockaddr_in source = Loopback(0);
  if (::inet_pton(AF_INET, source_ip.c_str(), &source.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address: ", source_ip));
  }
  // The port is left to connect(), which needs only the 4-tuple to be unique (a plain bind
  // would take an ephemeral port for this address alone, and run out sooner).
  const int one = 1;
  if (source.sin_addr.s_addr != htonl(INADDR_LOOPBACK) &&
      (::setsockopt(fd.get(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0 ||
       ::bind(fd.get(), reinterpret_cast<sockaddr*>(&source), sizeof(source)) != 0)) {
    return absl::UnavailableError(absl::StrCat("bind ", source_ip, ": ", std::strerror(errno)));
  }
  sockaddr_in a = Loopback(port);
  MESHTLS_RETURN_IF_ERROR(
      FinishConnect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a), timeout));
  return fd;
}

absl::StatusOr<base::UniqueFd> TcpConnectTo(const std::string& ip, uint16_t port,
                                            absl::Duration timeout) {
  absl::StatusOr<SocketAddress> address = ParseSocketAddress(ip, port);
  if (!address.ok()) {
    return address.status();
  }
  base::UniqueFd fd(
      ::socket(address->storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  MESHTLS_RETURN_IF_ERROR(FinishConnect(
      fd.get(), reinterpret_cast<const sockaddr*>(&address->storage), address->length, timeout));
  return fd;
}

absl::StatusOr<base::UniqueFd> ListenOn(const std::string& ip, uint16_t port, int backlog) {
  absl::StatusOr<SocketAddress> address = ParseSocketAddress(ip, port);
  if (!address.ok()) {
    return address.status();
  }
  base::UniqueFd fd(::socket(address->storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  const int zero = 0;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // "::" takes IPv4 too, whatever net.ipv6.bindv6only says.
  if (address->storage.ss_family == AF_INET6) {
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address->storage), address->length) !=
          0 ||
      ::listen(fd.get(), backlog) != 0) {
    return absl::UnavailableError(
        absl::StrCat("listen on ", ip, " port ", port, ": ", std::strerror(errno)));
  }
  return fd;
}

absl::Status SendAll(int fd, absl::string_view data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
    sent += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RecvExactly(int fd, size_t n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string out;
  char buf[65536];
  while (out.size() < n) {
    if (PollOne(fd, POLLIN, deadline) <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("got ", out.size(), " of ", n, " bytes"));
    }
    ssize_t r = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (r == 0) {
      return absl::OutOfRangeError(absl::StrCat("EOF after ", out.size(), " of ", n, " bytes"));
    }
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

absl::StatusOr<std::string> RecvUntilEof(int fd, absl::Duration timeout, size_t max) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string out;
  char buf[65536];
  while (out.size() <= max) {
    if (PollOne(fd, POLLIN, deadline) <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("no EOF after ", out.size(), " bytes"));
    }
    ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
    if (r == 0) {
      return out;
    }
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    out.append(buf, static_cast<size_t>(r));
  }
  return absl::ResourceExhaustedError("more than max bytes");
}

base::UniqueFd ListenLoopback(uint16_t* port, int backlog) {
  base::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = Loopback(0);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::listen(fd.get(), backlog);
  socklen_t len = sizeof(a);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  *port = ntohs(a.sin_port);
  return fd;
}

absl::Status ClosedWithoutData(int fd, absl::Duration timeout) {
  absl::StatusOr<std::string> rest = RecvUntilEof(fd, timeout);
  if (rest.ok()) {
    return rest->empty() ? absl::OkStatus()
                         : absl::FailedPreconditionError(
                               absl::StrCat("received ", rest->size(), " bytes before the close"));
  }
  if (absl::IsUnavailable(rest.status())) {
    return absl::OkStatus();  // reset: closed, and nothing was delivered
  }
  return absl::FailedPreconditionError(
      absl::StrCat("the connection was not closed: ", rest.status().message()));
}

absl::Status RefusedWithoutData(uint16_t port, absl::Duration timeout) {
  absl::StatusOr<base::UniqueFd> conn = TcpConnect(port, timeout);
  if (!conn.ok()) {
    return absl::IsUnavailable(conn.status()) ? absl::OkStatus() : conn.status();
  }
  return ClosedWithoutData(conn->get(), timeout);
}

std::string RandomBytes(size_t n) {
  std::mt19937_64 rng(n * 7919 + 17);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<char>(rng() & 0xff);
  }
  return out;
}

int64_t RssKiB(pid_t pid) {
  absl::StatusOr<std::string> status =
      base::ReadFileToString(absl::StrCat("/proc/", pid, "/status"));
  if (!status.ok()) {
    return -1;
  }
  size_t at = status->find("VmRSS:");
  return at == std::string::npos ? -1 : std::atoll(status->c_str() + at + 6);
}

std::vector<uint16_t> ListeningPorts(pid_t pid) {
  std::set<std::string> inodes;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), ec)) {
    std::error_code link_ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), link_ec).string();
    absl::string_view inode = target;
    if (!link_ec && absl::ConsumePrefix(&inode, "socket:[") && absl::ConsumeSuffix(&inode, "]")) {
      inodes.insert(std::string(inode));
    }
  }
  std::vector<uint16_t> ports;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    absl::StatusOr<std::string> text = base::ReadFileToString(table, 16 << 20);
    if (!text.ok()) {
      continue;
    }
    // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
    // inode ...": the port is hex after the local address's colon; st 0A is LISTEN.
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
      if (fields.size() < 10 || fields[3] != "0A" || inodes.count(std::string(fields[9])) == 0) {
        continue;
      }
      const size_t colon = fields[1].rfind(':');
      uint32_t port = 0;
      if (colon != absl::string_view::npos &&
          absl::SimpleHexAtoi(fields[1].substr(colon + 1), &port)) {
        ports.push_back(static_cast<uint16_t>(port));
      }
    }
  }
  return ports;
}

std::string FindProgram(absl::string_view name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

absl::StatusOr<HttpResult> HttpGet(uint16_t port, absl::string_view path, absl::Duration timeout) {
  absl::StatusOr<base::UniqueFd> fd = TcpConnect(port, timeout);
  if (!fd.ok()) {
    return fd.status();
  }
  // HTTP/1.0, so that no server answers with a chunked body.
  absl::Status s = SendAll(fd->get(), absl::StrCat("GET ", path,
                                                   " HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                                                   "Connection: close\r\n\r\n"));
  if (!s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> response = RecvUntilEof(fd->get(), timeout);
  if (!response.ok()) {
    return response.status();
  }
  HttpResult r;
  size_t header_end = response->find("\r\n\r\n");
  if (response->size() < 12 || header_end == std::string::npos ||
      !absl::SimpleAtoi(response->substr(9, 3), &r.status)) {
    return absl::InternalError("malformed HTTP response");
  }
  r.body = response->substr(header_end + 4);
  return r;
}

std::optional<double> MetricValue(absl::string_view metrics_text, absl::string_view series) {
  for (absl::string_view line : absl::StrSplit(metrics_text, '\n')) {
    if (absl::ConsumePrefix(&line, series) && absl::ConsumePrefix(&line, " ")) {
      double v = 0;
      if (absl::SimpleAtod(line, &v)) {
        return v;
      }
    }
  }
  return std::nullopt;
}

double ScrapeMetric(uint16_t admin_port, absl::string_view series) {
  absl::StatusOr<HttpResult> r = HttpGet(admin_port, "/metrics");
  if (!r.ok() || r->status != 200) {
    return -1;
  }
  return MetricValue(r->body, series).value_or(-1);
}

ScriptedTcpServer::ScriptedTcpServer(std::function<void(base::UniqueFd)> serve)
    : serve_(std::move(serve)), listen_fd_(ListenLoopback(&port_)) {
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      if (PollOne(listen_fd_.get(), POLLIN, absl::Now() + absl::Milliseconds(50)) <= 0) {
        continue;
      }
      base::UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (fd.valid()) {
        accepted_.fetch_add(1);
        serve_(std::move(fd));
      }
    }
  });
}

ScriptedTcpServer::~ScriptedTcpServer() {
  stop_.store(true);
  thread_.join();
}

EchoServer::EchoServer() : listen_fd_(ListenLoopback(&port_)) {
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

EchoServer::EchoServer(base::UniqueFd listen_fd) : listen_fd_(std::move(listen_fd)) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  ::getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&a)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

EchoServer::~EchoServer() {
  stop_.store(true);
  accept_thread_.join();
  for (std::thread& t : connection_threads_) {
    t.join();
  }
}

void EchoServer::AcceptLoop() {
  while (!stop_.load()) {
    if (PollOne(listen_fd_.get(), POLLIN, absl::Now() + absl::Milliseconds(50)) <= 0) {
      continue;
    }
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    connections_.fetch_add(1);
    connection_threads_.emplace_back([this, fd] { Serve(base::UniqueFd(fd)); });
  }
}

void EchoServer::Serve(base::UniqueFd fd) {
  char buf[65536];
  while (!stop_.load()) {
    if (PollOne(fd.get(), POLLIN, absl::Now() + absl::Milliseconds(50)) <= 0) {
      continue;
    }
    ssize_t n = ::recv(fd.get(), buf, sizeof(buf), 0);
    if (n <= 0) {
      ::shutdown(fd.get(), SHUT_WR);  // echo the half-close
      // Wait for the other side to close too (bounded by stop_).
      while (!stop_.load() &&
             PollOne(fd.get(), POLLIN, absl::Now() + absl::Milliseconds(50)) <= 0) {
      }
      return;
    }
    bytes_.fetch_add(static_cast<uint64_t>(n));
    if (!SendAll(fd.get(), absl::string_view(buf, static_cast<size_t>(n))).ok()) {
      return;
    }
  }
}

}  // namespace meshtls::testing

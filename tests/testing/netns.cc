#include "tests/testing/netns.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/base/file.h"
#include "common/base/status_macros.h"

namespace meshtls::testing {
namespace {

constexpr char kNetnsDir[] = "/run/netns";
// The UDP port Stop's flush marker goes to: nothing in a pod listens there, and the capture
// rules of transparent mode take TCP only.
constexpr uint16_t kFlushPort = 9;

std::atomic<int> network_counter{0};
std::atomic<int> capture_counter{0};

// OurPrefix starts the name of every namespace this process makes: "mtls<pid>-".
std::string OurPrefix() { return absl::StrCat("mtls", ::getpid(), "-"); }

// Program finds a tool on PATH, or where Debian puts it when PATH lacks the sbin directories
// (posix_spawn needs a path).
std::string Program(absl::string_view name) {
  if (absl::StrContains(name, '/')) {
    return std::string(name);
  }
  if (std::string found = FindProgram(name); !found.empty()) {
    return found;
  }
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"}) {
    std::string candidate = absl::StrCat(dir, name);
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return std::string(name);
}

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

// TcpOf reads one Ethernet frame: the TCP segment it carries, if any. Frames cut short by the
// snap length or carrying anything else are not segments (not errors): the payload size comes
// from the IP header, not from how much was captured.
std::optional<TcpSegment> TcpOf(const uint8_t* p, size_t len) {
  if (len < 14) {
    return std::nullopt;
  }
  size_t at = 12;
  uint16_t ethertype = Be16(p + at);
  at += 2;
  for (int tags = 0; (ethertype == 0x8100 || ethertype == 0x88a8) && tags < 2; ++tags) {
    if (len < at + 4) {
      return std::nullopt;
    }
    ethertype = Be16(p + at + 2);
    at += 4;
  }
  size_t tcp = 0;
  size_t tcp_length = 0;  // header and payload, from the IP header
  if (ethertype == 0x0800) {
    if (len < at + 20) {
      return std::nullopt;
    }
    const size_t header = (p[at] & 0x0f) * 4u;
    const size_t total = Be16(p + at + 2);
    const bool later_fragment = (Be16(p + at + 6) & 0x1fff) != 0;
    if (p[at + 9] != IPPROTO_TCP || header < 20 || total < header || later_fragment) {
      return std::nullopt;
    }
    tcp = at + header;
    tcp_length = total - header;
  } else if (ethertype == 0x86dd) {
    if (len < at + 40 || p[at + 6] != IPPROTO_TCP) {
      return std::nullopt;  // not TCP, or TCP behind extension headers (never sent here)
    }
    tcp = at + 40;
    tcp_length = Be16(p + at + 4);
  } else {
    return std::nullopt;
  }
  if (len < tcp + 20) {
    return std::nullopt;
  }
  const size_t tcp_header = (p[tcp + 12] >> 4) * 4u;
  if (tcp_header < 20 || tcp_header > tcp_length) {
    return std::nullopt;
  }
  return TcpSegment{.source_port = Be16(p + tcp),
                    .destination_port = Be16(p + tcp + 2),
                    .payload_bytes = static_cast<uint32_t>(tcp_length - tcp_header)};
}

}  // namespace

absl::Status InNetns(const std::string& netns, const std::function<void()>& fn) {
  base::UniqueFd home(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!home.valid()) {
    return absl::InternalError(
        absl::StrCat("open /proc/thread-self/ns/net: ", std::strerror(errno)));
  }
  const std::string path = absl::StrCat(kNetnsDir, "/", netns);
  base::UniqueFd target(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!target.valid()) {
    return absl::NotFoundError(
        absl::StrCat("network namespace ", netns, ": open ", path, ": ", std::strerror(errno)));
  }
  if (::setns(target.get(), CLONE_NEWNET) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("setns into network namespace ", netns, ": ", std::strerror(errno)));
  }
  fn();
  if (::setns(home.get(), CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "cannot return from network namespace %s: %s\n", netns.c_str(),
                 std::strerror(errno));
    std::abort();
  }
  return absl::OkStatus();
}

std::vector<std::string> NetnsLauncher(const std::string& netns, std::optional<uint32_t> uid) {
  std::vector<std::string> argv = {Program("ip"), "netns", "exec", netns};
  if (uid.has_value()) {
    argv.insert(argv.end(), {Program("setpriv"), absl::StrCat("--reuid=", *uid),
                             absl::StrCat("--regid=", *uid), "--clear-groups"});
  }
  return argv;
}

std::vector<std::string> PodmanRun(const std::string& netns) {
  return {Program("podman"),
          "--runtime",
          "runc",
          "--cgroup-manager",
          "cgroupfs",
          "--storage-driver",
          "vfs",
          "run",
          "--rm",
          "--network",
          absl::StrCat("ns:/run/netns/", netns),
          "--ulimit",
          "nofile=1024:20000",
          "--ulimit",
          "nproc=4096:4096"};
}

absl::StatusOr<std::string> RunCommand(std::vector<std::string> argv, absl::Duration timeout) {
  if (argv.empty()) {
    return absl::InvalidArgumentError("RunCommand: empty argv");
  }
  argv[0] = Program(argv[0]);
  const std::string command = absl::StrJoin(argv, " ");
  std::string log_path =
      (std::filesystem::temp_directory_path() / "meshtls-command.XXXXXX").string();
  const int log_fd = ::mkstemp(log_path.data());
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("mkstemp: ", std::strerror(errno)));
  }
  ::close(log_fd);
  absl::StatusOr<std::unique_ptr<Subprocess>> process = Subprocess::Start(argv, log_path);
  if (!process.ok()) {
    ::unlink(log_path.c_str());
    return absl::Status(process.status().code(),
                        absl::StrCat(command, ": ", process.status().message()));
  }
  std::optional<int> code = (*process)->WaitForExit(timeout);
  if (!code.has_value()) {
    (*process)->Signal(SIGKILL);
    (*process)->WaitForExit(absl::Seconds(10));
  }
  std::string output = (*process)->Log();
  ::unlink(log_path.c_str());
  if (!code.has_value()) {
    return absl::DeadlineExceededError(absl::StrCat(command, ": still running after ",
                                                    absl::FormatDuration(timeout),
                                                    " (killed); output:\n", output));
  }
  if (*code != 0) {
    return absl::InternalError(absl::StrCat(command, ": exit code ", *code, "; output:\n", output));
  }
  return output;
}

absl::Status GiveToUser(const std::string& path, uint32_t uid) {
  auto give = [uid](const std::filesystem::path& p) -> absl::Status {
    if (::lchown(p.c_str(), uid, uid) != 0) {
      return absl::InternalError(
          absl::StrCat("chown ", uid, " ", p.string(), ": ", std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  MESHTLS_RETURN_IF_ERROR(give(path));
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(path, ec)) {
      MESHTLS_RETURN_IF_ERROR(give(entry.path()));
    }
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("list ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

std::vector<std::string> OurNamespaces() {
  std::vector<std::string> names;
  std::error_code ec;
  const std::string prefix = OurPrefix();
  for (const auto& entry : std::filesystem::directory_iterator(kNetnsDir, ec)) {
    std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, prefix)) {
      names.push_back(std::move(name));
    }
  }
  return names;
}

namespace {

// RemoveNamespacesOfDeadProcesses deletes namespaces named "mtls<pid>-..." whose process is
// gone: a test process that was killed could not clean up after itself.
void RemoveNamespacesOfDeadProcesses() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(kNetnsDir, ec)) {
    const std::string name = entry.path().filename().string();
    absl::string_view rest = name;
    if (!absl::ConsumePrefix(&rest, "mtls")) {
      continue;
    }
    const size_t dash = rest.find('-');
    int pid = 0;
    if (dash == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, dash), &pid) ||
        pid <= 0 || pid == ::getpid()) {
      continue;
    }
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      (void)RunCommand({"ip", "netns", "del", name}, absl::Seconds(10));
    }
  }
}

}  // namespace

absl::StatusOr<base::UniqueFd> Pod::Connect(const std::string& ip, uint16_t port,
                                            absl::Duration timeout) const {
  absl::StatusOr<base::UniqueFd> fd = absl::UnknownError("not connected");
  MESHTLS_RETURN_IF_ERROR(InNetns(name_, [&] { fd = TcpConnectTo(ip, port, timeout); }));
  return fd;
}

absl::StatusOr<base::UniqueFd> Pod::Listen(const std::string& ip, uint16_t port) const {
  absl::StatusOr<base::UniqueFd> fd = absl::UnknownError("not listening");
  MESHTLS_RETURN_IF_ERROR(InNetns(name_, [&] { fd = ListenOn(ip, port); }));
  return fd;
}

absl::Status EchoFrom(const Pod& pod, const std::string& ip, uint16_t port,
                      absl::string_view message) {
  const std::string where = absl::StrCat("from pod ", pod.name(), " to ", ip, " port ", port);
  absl::StatusOr<base::UniqueFd> conn = pod.Connect(ip, port);
  if (!conn.ok()) {
    return absl::Status(conn.status().code(), absl::StrCat(where, ": ", conn.status().message()));
  }
  if (absl::Status sent = SendAll(conn->get(), message); !sent.ok()) {
    return absl::Status(sent.code(), absl::StrCat(where, ": ", sent.message()));
  }
  absl::StatusOr<std::string> echo = RecvExactly(conn->get(), message.size(), absl::Seconds(10));
  if (!echo.ok()) {
    return absl::Status(echo.status().code(),
                        absl::StrCat(where, ": no echo: ", echo.status().message()));
  }
  if (*echo != message) {
    return absl::DataLossError(absl::StrCat(where, ": the echo differs from what was sent"));
  }
  return absl::OkStatus();
}

absl::Status RefusedFrom(const Pod& pod, const std::string& ip, uint16_t port,
                         absl::Duration timeout) {
  absl::StatusOr<base::UniqueFd> conn = pod.Connect(ip, port, timeout);
  if (!conn.ok()) {
    return absl::IsUnavailable(conn.status()) ? absl::OkStatus() : conn.status();
  }
  if (absl::Status closed = ClosedWithoutData(conn->get(), timeout); !closed.ok()) {
    return absl::Status(closed.code(), absl::StrCat("from pod ", pod.name(), " to ", ip, " port ",
                                                    port, ": ", closed.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Network>> Network::Create() {
  RemoveNamespacesOfDeadProcesses();
  auto network = std::unique_ptr<Network>(new Network());
  const int pid = static_cast<int>(::getpid());
  network->id_ = network_counter.fetch_add(1);
  network->subnet_ = (pid + network->id_) % 256;
  network->node_ = absl::StrCat(OurPrefix(), network->id_, "-node");
  // Interface names hold at most 15 characters (IFNAMSIZ - 1): the pid in hex (at most 6).
  network->bridge_ = absl::StrFormat("b%x.%x", pid, network->id_ % 256);
  if (absl::StatusOr<std::string> added = RunCommand({"ip", "netns", "add", network->node_});
      !added.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "transparent-mode tests need root (ip netns add failed: ", added.status().message(), ")"));
  }
  network->node_made_ = true;
  const std::string& n = network->node_;
  const std::string& br = network->bridge_;
  const std::vector<std::vector<std::string>> steps = {
      {"ip", "-n", n, "link", "set", "lo", "up"},
      // No STP, so ports forward at once.
      {"ip", "-n", n, "link", "add", br, "type", "bridge", "forward_delay", "0"},
      // A MAC address of its own: a bridge otherwise takes the lowest of its ports' and changes
      // it when a pod joins, and the pods that joined before keep the old one in their ARP
      // caches; their new connections to the node (to certmgr) then go unanswered for seconds
      // to a minute, until their neighbour entry is probed again.
      {"ip", "-n", n, "link", "set", br, "address",
       absl::StrFormat("02:6d:74:6c:%02x:01", network->subnet_)},
      {"ip", "-n", n, "addr", "add", network->Ipv4(Subnet::kMesh, 1) + "/24", "dev", br},
      {"ip", "-n", n, "addr", "add", network->Ipv4(Subnet::kOutside, 1) + "/24", "dev", br},
      {"ip", "-n", n, "addr", "add", network->Ipv6(Subnet::kMesh, 1) + "/64", "dev", br, "nodad"},
      {"ip", "-n", n, "addr", "add", network->Ipv6(Subnet::kOutside, 1) + "/64", "dev", br,
       "nodad"},
      {"ip", "-n", n, "link", "set", br, "up"},
  };
  for (const std::vector<std::string>& step : steps) {
    if (absl::StatusOr<std::string> done = RunCommand(step); !done.ok()) {
      return absl::Status(done.status().code(),
                          absl::StrCat("node namespace ", n, ": ", done.status().message()));
    }
  }
  return network;
}

Network::~Network() {
  std::vector<std::string> names;
  for (const std::unique_ptr<Pod>& pod : pods_) {
    names.push_back(pod->name());
  }
  if (node_made_) {
    names.push_back(node_);  // last: deleting it takes the bridge and the pods' veths along
  }
  for (const std::string& name : names) {
    if (absl::StatusOr<std::string> deleted = RunCommand({"ip", "netns", "del", name});
        !deleted.ok()) {
      ADD_FAILURE() << "cannot remove network namespace " << name << ": "
                    << deleted.status().message();
    }
  }
  for (const std::string& left : OurNamespaces()) {
    for (const std::string& name : names) {
      if (left == name) {
        ADD_FAILURE() << "network namespace " << name << " still exists after ip netns del";
      }
    }
  }
}

std::string Network::Ipv4(Subnet subnet, int host) const {
  return absl::StrCat("10.", subnet == Subnet::kMesh ? 123 : 124, ".", subnet_, ".", host);
}

std::string Network::Ipv6(Subnet subnet, int host) const {
  return absl::StrFormat("fd00:%d:%x::%x", subnet == Subnet::kMesh ? 123 : 124, subnet_, host);
}

std::string Network::Ipv4Cidr(Subnet subnet) const { return Ipv4(subnet, 0) + "/24"; }

std::string Network::Ipv6Cidr(Subnet subnet) const {
  return absl::StrFormat("fd00:%d:%x::/64", subnet == Subnet::kMesh ? 123 : 124, subnet_);
}

absl::StatusOr<Pod*> Network::AddPod(const std::string& name, Subnet subnet) {
  if (name.empty() || name.size() > 12 || name == "node" ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pod name \"", name, "\": use 1 to 12 lowercase letters and digits, not \"node\""));
  }
  for (const std::unique_ptr<Pod>& pod : pods_) {
    if (pod->name() == absl::StrCat(OurPrefix(), id_, "-", name)) {
      return absl::AlreadyExistsError(absl::StrCat("pod \"", name, "\" exists already"));
    }
  }
  // Hosts .10 up: .1 is the node, .250 UnassignedIpv4.
  const int host = 10 + static_cast<int>(pods_.size());
  if (host >= 250) {
    return absl::ResourceExhaustedError("more than 240 pods in one Network");
  }
  auto pod = std::unique_ptr<Pod>(new Pod(*this));
  pod->name_ = absl::StrCat(OurPrefix(), id_, "-", name);
  pod->ipv4_ = Ipv4(subnet, host);
  pod->ipv6_ = Ipv6(subnet, host);
  pod->host_veth_ =
      absl::StrFormat("v%x.%x.%x", static_cast<int>(::getpid()), id_ % 256, pods_.size());
  const std::string& p = pod->name_;
  MESHTLS_RETURN_IF_ERROR(RunCommand({"ip", "netns", "add", p}).status());
  // Owned from here: the destructor removes it even if a later step fails.
  Pod* raw = pod.get();
  pods_.push_back(std::move(pod));
  const std::vector<std::vector<std::string>> steps = {
      {"ip", "-n", p, "link", "set", "lo", "up"},
      // Made in the node namespace, the pod's end moved at once: no interface ever appears in
      // the test's own namespace.
      {"ip", "-n", node_, "link", "add", raw->host_veth_, "type", "veth", "peer", "name", "eth0",
       "netns", p},
      {"ip", "-n", node_, "link", "set", raw->host_veth_, "master", bridge_, "up"},
      {"ip", "-n", p, "addr", "add", raw->ipv4_ + "/24", "dev", "eth0"},
      {"ip", "-n", p, "addr", "add", raw->ipv6_ + "/64", "dev", "eth0", "nodad"},
      {"ip", "-n", p, "link", "set", "eth0", "up"},
      // Both subnets share the bridge: the other one is on-link too.
      {"ip", "-n", p, "route", "add",
       Ipv4Cidr(subnet == Subnet::kMesh ? Subnet::kOutside : Subnet::kMesh), "dev", "eth0"},
      {"ip", "-n", p, "-6", "route", "add",
       Ipv6Cidr(subnet == Subnet::kMesh ? Subnet::kOutside : Subnet::kMesh), "dev", "eth0"},
  };
  for (const std::vector<std::string>& step : steps) {
    if (absl::StatusOr<std::string> done = RunCommand(step); !done.ok()) {
      return absl::Status(done.status().code(),
                          absl::StrCat("pod ", name, ": ", done.status().message()));
    }
  }
  // The veth's carrier comes up asynchronously; until then the pod's packets go nowhere.
  absl::Status last = absl::OkStatus();
  const bool up = WaitFor(
      [&] {
        absl::StatusOr<std::string> link =
            RunCommand({"ip", "-n", p, "-br", "link", "show", "eth0"}, absl::Seconds(5));
        last = link.status();
        return link.ok() && absl::StrContains(*link, " UP ");
      },
      absl::Seconds(10));
  if (!up) {
    return absl::UnavailableError(
        absl::StrCat("pod ", name, ": eth0 not up after 10s (", last.message(), ")"));
  }
  return raw;
}

absl::StatusOr<std::unique_ptr<PacketCapture>> PacketCapture::Start(const Pod& pod) {
  auto capture = std::unique_ptr<PacketCapture>(new PacketCapture(pod));
  const int k = capture_counter.fetch_add(1);
  capture->path_ = pod.network().dir().File(absl::StrCat(pod.name(), ".", k, ".pcap"));
  capture->flush_marker_ = absl::StrCat("meshtls-capture-flush-", ::getpid(), "-", k);
  std::vector<std::string> argv = NetnsLauncher(pod.network().node());
  // -U with --immediate-mode: each packet is written as it arrives. -Z root: tcpdump would
  // otherwise drop to its own user, who cannot write in the test's directory.
  argv.insert(argv.end(), {Program("tcpdump"), "-i", pod.host_veth(), "-n", "-U",
                           "--immediate-mode", "-Z", "root", "-w", capture->path_,
                           absl::StrCat("tcp or (udp and dst port ", kFlushPort, ")")});
  const std::string log_path = capture->path_ + ".log";
  MESHTLS_ASSIGN_OR_RETURN(capture->tcpdump_, Subprocess::Start(std::move(argv), log_path));
  Subprocess& tcpdump = *capture->tcpdump_;
  std::optional<int> exited;
  const bool listening = WaitFor(
      [&] {
        exited = tcpdump.WaitForExit(absl::ZeroDuration());
        return exited.has_value() || absl::StrContains(tcpdump.Log(), "listening on");
      },
      absl::Seconds(20));
  if (!listening || exited.has_value()) {
    capture->stopped_ = true;  // nothing to flush: ~Subprocess stops tcpdump
    return absl::UnavailableError(
        absl::StrCat("tcpdump on ", pod.host_veth(), " (pod ", pod.name(), ") ",
                     exited.has_value() ? absl::StrCat("exited with ", *exited)
                                        : std::string("did not start capturing within 20s"),
                     "; its log:\n", tcpdump.Log()));
  }
  return capture;
}

PacketCapture::~PacketCapture() {
  if (!stopped_) {
    (void)Stop();
  }
}

absl::Status PacketCapture::Stop() {
  if (stopped_) {
    return absl::FailedPreconditionError("the capture was stopped already");
  }
  stopped_ = true;
  // The marker crosses the same veth after everything sent so far; once tcpdump has written
  // it, it has written all of that too. Sent again at each poll: the first may wait for the
  // neighbour lookup.
  absl::Status sent = absl::OkStatus();
  auto send_marker = [&] {
    sent = InNetns(pod_.network().node(), [&] {
      base::UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      sockaddr_in to{};
      to.sin_family = AF_INET;
      to.sin_port = htons(kFlushPort);
      ::inet_pton(AF_INET, pod_.ipv4().c_str(), &to.sin_addr);
      ::sendto(fd.get(), flush_marker_.data(), flush_marker_.size(), 0,
               reinterpret_cast<sockaddr*>(&to), sizeof(to));
    });
  };
  const bool flushed = WaitFor(
      [&] {
        send_marker();
        absl::StatusOr<std::string> pcap = base::ReadFileToString(path_, 256 << 20);
        return sent.ok() && pcap.ok() && absl::StrContains(*pcap, flush_marker_);
      },
      absl::Seconds(15));
  tcpdump_->Signal(SIGTERM);
  std::optional<int> code = tcpdump_->WaitForExit(absl::Seconds(10));
  if (!code.has_value()) {
    tcpdump_->Signal(SIGKILL);
    tcpdump_->WaitForExit(absl::Seconds(10));
  }
  if (!flushed) {
    return absl::UnavailableError(absl::StrCat("tcpdump on ", pod_.host_veth(),
                                               " never wrote the flush marker within 15s (",
                                               sent.message(), "); its log:\n", tcpdump_->Log()));
  }
  if (code != 0) {
    return absl::InternalError(absl::StrCat("tcpdump on ", pod_.host_veth(), " exited with ",
                                            code.value_or(-1), "; its log:\n", tcpdump_->Log()));
  }
  MESHTLS_ASSIGN_OR_RETURN(pcap_, base::ReadFileToString(path_, 256 << 20));
  absl::StatusOr<std::vector<TcpSegment>> segments = ParsePcap(pcap_);
  if (!segments.ok()) {
    return absl::Status(segments.status().code(),
                        absl::StrCat(path_, ": ", segments.status().message()));
  }
  segments_ = *std::move(segments);
  return absl::OkStatus();
}

bool PacketCapture::SawPayload(absl::string_view bytes) const {
  EXPECT_TRUE(stopped_) << "SawPayload before Stop";
  return !bytes.empty() && absl::StrContains(pcap_, bytes);
}

uint64_t PacketCapture::TcpPayloadBytes(std::optional<uint16_t> port) const {
  EXPECT_TRUE(stopped_) << "TcpPayloadBytes before Stop";
  uint64_t total = 0;
  for (const TcpSegment& s : segments_) {
    if (!port.has_value() || s.source_port == *port || s.destination_port == *port) {
      total += s.payload_bytes;
    }
  }
  return total;
}

absl::StatusOr<std::vector<TcpSegment>> ParsePcap(absl::string_view pcap) {
  const auto* p = reinterpret_cast<const uint8_t*>(pcap.data());
  if (pcap.size() < 24) {
    return absl::InvalidArgumentError(
        absl::StrCat("pcap: ", pcap.size(), " bytes, shorter than the 24-byte file header"));
  }
  bool big_endian = false;
  const uint32_t magic_le = p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24);
  if (magic_le == 0xa1b2c3d4 || magic_le == 0xa1b23c4d) {
    big_endian = false;
  } else if (magic_le == 0xd4c3b2a1 || magic_le == 0x4d3cb2a1) {
    big_endian = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("pcap: not a pcap file (magic 0x%08x at offset 0)", magic_le));
  }
  auto u32 = [&](size_t at) -> uint32_t {
    const uint32_t b0 = p[at], b1 = p[at + 1], b2 = p[at + 2], b3 = p[at + 3];
    return big_endian ? (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
                      : (b3 << 24) | (b2 << 16) | (b1 << 8) | b0;
  };
  // The link type's upper bits may carry FCS flags.
  if (const uint32_t link_type = u32(20) & 0xffff; link_type != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pcap: link type ", link_type, " at offset 20, not Ethernet (1)"));
  }
  std::vector<TcpSegment> segments;
  size_t at = 24;
  while (at < pcap.size()) {
    if (pcap.size() - at < 16) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pcap: record header at offset ", at, " cut short (", pcap.size() - at, " of 16 bytes)"));
    }
    const uint32_t captured = u32(at + 8);
    if (captured > pcap.size() - at - 16) {
      return absl::InvalidArgumentError(absl::StrCat("pcap: record at offset ", at, " claims ",
                                                     captured, " bytes, ", pcap.size() - at - 16,
                                                     " left"));
    }
    if (std::optional<TcpSegment> s = TcpOf(p + at + 16, captured)) {
      segments.push_back(*s);
    }
    at += 16 + captured;
  }
  return segments;
}

}  // namespace meshtls::testing

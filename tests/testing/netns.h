#pragma once

// A test's own little cluster in network namespaces, for the transparent-mode tests: a "node"
// namespace holding a bridge, "pods" joined to it by veth pairs, programs run inside a pod
// under a chosen uid, and packet captures on a pod's wire. Everything needs root (CAP_NET_ADMIN
// and CAP_SYS_ADMIN for `ip netns`); without it the factories return a clear error, and the
// test fails rather than skips.
//
// Addresses: pods live on the "mesh" subnet 10.123.<n>.0/24 and fd00:123:<n>::/64, or on the
// "outside" subnet 10.124.<n>.0/24 and fd00:124:<n>::/64 (a service outside the mesh), both on
// the one bridge; n comes from the pid and a per-process counter. The node namespace is joined
// to nothing else, so the addresses of two test processes never meet.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/fd.h"
#include "tests/testing/harness.h"

namespace meshtls::testing {

// InNetns runs `fn` on the calling thread while that thread is in the network namespace `netns`
// (a name under /run/netns), then moves the thread back. Only the calling thread moves. Sockets
// made by `fn` belong to `netns` for their whole life, so a test can listen or connect "inside a
// pod" and use the socket from any thread. Fails without calling `fn` if the namespace cannot be
// entered; aborts the process if the thread cannot return (everything after would run in the
// wrong namespace).
absl::Status InNetns(const std::string& netns, const std::function<void()>& fn);

// NetnsLauncher is the argv prefix that runs a program in `netns` (`ip netns exec <netns>`),
// and with `uid` as that user and group with no supplementary groups (`setpriv --reuid=U
// --regid=U --clear-groups`). `ip netns exec` and setpriv exec in place, so the Subprocess's pid
// is the program's own. For Subprocess::Start and the launchers in mesh_processes.h.
std::vector<std::string> NetnsLauncher(const std::string& netns,
                                       std::optional<uint32_t> uid = std::nullopt);

// PodmanRun is the argv prefix of `podman run --rm` as this machine runs it without a daemon
// (runc, the cgroupfs cgroup manager, the vfs storage driver, and the limits runc may set here:
// scripts/image.sh), in the network namespace `netns` (a name under /run/netns). The container's
// flags, image and arguments follow.
std::vector<std::string> PodmanRun(const std::string& netns);

// RunCommand runs `argv` to completion within `timeout` and returns its output (stdout and
// stderr together). An error naming the command, with its exit code and output, if it fails or
// outlives `timeout` (then it is killed).
absl::StatusOr<std::string> RunCommand(std::vector<std::string> argv,
                                       absl::Duration timeout = absl::Seconds(30));

// GiveToUser makes `path`, and for a directory everything in it, owned by `uid` (user and
// group), so that a program run as `uid` (a sidecar as its proxy uid) can read its token and
// config and write its files there. Root keeps access.
absl::Status GiveToUser(const std::string& path, uint32_t uid);

// OurNamespaces lists the network namespaces (under /run/netns) this process has made and not
// yet removed.
std::vector<std::string> OurNamespaces();

class Network;

// Pod is one network namespace joined to its Network's bridge by a veth pair: lo up, eth0 with
// one IPv4 and one IPv6 address (no duplicate address detection, so both work at once), and
// on-link routes to both subnets. Each pod has its own ports, so fixed ports (15000, 15001,
// 15006, 8080) are fine. Owned by its Network; thread-compatible.
class Pod {
 public:
  const std::string& name() const { return name_; }  // the network namespace's name
  const std::string& ipv4() const { return ipv4_; }
  const std::string& ipv6() const { return ipv6_; }
  // host_veth is the veth end on the bridge, in the node namespace: what a capture listens on.
  const std::string& host_veth() const { return host_veth_; }
  const Network& network() const { return network_; }

  // Launcher is NetnsLauncher for this pod.
  std::vector<std::string> Launcher(std::optional<uint32_t> uid = std::nullopt) const {
    return NetnsLauncher(name_, uid);
  }
  // Connect opens a TCP connection from inside the pod (as the test's own user, root: the
  // outbound capture rules treat it as the app) to `ip` port `port`.
  absl::StatusOr<base::UniqueFd> Connect(const std::string& ip, uint16_t port,
                                         absl::Duration timeout = absl::Seconds(5)) const;
  // Listen makes a listening socket inside the pod ("::" takes IPv4 and IPv6).
  absl::StatusOr<base::UniqueFd> Listen(const std::string& ip, uint16_t port) const;

 private:
  friend class Network;
  explicit Pod(const Network& network) : network_(network) {}
  const Network& network_;
  std::string name_;
  std::string ipv4_;
  std::string ipv6_;
  std::string host_veth_;
};

// EchoFrom sends `message` on a new connection from inside `pod` to ip:port and expects the
// same bytes back (an EchoServer there); the error says which step failed.
absl::Status EchoFrom(const Pod& pod, const std::string& ip, uint16_t port,
                      absl::string_view message);
// RefusedFrom connects from inside `pod` to ip:port and expects a refusal: the connect refused
// or reset, or the connection closed without a byte within `timeout` (ClosedWithoutData).
absl::Status RefusedFrom(const Pod& pod, const std::string& ip, uint16_t port,
                         absl::Duration timeout = absl::Seconds(10));

// Subnet is where a pod's addresses come from.
enum class Subnet { kMesh, kOutside };

// Network is a test's cluster: a node namespace with a bridge, and the pods on it. The
// destructor removes every namespace it made (pods first), also after a failed assertion, and
// fails the test if one remains; namespaces left by a test process that died (its pid in the
// name is gone) are removed by the next Create. Programs still running in a namespace keep it
// alive after its name is removed: stop them (destroy their Subprocess) before the Network.
// Thread-compatible.
class Network {
 public:
  // Create makes the node namespace and its bridge, with the node's addresses (.1 of each
  // subnet). FailedPrecondition "transparent-mode tests need root (ip netns add failed: ...)"
  // without the privileges.
  static absl::StatusOr<std::unique_ptr<Network>> Create();
  ~Network();
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  // AddPod makes a pod; `name` (lowercase letters and digits, at most 12) is unique in the
  // Network and becomes part of its namespace's name. The Network owns the pod.
  absl::StatusOr<Pod*> AddPod(const std::string& name, Subnet subnet = Subnet::kMesh);

  const std::string& node() const { return node_; }  // the node namespace's name
  const std::string& bridge() const { return bridge_; }
  // The node's own addresses on the mesh subnet (where a certmgr for the pods listens).
  std::string node_ipv4() const { return Ipv4(Subnet::kMesh, 1); }
  // Subnets as CIDRs ("10.123.7.0/24", "fd00:123:7::/64").
  std::string Ipv4Cidr(Subnet subnet) const;
  std::string Ipv6Cidr(Subnet subnet) const;
  // UnassignedIpv4 is an address of `subnet` that no pod or node has (nothing answers there):
  // hosts 250 to 254 are never given out.
  std::string UnassignedIpv4(Subnet subnet, int host = 250) const { return Ipv4(subnet, host); }
  // dir holds the Network's logs and captures.
  const TempDir& dir() const { return dir_; }

 private:
  Network() = default;
  std::string Ipv4(Subnet subnet, int host) const;
  std::string Ipv6(Subnet subnet, int host) const;

  TempDir dir_;
  int id_ = 0;      // the per-process counter: part of every name
  int subnet_ = 0;  // the <n> of the subnets
  std::string node_;
  std::string bridge_;
  bool node_made_ = false;
  std::vector<std::unique_ptr<Pod>> pods_;
};

// TcpSegment is one TCP segment of a capture: its ports and how many payload bytes it carried.
struct TcpSegment {
  uint16_t source_port = 0;
  uint16_t destination_port = 0;
  uint32_t payload_bytes = 0;
};

// ParsePcap reads a pcap file (either byte order, micro- or nanosecond timestamps, Ethernet
// link type) and returns its TCP segments over IPv4 and IPv6 (VLAN tags skipped; other
// packets ignored). InvalidArgument, naming the offset, for a file that is not such a pcap or
// is cut short.
absl::StatusOr<std::vector<TcpSegment>> ParsePcap(absl::string_view pcap);

// PacketCapture records the TCP segments crossing a pod's veth (tcpdump on the host side, in the
// node namespace, written packet by packet to a pcap file). Start returns once tcpdump
// captures, so nothing sent after it is missed; Stop sends a marker datagram on the same wire
// and waits until tcpdump has written it before stopping tcpdump, so nothing sent before Stop
// is missed either. Then the questions: SawPayload and TcpPayloadBytes. Owned by one thread;
// stop it (or let it go) before the Network.
class PacketCapture {
 public:
  static absl::StatusOr<std::unique_ptr<PacketCapture>> Start(const Pod& pod);
  ~PacketCapture();
  // Stop ends the capture and reads the file; an error (tcpdump's log included) if the marker
  // never arrives, tcpdump fails, or the file does not parse.
  absl::Status Stop();

  // After Stop: SawPayload is true if `bytes` occur anywhere in the captured packets (a marker
  // sent in plain text); TcpPayloadBytes counts the TCP payload bytes seen (`port`: only
  // segments from or to that port).
  bool SawPayload(absl::string_view bytes) const;
  uint64_t TcpPayloadBytes(std::optional<uint16_t> port = std::nullopt) const;
  const std::string& path() const { return path_; }

 private:
  explicit PacketCapture(const Pod& pod) : pod_(pod) {}
  const Pod& pod_;
  std::string path_;
  std::string flush_marker_;
  std::unique_ptr<Subprocess> tcpdump_;
  bool stopped_ = false;
  std::string pcap_;
  std::vector<TcpSegment> segments_;
};

}  // namespace meshtls::testing

#pragma once

// init-network: installs or removes the capture rules (capture_rules.h) with Debian's
// iptables tools, once per pod, from an init container that alone holds NET_ADMIN.

#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::sidecar {

struct InitNetworkOptions {
  // kInstall replaces our rules with the config's; kClean removes ours and nothing else.
  enum class Action { kInstall, kClean };
  Action action = Action::kInstall;
  // PATH to find iptables-save, iptables-restore and the ip6tables ones in.
  std::string path_env;
  // Where the kernel lists its IPv6 addresses: absent when it has no IPv6.
  std::string if_inet6_file = "/proc/net/if_inet6";
  // Where CapEff is read from.
  std::string proc_status_file = "/proc/self/status";
  // Each tool run's limit.
  absl::Duration tool_timeout = absl::Seconds(30);
};

// DryRunText is what `init-network --dry-run` prints: for each family a heading comment and
// the iptables-restore input of a first install. It runs nothing.
std::string DryRunText(const SidecarConfig& config);

// RunInitNetwork applies `options.action` for IPv4 and, if the kernel has IPv6, IPv6: per
// family one `iptables-save -t nat` to read our current rules, one `iptables-restore --noflush`
// doing the whole change as one transaction, and (install) one more save to check that our
// chains hold exactly the intended rules. Returns one line per family for the user; `note`
// receives remarks that are not errors (no IPv6). Errors: NotFound (a tool is not on PATH),
// PermissionDenied (no CAP_NET_ADMIN), Internal (a tool failed: its stderr and the family),
// FailedPrecondition (the check after installing differs); each message is one line starting
// with "init-network". Call from one thread, with SIGPIPE ignored.
absl::StatusOr<std::vector<std::string>> RunInitNetwork(
    const SidecarConfig& config, const InitNetworkOptions& options,
    absl::FunctionRef<void(absl::string_view)> note);

}  // namespace meshtls::sidecar

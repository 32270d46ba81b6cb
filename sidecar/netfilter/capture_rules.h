#pragma once

// The packet-filter rules of transparent mode: what `meshtls-sidecar init-network` installs in
// the nat table so that the app's TCP goes through the sidecar's capture ports. Pure text
// functions: they build iptables-restore input and read iptables-save output, and run nothing
// (init_network.h runs the tools).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls::sidecar {

enum class IpFamily { kIpv4, kIpv6 };

// IpFamilyName is "IPv4" or "IPv6".
absl::string_view IpFamilyName(IpFamily family);

// Our chains. Every nat chain whose name starts with kCaptureChainPrefix belongs to meshtls:
// --clean and a re-install remove them all (and every rule jumping to them), so a chain a
// future version no longer uses does not linger.
inline constexpr char kCaptureChainPrefix[] = "MESHTLS_";
inline constexpr char kInboundCaptureChain[] = "MESHTLS_INBOUND";
inline constexpr char kOutboundCaptureChain[] = "MESHTLS_OUTPUT";

// CaptureRuleSet is one family's rules: the chains to create and the rules to append, as
// "-A CHAIN ..." lines written exactly as iptables-save prints them back (so that the check
// after applying can compare text). The jumps from PREROUTING and OUTPUT come first.
struct CaptureRuleSet {
  std::vector<std::string> chains;
  std::vector<std::string> rules;
};

// BuildCaptureRules is the rule set of `config.transparent` for one family; empty when the
// config captures nothing.
CaptureRuleSet BuildCaptureRules(const SidecarConfig& config, IpFamily family);

// CaptureRules is the iptables-restore input (for `iptables-restore --noflush`) that installs
// BuildCaptureRules where none of our chains exist yet: "*nat", the chains, the rules, "COMMIT".
std::string CaptureRules(const SidecarConfig& config, IpFamily family);

// InstalledCapture is what of ours `iptables-save -t nat` shows: our chains, the rules in them,
// and the rules of other chains that jump to them, each line as printed.
struct InstalledCapture {
  std::vector<std::string> chains;
  std::vector<std::string> rules;
  std::vector<std::string> jumps;
  bool empty() const { return chains.empty() && jumps.empty(); }
};

// FindInstalledCapture reads `iptables-save -t nat` output (any other table's section is
// ignored).
InstalledCapture FindInstalledCapture(absl::string_view save_output);

// ReplacementInput is one iptables-restore --noflush transaction that removes everything
// `installed` lists (jumps deleted, our chains flushed, and those `wanted` does not have
// deleted) and then installs `wanted` (chains it lacks created, its rules appended). With an
// empty `wanted` it only removes: --clean. Rules of other chains than ours and jumps to them are
// never touched.
std::string ReplacementInput(const InstalledCapture& installed, const CaptureRuleSet& wanted);

// VerifyCapture compares what `save_output` shows of ours with `wanted`, rule by rule within
// each chain (whitespace and counters ignored). FailedPrecondition naming the first difference.
absl::Status VerifyCapture(const CaptureRuleSet& wanted, absl::string_view save_output);

}  // namespace meshtls::sidecar

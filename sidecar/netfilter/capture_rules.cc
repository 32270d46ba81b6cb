#include "sidecar/netfilter/capture_rules.h"

#include <algorithm>
#include <cstdint>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/net/cidr.h"

namespace meshtls::sidecar {
namespace {

// multiport takes at most 15 ports in one rule.
constexpr size_t kMaxMultiportPorts = 15;

std::string Loopback(IpFamily family) {
  return family == IpFamily::kIpv4 ? "127.0.0.0/8" : "::1/128";
}

// PortReturns appends RETURN rules for `ports` (duplicates dropped, order kept): one
// `-m tcp --dport` rule for a single port, `-m multiport --dports` for up to 15 at a time.
void AppendPortReturns(const std::string& chain, const std::vector<uint16_t>& ports,
                       std::vector<std::string>& rules) {
  std::vector<uint16_t> unique;
  for (uint16_t port : ports) {
    if (std::find(unique.begin(), unique.end(), port) == unique.end()) {
      unique.push_back(port);
    }
  }
  for (size_t i = 0; i < unique.size(); i += kMaxMultiportPorts) {
    const size_t end = std::min(unique.size(), i + kMaxMultiportPorts);
    if (end - i == 1) {
      rules.push_back(
          absl::StrCat("-A ", chain, " -p tcp -m tcp --dport ", unique[i], " -j RETURN"));
    } else {
      rules.push_back(absl::StrCat("-A ", chain, " -p tcp -m multiport --dports ",
                                   absl::StrJoin(unique.begin() + static_cast<ptrdiff_t>(i),
                                                 unique.begin() + static_cast<ptrdiff_t>(end), ","),
                                   " -j RETURN"));
    }
  }
}

std::vector<std::string> Tokens(absl::string_view line) {
  return absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
}

bool IsOurs(absl::string_view chain) { return absl::StartsWith(chain, kCaptureChainPrefix); }

// JumpTarget is the chain a rule line jumps (-j) or goes (-g) to; the last such option counts,
// so a comment quoting "-j X" before it does not.
std::string JumpTarget(const std::vector<std::string>& tokens) {
  for (size_t i = tokens.size(); i-- > 1;) {
    if (tokens[i - 1] == "-j" || tokens[i - 1] == "-g") {
      return tokens[i];
    }
  }
  return "";
}

// ByChain groups rule lines by their chain, keeping their order, with whitespace collapsed.
std::map<std::string, std::vector<std::string>> ByChain(const std::vector<std::string>& rules) {
  std::map<std::string, std::vector<std::string>> out;
  for (const std::string& rule : rules) {
    const std::vector<std::string> tokens = Tokens(rule);
    if (tokens.size() >= 2) {
      out[tokens[1]].push_back(absl::StrJoin(tokens, " "));
    }
  }
  return out;
}

}  // namespace

absl::string_view IpFamilyName(IpFamily family) {
  return family == IpFamily::kIpv4 ? "IPv4" : "IPv6";
}

CaptureRuleSet BuildCaptureRules(const SidecarConfig& config, IpFamily family) {
  const TransparentConfig& t = config.transparent;
  CaptureRuleSet set;
  if (!t.enabled()) {
    return set;
  }
  const std::string loopback = Loopback(family);
  const std::string proxy = absl::StrCat(" -m owner --uid-owner ", t.proxy_uid);
  const std::string in = kInboundCaptureChain;
  const std::string out = kOutboundCaptureChain;
  if (t.inbound.enabled) {
    set.chains.push_back(in);
    set.rules.push_back(absl::StrCat("-A PREROUTING -p tcp -j ", in));
  }
  set.chains.push_back(out);
  set.rules.push_back(absl::StrCat("-A OUTPUT -p tcp -j ", out));
  if (t.inbound.enabled) {
    // The sidecar's own ports (the capture ports among them) and the excluded ones are never
    // redirected (an excluded port may be one of the sidecar's own: listed once).
    std::vector<uint16_t> returns = config.OwnPorts();
    returns.insert(returns.end(), t.inbound.exclude_ports.begin(), t.inbound.exclude_ports.end());
    AppendPortReturns(in, returns, set.rules);
    set.rules.push_back(absl::StrCat("-A ", in, " -p tcp -j REDIRECT --to-ports ", t.inbound.port));
    // The sidecar reaching its own pod's address leaves through lo: it goes to the inbound
    // capture like a connection from another pod. (Its connections to loopback, among them
    // the inbound capture's own forwarding to the app, stay as they are.)
    set.rules.push_back(absl::StrCat("-A ", out, " ! -d ", loopback, " -o lo", proxy, " -j ", in));
  }
  if (t.outbound.enabled) {
    set.rules.push_back(absl::StrCat("-A ", out, proxy, " -j RETURN"));
    set.rules.push_back(absl::StrCat("-A ", out, " -d ", loopback, " -j RETURN"));
    AppendPortReturns(out, t.outbound.exclude_ports, set.rules);
    for (const net::Cidr& network : t.outbound.exclude_networks) {
      if (network.is_ipv6() == (family == IpFamily::kIpv6)) {
        set.rules.push_back(absl::StrCat("-A ", out, " -d ", network.ToString(), " -j RETURN"));
      }
    }
    set.rules.push_back(
        absl::StrCat("-A ", out, " -p tcp -j REDIRECT --to-ports ", t.outbound.port));
  }
  return set;
}

std::string CaptureRules(const SidecarConfig& config, IpFamily family) {
  return ReplacementInput(InstalledCapture{}, BuildCaptureRules(config, family));
}

InstalledCapture FindInstalledCapture(absl::string_view save_output) {
  InstalledCapture found;
  bool in_nat = false;
  for (absl::string_view line : absl::StrSplit(save_output, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (absl::StartsWith(line, "*")) {
      in_nat = line == "*nat";
      continue;
    }
    if (!in_nat) {
      continue;
    }
    if (absl::ConsumePrefix(&line, ":")) {
      const absl::string_view chain = line.substr(0, line.find(' '));
      if (IsOurs(chain)) {
        found.chains.emplace_back(chain);
      }
      continue;
    }
    if (!absl::StartsWith(line, "-A ")) {
      continue;
    }
    const std::vector<std::string> tokens = Tokens(line);
    if (tokens.size() < 2) {
      continue;
    }
    if (IsOurs(tokens[1])) {
      found.rules.emplace_back(line);
    } else if (IsOurs(JumpTarget(tokens))) {
      found.jumps.emplace_back(line);
    }
  }
  return found;
}

std::string ReplacementInput(const InstalledCapture& installed, const CaptureRuleSet& wanted) {
  std::string input = "*nat\n";
  // Jumps first: a chain still referenced cannot be deleted. Each installed line is deleted by
  // its exact text, so a duplicate is deleted as many times as it appears.
  for (const std::string& jump : installed.jumps) {
    absl::StrAppend(&input, "-D", jump.substr(2), "\n");
  }
  for (const std::string& chain : installed.chains) {
    absl::StrAppend(&input, "-F ", chain, "\n");
  }
  auto contains = [](const std::vector<std::string>& list, const std::string& item) {
    return std::find(list.begin(), list.end(), item) != list.end();
  };
  for (const std::string& chain : installed.chains) {
    if (!contains(wanted.chains, chain)) {
      absl::StrAppend(&input, "-X ", chain, "\n");
    }
  }
  for (const std::string& chain : wanted.chains) {
    if (!contains(installed.chains, chain)) {
      absl::StrAppend(&input, "-N ", chain, "\n");
    }
  }
  for (const std::string& rule : wanted.rules) {
    absl::StrAppend(&input, rule, "\n");
  }
  absl::StrAppend(&input, "COMMIT\n");
  return input;
}

absl::Status VerifyCapture(const CaptureRuleSet& wanted, absl::string_view save_output) {
  const InstalledCapture installed = FindInstalledCapture(save_output);
  std::vector<std::string> want_chains = wanted.chains;
  std::vector<std::string> have_chains = installed.chains;
  std::sort(want_chains.begin(), want_chains.end());
  std::sort(have_chains.begin(), have_chains.end());
  if (want_chains != have_chains) {
    return absl::FailedPreconditionError(
        absl::StrCat("the nat table has chains [", absl::StrJoin(have_chains, ", "),
                     "] of ours instead of [", absl::StrJoin(want_chains, ", "), "]"));
  }
  std::vector<std::string> have_rules = installed.jumps;
  have_rules.insert(have_rules.end(), installed.rules.begin(), installed.rules.end());
  const auto want = ByChain(wanted.rules);
  const auto have = ByChain(have_rules);
  for (const auto* chains : {&want, &have}) {
    for (const auto& [chain, unused] : *chains) {
      const std::vector<std::string> empty;
      const auto w = want.find(chain);
      const auto h = have.find(chain);
      const std::vector<std::string>& want_lines = w == want.end() ? empty : w->second;
      const std::vector<std::string>& have_lines = h == have.end() ? empty : h->second;
      for (size_t i = 0; i < std::max(want_lines.size(), have_lines.size()); ++i) {
        const std::string want_line = i < want_lines.size() ? want_lines[i] : "(nothing)";
        const std::string have_line = i < have_lines.size() ? have_lines[i] : "(nothing)";
        if (want_line != have_line) {
          return absl::FailedPreconditionError(
              absl::StrCat("rule ", i + 1, " of ours in chain ", chain, " is \"", have_line,
                           "\" where \"", want_line, "\" was meant"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace meshtls::sidecar

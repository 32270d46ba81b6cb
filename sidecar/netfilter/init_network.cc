#include "sidecar/netfilter/init_network.h"

#include <unistd.h>

#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/base/file.h"
#include "common/base/status_macros.h"
#include "sidecar/netfilter/capture_rules.h"
#include "sidecar/netfilter/child_process.h"

namespace meshtls::sidecar {
namespace {

constexpr int kCapNetAdmin = 12;  // linux/capability.h

// FamilyTools are one family's two programs, as found on PATH.
struct FamilyTools {
  IpFamily family;
  std::string save;
  std::string restore;
};

absl::StatusOr<FamilyTools> FindTools(IpFamily family, absl::string_view path_env) {
  const std::string prefix = family == IpFamily::kIpv4 ? "iptables" : "ip6tables";
  FamilyTools tools{family, "", ""};
  for (auto [name, path] : {std::pair<std::string, std::string*>{prefix + "-save", &tools.save},
                            {prefix + "-restore", &tools.restore}}) {
    *path = FindOnPath(name, path_env);
    if (path->empty()) {
      return absl::NotFoundError(
          absl::StrCat(name, " not found on PATH: install Debian's iptables package"));
    }
  }
  return tools;
}

// HasNetAdmin reads CapEff from /proc/self/status. A file it cannot read or parse counts as
// having the capability: the tools then say what is wrong themselves.
bool HasNetAdmin(const std::string& status_file) {
  absl::StatusOr<std::string> status = base::ReadFileToString(status_file);
  if (!status.ok()) {
    return true;
  }
  for (absl::string_view line : absl::StrSplit(*status, '\n')) {
    if (absl::ConsumePrefix(&line, "CapEff:")) {
      uint64_t caps = 0;
      if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(line), &caps)) {
        return true;
      }
      return (caps >> kCapNetAdmin) & 1;
    }
  }
  return true;
}

// OneLine joins a tool's output lines with "; " so an error stays one line.
std::string OneLine(absl::string_view text) {
  std::vector<absl::string_view> lines =
      absl::StrSplit(absl::StripAsciiWhitespace(text), '\n', absl::SkipWhitespace());
  return lines.empty() ? "(no message)" : absl::StrJoin(lines, "; ");
}

absl::StatusOr<std::string> Run(const FamilyTools& tools, const std::string& program,
                                std::vector<std::string> args, absl::string_view input,
                                absl::Duration timeout) {
  std::vector<std::string> argv = {program};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string shown = absl::StrJoin(argv, " ");
  absl::StatusOr<ChildResult> result = RunChildProcess(argv, input, timeout);
  if (!result.ok()) {
    return absl::InternalError(
        absl::StrCat(IpFamilyName(tools.family), ": ", shown, ": ", result.status().message()));
  }
  if (result->exit_code != 0) {
    return absl::InternalError(absl::StrCat(IpFamilyName(tools.family), ": ", shown,
                                            " failed (exit ", result->exit_code,
                                            "): ", OneLine(result->err)));
  }
  return std::move(result->out);
}

int CountRules(const CaptureRuleSet& set) { return static_cast<int>(set.rules.size()); }

absl::StatusOr<std::string> ApplyFamily(const SidecarConfig& config, const FamilyTools& tools,
                                        const InitNetworkOptions& options) {
  const absl::string_view family = IpFamilyName(tools.family);
  MESHTLS_ASSIGN_OR_RETURN(std::string before,
                           Run(tools, tools.save, {"-t", "nat"}, "", options.tool_timeout));
  const InstalledCapture installed = FindInstalledCapture(before);
  if (options.action == InitNetworkOptions::Action::kClean) {
    if (installed.empty()) {
      return absl::StrCat("no ", family, " capture rules installed: nothing to remove");
    }
    MESHTLS_RETURN_IF_ERROR(Run(tools, tools.restore, {"--noflush"},
                                ReplacementInput(installed, CaptureRuleSet{}), options.tool_timeout)
                                .status());
    return absl::StrCat("removed ", installed.rules.size() + installed.jumps.size(), " ", family,
                        " rules and ", installed.chains.size(), " chains (",
                        absl::StrJoin(installed.chains, ", "), ")");
  }
  const CaptureRuleSet wanted = BuildCaptureRules(config, tools.family);
  MESHTLS_RETURN_IF_ERROR(Run(tools, tools.restore, {"--noflush"},
                              ReplacementInput(installed, wanted), options.tool_timeout)
                              .status());
  MESHTLS_ASSIGN_OR_RETURN(std::string after,
                           Run(tools, tools.save, {"-t", "nat"}, "", options.tool_timeout));
  if (absl::Status verified = VerifyCapture(wanted, after); !verified.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(family, ": after installing, ", verified.message()));
  }
  return absl::StrCat("installed ", CountRules(wanted), " ", family, " rules (chains ",
                      absl::StrJoin(wanted.chains, ", "),
                      installed.empty() ? "" : "; replaced ours", ")");
}

absl::StatusOr<std::vector<std::string>> InitNetworkFamilies(
    const SidecarConfig& config, const InitNetworkOptions& options,
    absl::FunctionRef<void(absl::string_view)> note) {
  std::vector<IpFamily> families = {IpFamily::kIpv4};
  if (access(options.if_inet6_file.c_str(), F_OK) == 0) {
    families.push_back(IpFamily::kIpv6);
  } else {
    note(absl::StrCat("the kernel has no IPv6 (", options.if_inet6_file,
                      " is absent): IPv4 rules only"));
  }
  std::vector<FamilyTools> tools;
  for (IpFamily family : families) {
    MESHTLS_ASSIGN_OR_RETURN(FamilyTools found, FindTools(family, options.path_env));
    tools.push_back(std::move(found));
  }
  if (!HasNetAdmin(options.proc_status_file)) {
    return absl::PermissionDeniedError(
        "init-network needs CAP_NET_ADMIN (and NET_RAW): run it as root or in an init container "
        "with securityContext.capabilities.add: [NET_ADMIN, NET_RAW]");
  }
  std::vector<std::string> lines;
  for (const FamilyTools& family_tools : tools) {
    MESHTLS_ASSIGN_OR_RETURN(std::string line, ApplyFamily(config, family_tools, options));
    lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace

std::string DryRunText(const SidecarConfig& config) {
  std::string out;
  for (IpFamily family : {IpFamily::kIpv4, IpFamily::kIpv6}) {
    const absl::string_view name = IpFamilyName(family);
    absl::StrAppend(&out, "# ", name, " (", family == IpFamily::kIpv4 ? "iptables" : "ip6tables",
                    "-restore --noflush input of a first install)\n", CaptureRules(config, family));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> RunInitNetwork(
    const SidecarConfig& config, const InitNetworkOptions& options,
    absl::FunctionRef<void(absl::string_view)> note) {
  absl::StatusOr<std::vector<std::string>> lines = InitNetworkFamilies(config, options, note);
  if (!lines.ok() && !absl::StartsWith(lines.status().message(), "init-network")) {
    return absl::Status(lines.status().code(),
                        absl::StrCat("init-network: ", lines.status().message()));
  }
  return lines;
}

}  // namespace meshtls::sidecar

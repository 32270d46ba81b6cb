// meshtls-sidecar: the mutual-TLS sidecar.
//
//   meshtls-sidecar --config FILE [--admin ADDR] [--log-level LEVEL] [--workers N]
//                   [--bound-ports-file PATH]
//   meshtls-sidecar init-network --config FILE [--dry-run] [--clean]
//
// Exit codes: 0 after a drain (SIGTERM/SIGINT) or a finished init-network, 1 runtime failure,
// 2 bad flags or configuration.

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/file.h"
#include "common/base/flags.h"
#include "common/base/grpc_log.h"
#include "common/base/host_port.h"
#include "common/base/log.h"
#include "common/pki/spiffe_id.h"
#include "sidecar/config/sidecar_config.h"
#include "sidecar/netfilter/init_network.h"
#include "sidecar/server/server.h"

namespace {

using namespace meshtls;

// CommandLine is the sidecar's commands and their flags: running the sidecar (no command word)
// and init-network; a flag of the other command, or of none, is refused by name.
base::CommandLineSpec CommandLine() {
  return {
      .program = "meshtls-sidecar",
      .commands =
          {
              {
                  .flags =
                      {
                          {"config", "FILE", "sidecar configuration (YAML, see README)"},
                          {"admin", "ADDR",
                           "admin listener, overrides admin.listen (e.g. 127.0.0.1:15000)"},
                          {"log-level", "LEVEL",
                           "debug, info, warning or error; overrides log.level"},
                          {"log-format", "FMT", "text or json; overrides log.format"},
                          {"workers", "N",
                           "data-plane threads (0 = one per core); overrides workers"},
                          {"namespace", "NS", "the pod's own namespace (with --service-account)"},
                          {"service-account", "SA",
                           "the pod's own service account; with --namespace (in Kubernetes\nfrom "
                           "the "
                           "downward API), refuse a certificate for any identity other\nthan "
                           "spiffe://<trust_domain>/ns/NS/sa/SA"},
                          {"bound-ports-file", "PATH",
                           "once every listener is bound, write `<listener>=<ip>:<port>` lines\nto "
                           "PATH "
                           "(admin, inbound.<name>, outbound.<name>, transparent.outbound,\n"
                           "transparent.inbound): the ports the kernel chose for listeners\n"
                           "configured with port 0"},
                          {"check", "", "validate the configuration and exit (0 if valid)"},
                      },
                  .synopsis = "--config FILE [flags]",
                  .summary =
                      "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads identity.files.\n"
                      "`meshtls-sidecar init-network --help`: the transparent-mode capture rules.",
              },
              {
                  .words = {"init-network"},
                  .flags =
                      {
                          {"config", "FILE",
                           "sidecar configuration (YAML) with a transparent section (not read by "
                           "--clean)"},
                          {"dry-run", "",
                           "print the iptables-restore input of a first install (IPv4 and\nIPv6) "
                           "and change nothing; needs neither privileges nor iptables"},
                          {"clean", "",
                           "remove our rules (the jumps to our MESHTLS_* chains, then the\nchains) "
                           "and nothing else"},
                      },
                  .synopsis = "--config FILE [--dry-run] [--clean]",
                  .summary =
                      "install the transparent-mode capture rules (nat table, IPv4 and IPv6)\n"
                      "from the config's transparent section, replacing ours if present; run\n"
                      "once per pod by an init container with NET_ADMIN and NET_RAW",
              },
          },
      .common_flags = {{"help", "", "print this help"}, {"version", "", "print the version"}},
  };
}

int UsageError(absl::string_view message) {
  std::fprintf(stderr, "meshtls-sidecar: %.*s\n", static_cast<int>(message.size()), message.data());
  return 2;
}

// LoadConfig reads and checks --config; the error is the one line to print. `check_files`:
// the files it names must exist (init-network runs before anything else of the pod, when
// certificates and tokens may not be there yet).
absl::StatusOr<sidecar::SidecarConfig> LoadConfig(const std::string& path, bool check_files,
                                                  absl::string_view command_prefix) {
  absl::StatusOr<std::string> text = base::ReadFileToString(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(command_prefix, "--config: ", text.status().message()));
  }
  absl::StatusOr<sidecar::SidecarConfig> config = sidecar::ParseSidecarConfig(*text, check_files);
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

// InitNetwork runs `init-network`: exit 0 done, 1 the rules could not be read, installed or
// removed, 2 bad flags or configuration. Errors are one line on stderr.
int InitNetwork(const base::Flags& flags) {
  const std::optional<std::string> config_path = flags.Get("config");
  if (flags.Has("dry-run") && flags.Has("clean")) {
    return UsageError("init-network: --dry-run prints an install; it cannot go with --clean");
  }
  const bool clean = flags.Has("clean");
  if (!config_path && !clean) {
    return UsageError("init-network: --config is required (see init-network --help)");
  }
  // --clean removes every MESHTLS_ chain and the jumps to them whatever the config says, so it
  // needs no config: it still works after the transparent section (or the file) is gone.
  absl::StatusOr<sidecar::SidecarConfig> config = sidecar::SidecarConfig{};
  if (!clean) {
    config = LoadConfig(*config_path, /*check_files=*/false, "init-network: ");
    if (!config.ok()) {
      return UsageError(config.status().message());
    }
    if (!config->transparent.enabled()) {
      return UsageError("init-network: the config has no transparent section");
    }
  }
  if (!clean && config->transparent.proxy_uid == 0) {
    std::fputs(
        "meshtls-sidecar: init-network: warning: transparent.proxy_uid is 0: every process of "
        "the pod running as root bypasses the outbound capture\n",
        stderr);
  }
  if (flags.Has("dry-run")) {
    std::fputs(sidecar::DryRunText(*config).c_str(), stdout);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);  // a tool that exits without reading its input must not kill us
  sidecar::InitNetworkOptions options;
  options.action = clean ? sidecar::InitNetworkOptions::Action::kClean
                         : sidecar::InitNetworkOptions::Action::kInstall;
  const char* path = std::getenv("PATH");
  options.path_env = path == nullptr ? "" : path;
  absl::StatusOr<std::vector<std::string>> lines =
      sidecar::RunInitNetwork(*config, options, [](absl::string_view note) {
        std::fprintf(stderr, "meshtls-sidecar: init-network: %.*s\n", static_cast<int>(note.size()),
                     note.data());
      });
  if (!lines.ok()) {
    const absl::string_view message = lines.status().message();
    std::fprintf(stderr, "meshtls-sidecar: %.*s\n", static_cast<int>(message.size()),
                 message.data());
    return 1;
  }
  for (const std::string& line : *lines) {
    std::printf("init-network: %s\n", line.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const base::CommandLineSpec command_line = CommandLine();
  absl::StatusOr<base::ParsedCommandLine> parsed = base::ParseCommandLine(command_line, argc, argv);
  if (!parsed.ok()) {
    return UsageError(parsed.status().message());
  }
  const base::Flags& flags = parsed->flags;
  if (flags.Has("help")) {
    std::fputs(base::CommandHelp(command_line, *parsed->command).c_str(), stdout);
    return 0;
  }
  if (flags.Has("version")) {
    std::puts("meshtls-sidecar 0.1.0");
    return 0;
  }
  if (parsed->named) {  // the one named command
    return InitNetwork(flags);
  }
  const std::string bound_ports_file = flags.Get("bound-ports-file").value_or("");
  if (flags.Has("bound-ports-file") && bound_ports_file.empty()) {
    return UsageError("--bound-ports-file needs a path");
  }
  const std::optional<std::string> config_path = flags.Get("config");
  if (!config_path) {
    return UsageError("--config is required (see --help)");
  }
  absl::StatusOr<sidecar::SidecarConfig> config =
      LoadConfig(*config_path, /*check_files=*/true, "");
  if (!config.ok()) {
    return UsageError(config.status().message());
  }
  if (std::optional<std::string> v = flags.Get("admin")) {
    if (config->transparent.inbound.enabled) {
      // init-network reads the admin port from the file, to keep it out of the capture rules.
      return UsageError(
          "--admin cannot override admin.listen with transparent.inbound: init-network takes the "
          "admin port from the config file; set admin.listen there");
    }
    absl::StatusOr<base::HostPort> hp = base::ParseHostPort(*v, true);
    if (!hp.ok() || !hp->host_is_ip) {
      return UsageError("--admin must be an IP address and port, such as 127.0.0.1:15000");
    }
    config->admin_listen = hp->ToString();
  }
  if (std::optional<std::string> v = flags.Get("log-level")) {
    absl::StatusOr<base::LogLevel> level = base::ParseLogLevel(*v);
    if (!level.ok()) {
      return UsageError(absl::StrCat("--log-level: ", level.status().message()));
    }
    config->log.level = *level;
  }
  if (std::optional<std::string> v = flags.Get("log-format")) {
    absl::StatusOr<base::LogFormat> format = base::ParseLogFormat(*v);
    if (!format.ok()) {
      return UsageError(absl::StrCat("--log-format: ", format.status().message()));
    }
    config->log.format = *format;
  }
  if (std::optional<std::string> v = flags.Get("workers")) {
    int workers = 0;
    if (!absl::SimpleAtoi(*v, &workers) || workers < 0 || workers > 256) {
      return UsageError("--workers must be a whole number from 0 to 256");
    }
    config->workers = workers;
  }
  const std::optional<std::string> ns = flags.Get("namespace");
  const std::optional<std::string> sa = flags.Get("service-account");
  if (ns.has_value() != sa.has_value()) {
    return UsageError("--namespace and --service-account go together");
  }
  if (ns.has_value()) {
    absl::StatusOr<pki::SpiffeId> id = pki::SpiffeId::ForWorkload(config->trust_domain, *ns, *sa);
    if (!id.ok()) {
      return UsageError(absl::StrCat("--namespace/--service-account: ", id.status().message()));
    }
    config->expected_identity = id->str();
  }
  if (flags.Has("check")) {
    std::puts("configuration is valid");
    return 0;
  }
  base::SetLogOptions(config->log.level, config->log.format);
  base::RouteGrpcLogs();

  // Block the signals before any thread starts, so only sigwait() below receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<sidecar::Server>> server =
      sidecar::Server::Create(*config, bound_ports_file);
  if (!server.ok()) {
    base::LogError("sidecar failed to start", {{"error", std::string(server.status().message())}});
    return absl::IsInvalidArgument(server.status()) ? 2 : 1;
  }
  while (true) {
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    if (signal_number == SIGHUP) {
      absl::Status s = (*server)->ReloadFiles();
      base::LogInfo("SIGHUP: reload", {{"result", s.ok() ? "ok" : std::string(s.message())}});
      continue;
    }
    base::LogInfo("stopping", {{"signal", strsignal(signal_number)}});
    (*server)->Drain();
    break;
  }
  server->reset();
  return 0;
}

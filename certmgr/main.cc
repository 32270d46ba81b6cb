// meshtls-certmgr: the mesh CA behind a gRPC control plane.
//
//   meshtls-certmgr [serve] --config FILE [--log-level LEVEL] [--check] [--bound-ports-file PATH]
//   meshtls-certmgr token create (--config FILE | --token-file PATH) --spiffe-id ID [--ttl D]
//   meshtls-certmgr ca init | ca rotate STEP | verify ...   (COMMAND --help lists its flags)
//
// Each command accepts only its own flags (CommandLine() below), so a flag meant for another
// command is an error rather than silently ignored.
//
// Exit codes: 0 clean stop, 1 runtime failure, 2 bad flags or configuration.

#include <signal.h>

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "certmgr/ca/ca_material.h"
#include "certmgr/inject/injector.h"
#include "certmgr/server/certmgr_config.h"
#include "certmgr/server/certmgr_server.h"
#include "certmgr/server/join_tokens.h"
#include "common/base/clock.h"
#include "common/base/file.h"
#include "common/base/flags.h"
#include "common/base/grpc_log.h"
#include "common/base/log.h"
#include "common/config/yaml_tree.h"
#include "common/pki/certificate.h"
#include "common/pki/chain_verifier.h"
#include "common/pki/spiffe_id.h"

namespace {

using namespace meshtls;

// CommandLine declares every subcommand with the flags it alone accepts; --help after a
// subcommand lists them, and a flag of another subcommand is refused by name.
base::CommandLineSpec CommandLine() {
  const base::FlagSpec config_flag = {"config", "FILE", "certmgr configuration (YAML)"};
  const base::FlagSpec ca_dir_flag = {"ca-dir", "DIR",
                                      "the CA directory to work on instead of ca.dir (a copy of "
                                      "a\nKubernetes Secret's files)"};
  return {
      .program = "meshtls-certmgr",
      .commands =
          {
              {.words = {"serve"},
               .flags = {config_flag,
                         {"log-level", "LEVEL",
                          "debug, info, warning or error; overrides log.level"},
                         {"bound-ports-file", "PATH",
                          "once both listeners are bound, write `grpc=<ip>:<port>` and\n"
                          "`admin=<ip>:<port>` lines to PATH (the ports the kernel chose\nfor a "
                          "listen address with port 0)"},
                         {"check", "", "validate the configuration and exit (0 if valid)"}},
               .synopsis = "--config FILE [--log-level debug|info|warning|error] [--check] "
                           "[--bound-ports-file PATH]",
               .summary = "run the CA: gRPC CertificateAuthority over TLS, admin /metrics /healthz "
                          "/readyz;\nfollows the config file (and SIGHUP) to apply `deny` and the "
                          "Kubernetes\nallowed_namespaces live"},
              {.words = {"token", "create"},
               .flags = {{"config", "FILE",
                          "take the token file (authenticators.join_tokens.file) and\nthe trust "
                          "domain from this configuration"},
                         {"token-file", "PATH", "the join-token file (overrides the config's)"},
                         {"spiffe-id", "ID",
                          "the workload the token bootstraps "
                          "(spiffe://<td>/ns/<ns>/sa/<sa>)"},
                         {"ttl", "DURATION", "how long the token may bootstrap ID (default 24h)"}},
               .synopsis = "(--config FILE | --token-file PATH) --spiffe-id ID [--ttl DURATION]",
               .summary = "add a join token for ID to the token file and print it (only its hash "
                          "is stored);\nit bootstraps ID until it expires; ID renews while the "
                          "file keeps a line for it"},
              {.words = {"ca", "init"},
               .flags = {config_flag, ca_dir_flag},
               .synopsis = "--config FILE [--ca-dir DIR]",
               .summary = "create the root CA in ca.dir (or --ca-dir) and print it; for a CA kept "
                          "in a\nKubernetes Secret, made once before the first deployment"},
              {.words = {"ca", "rotate"},
               .arguments = {"prepare|activate|retire"},
               .flags = {config_flag,
                         ca_dir_flag,
                         {"force", "",
                          "retire the previous root before every leaf it signed has "
                          "expired\n(those leaves are then refused by the mesh)"}},
               .synopsis = "--config FILE [--ca-dir DIR] [--force]",
               .summary = "one CA rotation step on ca.dir (or --ca-dir); running certmgr processes "
                          "apply it\nlive: prepare (new root trusted), activate (it signs), retire "
                          "(old root dropped)"},
              {.words = {"inject"},
               .arguments = {"[FILE...]"},
               .flags = {{"config", "FILE",
                          "take the trust domain and the `injection` section from this\n"
                          "configuration (default: the schema's defaults)"}},
               .synopsis = "[--config FILE] [FILE...]",
               .summary = "read Kubernetes manifests (YAML or JSON, several documents; FILE `-` "
                          "or none:\nstdin) and write them to stdout with every Pod template "
                          "meshed: init-network,\nthe sidecar and its generated config "
                          "(docs/injection.md); other objects are\nwritten as they are. "
                          "Nothing is written unless every template could be meshed"},
              {.words = {"verify"},
               .flags = {{"bundle", "ROOTS.pem", "the trusted roots (PEM)"},
                         {"chain", "CHAIN.pem", "the chain to check, leaf first (PEM)"},
                         {"purpose", "client|server",
                          "the role the leaf is checked for (default client)"},
                         {"at", "UNIX_TIME", "check as of this time (default now)"},
                         {"spiffe-id", "ID",
                          "the identity the leaf must have (it also names the trust domain)"},
                         {"profile", "svid|svid-shape|path",
                          "svid (default): the sidecar's whole check; path: the\ncertification "
                          "path only; svid-shape: the path and the leaf rules\nthat need no "
                          "SPIFFE ID"}},
               .synopsis = "--bundle ROOTS.pem --chain CHAIN.pem [--purpose client|server] "
                           "[--at UNIX_TIME] [--spiffe-id ID] [--profile svid|svid-shape|path]",
               .summary = "validate a chain with the sidecar's own code; prints OK or the reason"},
          },
      .common_flags = {{"help", "", "print this help"}, {"version", "", "print the version"}},
      .default_command = 0,
  };
}

int UsageError(absl::string_view message) {
  std::fprintf(stderr, "meshtls-certmgr: %.*s\n", static_cast<int>(message.size()), message.data());
  return 2;
}

absl::StatusOr<certmgr::CertmgrConfig> LoadConfig(const std::string& path) {
  absl::StatusOr<std::string> text = base::ReadFileToString(path);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--config: ", text.status().message()));
  }
  absl::StatusOr<certmgr::CertmgrConfig> config = certmgr::ParseCertmgrConfig(*text);
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

int TokenCreate(const base::Flags& flags) {
  std::string token_file;
  std::string trust_domain;
  if (auto it = flags.values.find("config"); it != flags.values.end()) {
    absl::StatusOr<certmgr::CertmgrConfig> config = LoadConfig(it->second);
    if (!config.ok()) {
      return UsageError(config.status().message());
    }
    token_file = config->join_tokens_file;
    trust_domain = config->trust_domain;
    if (token_file.empty()) {
      return UsageError("the config sets no authenticators.join_tokens.file");
    }
  }
  if (auto it = flags.values.find("token-file"); it != flags.values.end()) {
    token_file = it->second;
  }
  if (token_file.empty()) {
    return UsageError("token create needs --config or --token-file");
  }
  auto id_flag = flags.values.find("spiffe-id");
  if (id_flag == flags.values.end()) {
    return UsageError("token create needs --spiffe-id");
  }
  absl::StatusOr<pki::SpiffeId> id = pki::SpiffeId::Parse(id_flag->second);
  if (!id.ok()) {
    return UsageError(absl::StrCat("--spiffe-id: ", id.status().message()));
  }
  if (id->path().empty()) {
    return UsageError("--spiffe-id must name a workload (spiffe://<td>/ns/<ns>/sa/<sa>)");
  }
  if (!trust_domain.empty() && id->trust_domain() != trust_domain) {
    return UsageError(absl::StrCat("--spiffe-id is not in trust domain ", trust_domain));
  }
  absl::Duration ttl = certmgr::kDefaultJoinTokenTtl;
  if (auto it = flags.values.find("ttl"); it != flags.values.end()) {
    if (!absl::ParseDuration(it->second, &ttl) || ttl <= absl::ZeroDuration()) {
      return UsageError("--ttl must be a positive duration such as 1h or 720h");
    }
  }
  const absl::Time expires = absl::Now() + ttl;
  absl::StatusOr<std::string> token = certmgr::CreateJoinToken(token_file, *id, expires);
  if (!token.ok()) {
    std::fprintf(stderr, "meshtls-certmgr: %s\n", std::string(token.status().message()).c_str());
    return 1;
  }
  // The token alone goes to stdout (`token create ... > file`); the expiry to stderr.
  std::printf("%s\n", token->c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "join token for %s expires %s (in %s)\n", id->str().c_str(),
               absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", expires, absl::UTCTimeZone()).c_str(),
               absl::FormatDuration(ttl).c_str());
  return 0;
}

// Verify runs the sidecar's chain validation (pki::ChainVerifier) on files, so an operator can
// see exactly why a peer was refused. Exit 0 (OK), 1 (refused), 2 (bad flags or files).
int Verify(const base::Flags& flags) {
  std::optional<std::string> bundle_path = flags.Get("bundle");
  std::optional<std::string> chain_path = flags.Get("chain");
  if (!bundle_path || !chain_path) {
    return UsageError("verify needs --bundle and --chain");
  }
  absl::StatusOr<std::string> bundle_pem = base::ReadFileToString(*bundle_path);
  absl::StatusOr<std::string> chain_pem = base::ReadFileToString(*chain_path);
  if (!bundle_pem.ok() || !chain_pem.ok()) {
    return UsageError(!bundle_pem.ok() ? bundle_pem.status().message()
                                       : chain_pem.status().message());
  }
  absl::StatusOr<std::vector<pki::Certificate>> roots = pki::ParsePemChain(*bundle_pem);
  if (!roots.ok()) {
    return UsageError(absl::StrCat("--bundle: ", roots.status().message()));
  }
  absl::StatusOr<std::vector<pki::Certificate>> chain = pki::ParsePemChain(*chain_pem);
  if (!chain.ok()) {
    return UsageError(absl::StrCat("--chain: ", chain.status().message()));
  }
  const std::string purpose = flags.Get("purpose").value_or("client");
  if (purpose != "client" && purpose != "server") {
    return UsageError("--purpose must be client or server");
  }
  const pki::PeerRole role = purpose == "client" ? pki::PeerRole::kClient : pki::PeerRole::kServer;
  absl::Time at = absl::Now();
  if (std::optional<std::string> t = flags.Get("at")) {
    int64_t seconds = 0;
    if (!absl::SimpleAtoi(*t, &seconds)) {
      return UsageError("--at must be Unix seconds");
    }
    at = absl::FromUnixSeconds(seconds);
  }
  const std::string profile = flags.Get("profile").value_or("svid");
  if (profile != "svid" && profile != "path" && profile != "svid-shape") {
    return UsageError("--profile must be svid, svid-shape or path");
  }
  auto fail = [](absl::string_view why) {
    std::printf("FAIL: %s\n", std::string(why).c_str());
    return 1;
  };
  if (profile == "path" || profile == "svid-shape") {
    absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> verifier =
        pki::ChainVerifier::CreatePathOnly(*roots);
    if (!verifier.ok()) {
      return UsageError(absl::StrCat("--bundle: ", verifier.status().message()));
    }
    absl::Status s = (*verifier)->VerifyChainPath(*chain, role, at);
    if (s.ok() && profile == "svid-shape") {
      s = pki::CheckSvidLeafShape((*chain)[0].get());
    }
    if (!s.ok()) {
      return fail(s.message());
    }
    std::printf(profile == "path" ? "OK (certification path)\n"
                                  : "OK (certification path, X.509-SVID leaf shape)\n");
    return 0;
  }
  // The trust domain: from --spiffe-id, else the bundle's spiffe:// URI, else the leaf's.
  std::optional<pki::SpiffeId> expected;
  std::string trust_domain;
  if (std::optional<std::string> id = flags.Get("spiffe-id")) {
    absl::StatusOr<pki::SpiffeId> parsed = pki::SpiffeId::Parse(*id);
    if (!parsed.ok()) {
      return UsageError(absl::StrCat("--spiffe-id: ", parsed.status().message()));
    }
    expected = *parsed;
    trust_domain = std::string(parsed->trust_domain());
  }
  for (const std::vector<pki::Certificate>* source : {&*roots, &*chain}) {
    for (const pki::Certificate& c : *source) {
      for (const std::string& uri : c.UriSans()) {
        if (absl::StatusOr<pki::SpiffeId> id = pki::SpiffeId::Parse(uri);
            trust_domain.empty() && id.ok()) {
          trust_domain = std::string(id->trust_domain());
        }
      }
    }
  }
  if (trust_domain.empty()) {
    return UsageError("cannot tell the trust domain from the files; give --spiffe-id");
  }
  absl::StatusOr<std::shared_ptr<const pki::ChainVerifier>> verifier =
      pki::ChainVerifier::Create(trust_domain, *roots);
  if (!verifier.ok()) {
    return UsageError(absl::StrCat("--bundle: ", verifier.status().message()));
  }
  absl::StatusOr<pki::SpiffeId> id = (*verifier)->VerifyChain(*chain, role, at);
  if (!id.ok()) {
    return fail(id.status().message());
  }
  if (expected.has_value() && !(*id == *expected)) {
    return fail(absl::StrCat("the certificate is for ", id->str(), ", not ", expected->str()));
  }
  std::printf("OK %s\n", id->str().c_str());
  return 0;
}

// LoadCaDirConfig loads --config for a command on the CA directory; --ca-dir replaces ca.dir
// (for a copy of a Kubernetes Secret's files, or a config that loads its CA from files).
absl::StatusOr<certmgr::CertmgrConfig> LoadCaDirConfig(const base::Flags& flags,
                                                       absl::string_view command) {
  std::optional<std::string> config_path = flags.Get("config");
  if (!config_path) {
    return absl::InvalidArgumentError(absl::StrCat(command, " needs --config"));
  }
  absl::StatusOr<certmgr::CertmgrConfig> config = LoadConfig(*config_path);
  if (!config.ok()) {
    return config.status();
  }
  if (std::optional<std::string> dir = flags.Get("ca-dir")) {
    if (dir->empty()) {
      return absl::InvalidArgumentError("--ca-dir must not be empty");
    }
    config->ca_dir = *dir;
  }
  if (config->ca_dir.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        command, " works on ca.dir; this config loads its CA from files (give --ca-dir)"));
  }
  return config;
}

int CaInit(const base::Flags& flags) {
  absl::StatusOr<certmgr::CertmgrConfig> config = LoadCaDirConfig(flags, "ca init");
  if (!config.ok()) {
    return UsageError(config.status().message());
  }
  absl::StatusOr<certmgr::CaMaterial> ca = certmgr::LoadOrCreateCaInDir(
      config->ca_dir, config->trust_domain, config->ca_ttl, base::RealClock::Get());
  if (!ca.ok()) {
    std::fprintf(stderr, "meshtls-certmgr: ca init: %s\n",
                 std::string(ca.status().message()).c_str());
    return 1;
  }
  std::printf("ca init: %s holds root %s (sha256 %s, not after %s)\n", config->ca_dir.c_str(),
              ca->cert.SubjectText().c_str(), ca->cert.Sha256Fingerprint().c_str(),
              absl::FormatTime(ca->cert.not_after()).c_str());
  return 0;
}

int CaRotate(const base::Flags& flags, const std::string& step_name) {
  absl::StatusOr<certmgr::CertmgrConfig> config = LoadCaDirConfig(flags, "ca rotate");
  if (!config.ok()) {
    return UsageError(config.status().message());
  }
  certmgr::CaRotationStep step;
  if (step_name == "prepare") {
    step = certmgr::CaRotationStep::kPrepare;
  } else if (step_name == "activate") {
    step = certmgr::CaRotationStep::kActivate;
  } else if (step_name == "retire") {
    step = certmgr::CaRotationStep::kRetire;
  } else {
    return UsageError("ca rotate takes prepare, activate or retire");
  }
  absl::Status s = certmgr::RotateCa(config->ca_dir, config->trust_domain, step, config->ca_ttl,
                                     config->issuance.max_ttl + config->issuance.backdate,
                                     flags.Has("force"), base::RealClock::Get());
  if (!s.ok()) {
    std::fprintf(stderr, "meshtls-certmgr: ca rotate %s: %s\n", step_name.c_str(),
                 std::string(s.message()).c_str());
    return 1;
  }
  std::printf("ca rotate %s: done\n", step_name.c_str());
  return 0;
}

int Serve(const base::Flags& flags) {
  auto config_flag = flags.values.find("config");
  if (config_flag == flags.values.end()) {
    return UsageError("--config is required (see --help)");
  }
  const std::string bound_ports_file = flags.Get("bound-ports-file").value_or("");
  if (flags.Has("bound-ports-file") && bound_ports_file.empty()) {
    return UsageError("--bound-ports-file needs a path");
  }
  absl::StatusOr<certmgr::CertmgrConfig> config = LoadConfig(config_flag->second);
  if (!config.ok()) {
    return UsageError(config.status().message());
  }
  if (auto it = flags.values.find("log-level"); it != flags.values.end()) {
    absl::StatusOr<base::LogLevel> level = base::ParseLogLevel(it->second);
    if (!level.ok()) {
      return UsageError(absl::StrCat("--log-level: ", level.status().message()));
    }
    config->log.level = *level;
  }
  if (flags.Has("check")) {
    std::puts("configuration is valid");
    return 0;
  }
  base::SetLogOptions(config->log.level, config->log.format);
  base::RouteGrpcLogs();

  // Block the stop signals before any thread starts, so only sigwait() below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<certmgr::CertmgrServer>> server = certmgr::CertmgrServer::Create(
      *config, base::RealClock::Get(), config_flag->second, bound_ports_file);
  if (!server.ok()) {
    base::LogError("certmgr failed to start", {{"error", std::string(server.status().message())}});
    return absl::IsInvalidArgument(server.status()) ? 2 : 1;
  }
  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 && signal_number == SIGHUP) {
    base::LogInfo("SIGHUP: reloading the config file");
    (*server)->ReloadConfig();
  }
  base::LogInfo("stopping", {{"signal", strsignal(signal_number)}});
  (*server)->Shutdown();
  return 0;
}

// The most `inject` reads, all inputs together: far above any set of manifests, and a bound
// on what a runaway pipe can cost.
constexpr size_t kMaxManifestBytes = 64 << 20;

absl::StatusOr<std::string> ReadStdin(size_t max_bytes) {
  std::string text;
  char buffer[65536];
  while (true) {
    const size_t n = std::fread(buffer, 1, sizeof(buffer), stdin);
    text.append(buffer, n);
    if (text.size() > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stdin: more than ", max_bytes >> 20, " MiB of manifests"));
    }
    if (n < sizeof(buffer)) {
      if (std::ferror(stdin)) {
        return absl::InternalError("stdin: read error");
      }
      return text;
    }
  }
}

int Inject(const base::Flags& flags) {
  inject::MeshSettings mesh;
  if (std::optional<std::string> path = flags.Get("config")) {
    absl::StatusOr<certmgr::CertmgrConfig> config = LoadConfig(*path);
    if (!config.ok()) {
      return UsageError(config.status().message());
    }
    mesh = config->injection;
  }
  std::vector<std::string> inputs = flags.words;
  if (inputs.empty()) {
    inputs.push_back("-");
  }
  std::vector<config::YamlNode> documents;
  size_t total = 0;
  for (const std::string& input : inputs) {
    absl::StatusOr<std::string> text =
        input == "-" ? ReadStdin(kMaxManifestBytes - total)
                     : base::ReadFileToString(input, kMaxManifestBytes - total);
    if (!text.ok()) {
      std::fprintf(stderr, "meshtls-certmgr inject: %s\n",
                   std::string(text.status().message()).c_str());
      return 1;
    }
    total += text->size();
    absl::StatusOr<std::vector<config::YamlNode>> parsed =
        config::ParseYamlStream(*text, kMaxManifestBytes);
    absl::StatusOr<inject::ManifestResult> result =
        parsed.ok() ? inject::InjectManifests(mesh, *parsed) : parsed.status();
    if (!result.ok()) {
      std::fprintf(stderr, "meshtls-certmgr inject: %s: %s\n",
                   input == "-" ? "stdin" : input.c_str(),
                   std::string(result.status().message()).c_str());
      return 1;
    }
    std::fprintf(stderr,
                 "%s: %d pod templates injected, %d already injected, %d opted out; %d other "
                 "objects as they were\n",
                 input == "-" ? "stdin" : input.c_str(), result->injected, result->already_injected,
                 result->opted_out, result->other);
    for (config::YamlNode& d : *parsed) {
      documents.push_back(std::move(d));
    }
  }
  absl::StatusOr<std::string> out = config::EmitYaml(documents);
  if (!out.ok()) {
    std::fprintf(stderr, "meshtls-certmgr inject: %s\n",
                 std::string(out.status().message()).c_str());
    return 1;
  }
  if (std::fwrite(out->data(), 1, out->size(), stdout) != out->size() || std::fflush(stdout) != 0) {
    std::fprintf(stderr, "meshtls-certmgr inject: writing stdout failed\n");
    return 1;
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
  const std::string command = parsed->command->name();
  if (flags.Has("help")) {
    std::fputs(parsed->named ? base::CommandHelp(command_line, *parsed->command).c_str()
                             : base::OverviewHelp(command_line).c_str(),
               stdout);
    return 0;
  }
  if (flags.Has("version")) {
    std::puts("meshtls-certmgr 0.1.0");
    return 0;
  }
  if (command == "serve") {
    return Serve(flags);
  }
  if (command == "ca init") {
    return CaInit(flags);
  }
  if (command == "ca rotate") {
    return CaRotate(flags, flags.words[0]);
  }
  if (command == "inject") {
    return Inject(flags);
  }
  if (command == "verify") {
    return Verify(flags);
  }
  if (command == "token create") {
    return TokenCreate(flags);
  }
  // Unreachable: every command of CommandLine() is dispatched above.
  std::fprintf(stderr, "meshtls-certmgr: command \"%s\" has no implementation\n", command.c_str());
  return 1;
}

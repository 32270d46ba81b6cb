#include "tests/testing/mesh_processes.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/base/file.h"
#include "common/base/status_macros.h"
#include "tests/testing/netns.h"

namespace meshtls::testing {

absl::StatusOr<std::unique_ptr<CertmgrProcess>> CertmgrProcess::Start(
    const TempDir& dir, const std::string& trust_domain, CertmgrOptions options) {
  auto c = std::unique_ptr<CertmgrProcess>(new CertmgrProcess(dir));
  if (options.ca_dir.empty()) {
    options.ca_dir = dir.File("ca");
  }
  c->trust_domain_ = trust_domain;
  c->options_ = std::move(options);
  if (absl::Status s = c->WriteConfig(); !s.ok()) {
    return s;
  }
  if (absl::Status s = c->Launch(); !s.ok()) {
    return s;
  }
  return c;
}

absl::StatusOr<std::unique_ptr<CertmgrProcess>> CertmgrProcess::StartReplica(
    const std::string& name) const {
  CertmgrOptions options = options_;
  options.name = name;
  return Start(dir_, trust_domain_, std::move(options));
}

std::string CertmgrProcess::SidecarIdentityYaml(const std::string& token_file) const {
  return absl::StrCat("identity:\n  certmgr:\n    address: ", address(),
                      "\n    server_ca: ", ca_pem_path(), "\n    token_file: ", token_file, "\n");
}

absl::StatusOr<std::string> CertmgrProcess::PodIdentityYaml(const TempDir& dir,
                                                            const std::string& spiffe_id,
                                                            uint32_t uid) const {
  const std::string token = Token(spiffe_id);
  if (token.empty()) {
    return absl::InternalError(absl::StrCat("no join token for ", spiffe_id));
  }
  absl::StatusOr<std::string> ca = base::ReadFileToString(ca_pem_path());
  if (!ca.ok()) {
    return ca.status();
  }
  const std::string token_file = dir.Write("token", token, 0600);
  const std::string ca_file = dir.Write("certmgr-ca.pem", *ca);
  MESHTLS_RETURN_IF_ERROR(GiveToUser(dir.path(), uid));
  return absl::StrCat("identity:\n  certmgr:\n    address: ", address(),
                      "\n    server_ca: ", ca_file, "\n    token_file: ", token_file, "\n");
}

absl::Status CertmgrProcess::OnHost(const std::function<void()>& fn) const {
  if (options_.netns.empty()) {
    fn();
    return absl::OkStatus();
  }
  return InNetns(options_.netns, fn);
}

absl::Status CertmgrProcess::WriteConfig() {
  // Sidecars verify certmgr's serving certificate against the address they dial.
  const std::string server_ips =
      options_.listen_ip == "127.0.0.1"
          ? ""
          : absl::StrCat("\nserver_ips: [127.0.0.1, \"::1\", ", options_.listen_ip, "]");
  config_path_ = dir_.Write(
      options_.name + ".yaml",
      absl::StrCat("trust_domain: ", trust_domain_, "\nlisten: ", options_.listen_ip, ":0",
                   server_ips, "\nadmin: {listen: 127.0.0.1:0}\nca: {dir: ", options_.ca_dir,
                   options_.ca_extra, "}\nauthenticators:\n  join_tokens: {file: ",
                   dir_.File("join-tokens"), "}\n", options_.extra_yaml));
  return base::FileExists(config_path_)
             ? absl::OkStatus()
             : absl::InternalError(absl::StrCat("cannot write ", config_path_));
}

absl::Status CertmgrProcess::PinPortsInConfig() {
  // The test may have edited the file since (RewriteConfig-style); only the two port-0 listen
  // lines change.
  absl::StatusOr<std::string> text = base::ReadFileToString(config_path_);
  if (!text.ok()) {
    return text.status();
  }
  const std::string grpc_line =
      absl::StrCat("\nlisten: ", options_.listen_ip, ":", grpc_port_, "\n");
  // Without newlines of its own: the listen line before it ends with the one they share.
  const std::string admin_line = absl::StrCat("admin: {listen: 127.0.0.1:", admin_port_, "}");
  absl::StrReplaceAll({{absl::StrCat("\nlisten: ", options_.listen_ip, ":0\n"), grpc_line},
                       {"admin: {listen: 127.0.0.1:0}", admin_line}},
                      &*text);
  // Pinned now or at an earlier restart; anything else would restart on other ports than the
  // ones the sidecars have.
  if (!absl::StrContains(*text, grpc_line) || !absl::StrContains(*text, admin_line)) {
    return absl::InternalError(
        absl::StrCat(config_path_, ": cannot pin the listen addresses to ports ", grpc_port_,
                     " and ", admin_port_, " (the test changed those lines)"));
  }
  return base::WriteFileAtomically(config_path_, *text, 0644);
}

absl::Status CertmgrProcess::Launch() {
  ++launches_;
  const std::string ports_path = dir_.File(absl::StrCat(options_.name, ".", launches_, ".ports"));
  ::unlink(ports_path.c_str());  // an earlier certmgr of this name in the same directory
  std::vector<std::string> argv = options_.launcher;
  if (!options_.image.empty()) {
    const std::vector<std::string> podman = PodmanRun(options_.netns);
    argv.insert(argv.end(), podman.begin(), podman.end());
    argv.insert(argv.end(), {"--user", "0:0", "-v", dir_.path() + ":" + dir_.path()});
    if (!absl::StartsWith(options_.ca_dir, dir_.path() + "/")) {
      argv.insert(argv.end(), {"-v", options_.ca_dir + ":" + options_.ca_dir});
    }
    argv.insert(argv.end(), {"--entrypoint", "/usr/local/bin/meshtls-certmgr", options_.image});
  } else {
    if (!options_.netns.empty()) {
      const std::vector<std::string> in_netns = NetnsLauncher(options_.netns);
      argv.insert(argv.end(), in_netns.begin(), in_netns.end());
    }
    argv.push_back(BinaryPath("meshtls-certmgr"));
  }
  argv.insert(argv.end(), {"--config", config_path_, "--bound-ports-file", ports_path});
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Start(
      std::move(argv), dir_.File(absl::StrCat(options_.name, ".", launches_, ".log")));
  if (!p.ok()) {
    return p.status();
  }
  process_ = *std::move(p);
  absl::StatusOr<BoundPorts> ports = WaitForBoundPorts(*process_, ports_path);
  if (!ports.ok()) {
    return absl::Status(ports.status().code(),
                        absl::StrCat("certmgr ", options_.name, ": ", ports.status().message()));
  }
  if (ports->count("grpc") == 0 || ports->count("admin") == 0) {
    return absl::InternalError(
        absl::StrCat("certmgr ", options_.name, " reported no grpc or admin port in ", ports_path));
  }
  grpc_port_ = ports->at("grpc");
  admin_port_ = ports->at("admin");
  const uint16_t admin = admin_port_;
  if (!WaitFor(
          [&] {
            absl::StatusOr<HttpResult> r = absl::UnknownError("not asked");
            absl::Status in = OnHost([&] { r = HttpGet(admin, "/readyz", absl::Seconds(1)); });
            return in.ok() && r.ok() && r->status == 200;
          },
          absl::Seconds(20))) {
    return absl::UnavailableError(absl::StrCat("certmgr not ready:\n", process_->Log()));
  }
  return absl::OkStatus();
}

void CertmgrProcess::Stop() {
  process_.reset();  // SIGTERM, and the test fails unless it exits 0
  HoldPorts();
}

void CertmgrProcess::HoldPorts() {
  // Sidecars still have this certmgr's address: while it is down, no other test running in
  // parallel may be handed its ports (its clients would reach a stranger, and Restart could not
  // bind them again).
  uint16_t grpc = grpc_port_;
  uint16_t admin = admin_port_;
  (void)OnHost([&] {
    if (!grpc_hold_.valid()) {
      grpc_hold_ = ReserveLoopbackPort(&grpc, options_.listen_ip);
    }
    if (!admin_hold_.valid()) {
      admin_hold_ = ReserveLoopbackPort(&admin);
    }
  });
  if (!grpc_hold_.valid() || !admin_hold_.valid()) {
    ADD_FAILURE() << "cannot hold certmgr's ports " << grpc_port_ << " and " << admin_port_
                  << " while it is down";
  }
}

absl::Status CertmgrProcess::Restart() {
  process_.reset();
  HoldPorts();
  // Sidecars were configured with this certmgr's address: keep its ports.
  if (absl::Status s = PinPortsInConfig(); !s.ok()) {
    return s;
  }
  grpc_hold_.reset();
  admin_hold_.reset();
  return Launch();
}

std::string CertmgrProcess::Token(const std::string& spiffe_id) const {
  const std::string out = dir_.File("token-create.out");
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start({BinaryPath("meshtls-certmgr"), "token", "create", "--config", config_path_,
                         "--spiffe-id", spiffe_id},
                        out);
  if (!p.ok() || (*p)->WaitForExit(absl::Seconds(10)) != 0) {
    return "";
  }
  // The log holds stdout (the token) and stderr (its expiry).
  for (absl::string_view line : absl::StrSplit(*base::ReadFileToString(out), '\n')) {
    if (absl::StartsWith(line, "mjt_")) {
      return std::string(absl::StripAsciiWhitespace(line));
    }
  }
  return "";
}

int CertmgrProcess::Run(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {BinaryPath("meshtls-certmgr")};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--config");
  argv.push_back(config_path_);
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start(argv, dir_.File("certmgr-cli.log"));
  if (!p.ok()) {
    return -1;
  }
  return (*p)->WaitForExit(absl::Seconds(20)).value_or(-1);
}

std::string CertmgrProcess::TokenFile(const std::string& spiffe_id, const std::string& name) const {
  return dir_.Write(name, Token(spiffe_id), 0600);
}

absl::StatusOr<std::unique_ptr<SidecarProcess>> SidecarProcess::Start(
    const TempDir& dir, const std::string& name, const std::string& yaml,
    const std::vector<std::string>& extra_args, const std::vector<std::string>& launcher,
    const std::string& netns) {
  auto s = std::unique_ptr<SidecarProcess>(new SidecarProcess());
  s->netns_ = netns;
  // Every listener the YAML gives port 0 and the admin listener get their ports from the
  // kernel; the sidecar reports them in the bound-ports file. A pod's sidecar has a fixed admin
  // port of its own in the YAML.
  const bool has_admin = absl::StartsWith(yaml, "admin:") || absl::StrContains(yaml, "\nadmin:");
  const std::string config = dir.Write(
      name + ".yaml", has_admin ? yaml : absl::StrCat(yaml, "\nadmin: {listen: 127.0.0.1:0}\n"));
  const std::string ports_path = dir.File(name + ".ports");
  // A sidecar of the same name may have run before (a restart): its ports are not this one's.
  ::unlink(ports_path.c_str());
  // Two workers unless the YAML sets its own count (the flag would override it): tests see
  // the multi-worker paths on any machine.
  std::vector<std::string> argv = {BinaryPath("meshtls-sidecar"), "--config", config,
                                   "--bound-ports-file", ports_path};
  if (!absl::StartsWith(yaml, "workers:") && !absl::StrContains(yaml, "\nworkers:")) {
    argv.insert(argv.end(), {"--workers", "2"});
  }
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  argv.insert(argv.begin(), launcher.begin(), launcher.end());
  absl::StatusOr<std::unique_ptr<Subprocess>> p =
      Subprocess::Start(std::move(argv), dir.File(name + ".log"));
  if (!p.ok()) {
    return p.status();
  }
  s->process_ = *std::move(p);
  absl::StatusOr<BoundPorts> ports = WaitForBoundPorts(*s->process_, ports_path);
  if (!ports.ok()) {
    return absl::Status(ports.status().code(),
                        absl::StrCat("sidecar ", name, ": ", ports.status().message()));
  }
  s->ports_ = *std::move(ports);
  s->admin_port_ = s->port("admin");
  return s;
}

uint16_t SidecarProcess::port(const std::string& listener) const {
  auto it = ports_.find(listener);
  if (it == ports_.end()) {
    ADD_FAILURE() << "the sidecar reported no listener \"" << listener << "\"";
    return 0;
  }
  return it->second;
}

absl::StatusOr<HttpResult> SidecarProcess::AdminGet(absl::string_view path,
                                                    absl::Duration timeout) const {
  if (netns_.empty()) {
    return HttpGet(admin_port_, path, timeout);
  }
  absl::StatusOr<HttpResult> r = absl::UnknownError("not asked");
  if (absl::Status in = InNetns(netns_, [&] { r = HttpGet(admin_port_, path, timeout); });
      !in.ok()) {
    return in;
  }
  return r;
}

double SidecarProcess::Metric(const std::string& series) const {
  absl::StatusOr<HttpResult> r = AdminGet("/metrics");
  if (!r.ok() || r->status != 200) {
    return -1;
  }
  return MetricValue(r->body, series).value_or(-1);
}

bool SidecarProcess::WaitReady(absl::Duration timeout) {
  return WaitFor(
      [this] {
        absl::StatusOr<HttpResult> r = AdminGet("/readyz", absl::Seconds(1));
        return r.ok() && r->status == 200;
      },
      timeout);
}

bool SidecarProcess::WaitForMetric(const std::string& series, double value,
                                   absl::Duration timeout) const {
  return WaitFor([&] { return Metric(series) >= value; }, timeout);
}

std::string SidecarProcess::ServedSerial() const {
  absl::StatusOr<HttpResult> r = AdminGet("/certs");
  if (!r.ok()) {
    return "";
  }
  const std::string kKey = "\"serial\":\"";
  size_t at = r->body.find(kKey);
  if (at == std::string::npos) {
    return "";
  }
  at += kKey.size();
  return r->body.substr(at, r->body.find('"', at) - at);
}

std::string FilesConfigHead(const TempDir& dir, const std::string& name, const IssuedLeaf& leaf,
                            const std::string& bundle_path) {
  return absl::StrCat("trust_domain: mesh.test\nidentity:\n  files:\n    cert: ",
                      dir.Write(name + ".crt", leaf.ChainPem()),
                      "\n    key: ", dir.Write(name + ".key", leaf.KeyPem(), 0600),
                      "\n    trust_bundle: ", bundle_path, "\n");
}

std::string Handshakes(const std::string& direction, const std::string& result) {
  return absl::StrCat("meshtls_tls_handshakes_total{direction=\"", direction, "\",result=\"",
                      result, "\"}");
}

std::string HandshakeCount(const std::string& direction, bool resumed) {
  return absl::StrCat("meshtls_tls_handshake_duration_seconds_count{direction=\"", direction,
                      "\",resumed=\"", resumed ? "true" : "false", "\"}");
}

}  // namespace meshtls::testing

// Every configuration example users are shown (fenced ```yaml blocks of README.md, docs/ and
// deploy/, deploy/'s config files, the fuzz corpus) read by the sidecar and the certmgr loader,
// each result recorded field by field in testdata/examples.golden. The golden file was recorded
// while the hand-written loaders still existed, and they read every example (and every example with
// any one line removed) to the same values; a change to it is a change of what users' files mean.
// Regenerate after an intended change with
//   MESHTLS_UPDATE_GOLDEN=1 build/tests/config_examples_test
// and review the diff.

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "certmgr/server/certmgr_config.h"
#include "sidecar/config/sidecar_config.h"

namespace meshtls {
namespace {

namespace fs = std::filesystem;

struct Example {
  std::string name;  // where it comes from, relative to the source tree
  std::string yaml;
};

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Relative(const fs::path& path) {
  return fs::relative(path, MESHTLS_SOURCE_DIR).generic_string();
}

// FencedYamlBlocks returns the ```yaml blocks of a Markdown file.
void AddFencedYamlBlocks(const fs::path& md, std::vector<Example>& out) {
  std::vector<std::string> lines = absl::StrSplit(ReadFile(md), '\n');
  int n = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (absl::StripAsciiWhitespace(lines[i]) != "```yaml") {
      continue;
    }
    std::string block;
    for (++i; i < lines.size() && absl::StripAsciiWhitespace(lines[i]) != "```"; ++i) {
      absl::StrAppend(&block, lines[i], "\n");
    }
    out.push_back({absl::StrCat(Relative(md), " block ", ++n), block});
  }
}

std::vector<fs::path> SortedFiles(const fs::path& dir, bool recursive) {
  std::vector<fs::path> files;
  if (recursive) {
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<Example> FindExamples() {
  const fs::path root = MESHTLS_SOURCE_DIR;
  std::vector<Example> out;
  AddFencedYamlBlocks(root / "README.md", out);
  for (const char* dir : {"docs", "deploy"}) {
    for (const fs::path& f : SortedFiles(root / dir, /*recursive=*/true)) {
      if (f.extension() == ".md") {
        AddFencedYamlBlocks(f, out);
      }
    }
  }
  // deploy/'s config files (the ConfigMaps' sources): YAML with a top-level trust_domain.
  for (const fs::path& f : SortedFiles(root / "deploy", /*recursive=*/true)) {
    const std::string text = ReadFile(f);
    if (f.extension() == ".yaml" &&
        (absl::StartsWith(text, "trust_domain:") || absl::StrContains(text, "\ntrust_domain:"))) {
      out.push_back({Relative(f), text});
    }
  }
  for (const fs::path& f : SortedFiles(root / "tests/fuzz/config_corpus", /*recursive=*/false)) {
    out.push_back({Relative(f), ReadFile(f)});
  }
  return out;
}

std::string Durations(std::initializer_list<absl::Duration> ds) {
  std::vector<std::string> out;
  for (absl::Duration d : ds) out.push_back(absl::FormatDuration(d));
  return absl::StrJoin(out, " ");
}

std::string Dump(const sidecar::ListenerConfig& l) {
  return absl::StrCat("{name=", l.name, " listen=", l.listen.ToString(),
                      " target=", l.target.ToString(), " peers=[", absl::StrJoin(l.peers, ","),
                      "]", l.transport == sidecar::Transport::kPooled ? " transport=pooled" : "",
                      "}");
}

std::string Dump(const absl::StatusOr<sidecar::SidecarConfig>& c) {
  if (!c.ok()) return absl::StrCat("error: ", c.status().message(), "\n");
  std::string out;
  absl::StrAppend(&out, "trust_domain=", c->trust_domain,
                  " identity_mode=", static_cast<int>(c->identity_mode), "\n");
  absl::StrAppend(&out, "certmgr: addresses=[", absl::StrJoin(c->certmgr.addresses, ","),
                  "] server_ca=", c->certmgr.server_ca, " token_file=", c->certmgr.token_file,
                  " renew_at=", c->certmgr.renew_at, "\n");
  absl::StrAppend(&out, "files: ", c->files.cert, " ", c->files.key, " ", c->files.trust_bundle,
                  " expected_identity=", c->expected_identity, "\n");
  for (const auto& l : c->inbound) absl::StrAppend(&out, "inbound ", Dump(l), "\n");
  for (const auto& l : c->outbound) absl::StrAppend(&out, "outbound ", Dump(l), "\n");
  absl::StrAppend(&out, "admin=", c->admin_listen, " workers=", c->workers, "\n");
  absl::StrAppend(&out, "tls: ", c->tls.min_version, " ", c->tls.session_resumption, " ",
                  c->tls.close_on_expiry, "\n");
  absl::StrAppend(&out, "limits: ",
                  Durations({c->limits.handshake_timeout, c->limits.idle_timeout,
                             c->limits.connect_timeout, c->limits.drain_timeout}),
                  " ", c->limits.max_connections, "\n");
  std::vector<std::string> servers;
  for (const auto& s : c->dns.servers) servers.push_back(s.ToString());
  absl::StrAppend(&out, "dns: [", absl::StrJoin(servers, ","), "] ",
                  Durations({c->dns.max_ttl, c->dns.negative_ttl}), "\n");
  absl::StrAppend(&out, "log: ", static_cast<int>(c->log.level), " ",
                  static_cast<int>(c->log.format), "\n");
  absl::StrAppend(&out, "pooled: ", c->pooled.max_streams_per_connection, " ",
                  c->pooled.max_connections_per_peer, " ",
                  Durations({c->pooled.idle_timeout, c->pooled.keepalive_interval,
                             c->pooled.keepalive_timeout}),
                  "\n");
  const sidecar::TransparentConfig& t = c->transparent;
  if (t.enabled()) {
    auto networks = [](const std::vector<net::Cidr>& list) {
      return absl::StrJoin(
          list, ",", [](std::string* o, const net::Cidr& n) { absl::StrAppend(o, n.ToString()); });
    };
    absl::StrAppend(&out, "transparent: proxy_uid=", t.proxy_uid, "\n");
    if (t.outbound.enabled) {
      absl::StrAppend(&out, "  outbound port=", t.outbound.port, " exclude_ports=[",
                      absl::StrJoin(t.outbound.exclude_ports, ","), "] exclude_networks=[",
                      networks(t.outbound.exclude_networks), "]\n");
      for (const auto& r : t.outbound.rules) {
        absl::StrAppend(&out, "  rule ", r.name, " action=", static_cast<int>(r.action),
                        " networks=[", networks(r.networks), "] ports=[",
                        absl::StrJoin(r.ports, ","), "] expect=[", absl::StrJoin(r.expect, ","),
                        "]", r.transport == sidecar::Transport::kPooled ? " transport=pooled" : "",
                        "\n");
      }
    }
    if (t.inbound.enabled) {
      absl::StrAppend(&out, "  inbound port=", t.inbound.port, " exclude_ports=[",
                      absl::StrJoin(t.inbound.exclude_ports, ","), "]\n");
      std::vector<const sidecar::InboundPortPolicy*> policies = {&t.inbound.default_policy};
      for (const auto& p : t.inbound.ports) policies.push_back(&p);
      for (const auto* p : policies) {
        absl::StrAppend(&out, "  port ", p->port, " mode=", static_cast<int>(p->mode), " allow=[",
                        absl::StrJoin(p->allow, ","), "]\n");
      }
    }
  }
  return out;
}

std::string Dump(const absl::StatusOr<certmgr::CertmgrConfig>& c) {
  if (!c.ok()) return absl::StrCat("error: ", c.status().message(), "\n");
  std::string out;
  absl::StrAppend(&out, "trust_domain=", c->trust_domain, " listen=", c->listen,
                  " admin=", c->admin_listen, "\n");
  absl::StrAppend(&out, "server_names=[", absl::StrJoin(c->server_names, ","), "] server_ips=[",
                  absl::StrJoin(c->server_ips, ","), "]\n");
  absl::StrAppend(&out, "ca: dir=", c->ca_dir, " cert=", c->ca_cert, " key=", c->ca_key,
                  " trust_bundle=", c->ca_trust_bundle, " ttl=", absl::FormatDuration(c->ca_ttl),
                  "\n");
  absl::StrAppend(&out, "rotation: ", c->rotation_auto, " ", c->rotation_prepare_at, " ",
                  c->rotation_activate_at, "\n");
  absl::StrAppend(&out, "issuance: ",
                  Durations({c->issuance.default_ttl, c->issuance.max_ttl, c->issuance.min_ttl,
                             c->issuance.backdate}),
                  "\n");
  absl::StrAppend(&out, "join_tokens=", c->join_tokens_file, "\n");
  const auto& k = c->kubernetes;
  absl::StrAppend(&out, "kubernetes: ", k.enabled, " issuer=", k.issuer, " audience=", k.audience,
                  " jwks=", k.jwks_file, " namespaces=[", absl::StrJoin(k.allowed_namespaces, ","),
                  "] max_token_lifetime=", absl::FormatDuration(k.max_token_lifetime),
                  " pod_binding=", k.require_pod_binding, "\n");
  absl::StrAppend(&out, "deny=[", absl::StrJoin(c->deny, ","), "]\n");
  absl::StrAppend(&out, "limits: ", c->max_watchers, " ", c->max_watchers_per_address, "\n");
  const auto& in = c->injection;
  absl::StrAppend(&out, "injection: image=", in.image, " pull=", in.image_pull_policy,
                  " certmgr=", in.certmgr_address, " bundle=", in.ca_bundle_config_map,
                  " audience=", in.token_audience, " uid=", in.proxy_uid, " mode=", in.inbound_mode,
                  " allow=[", absl::StrJoin(in.inbound_allow, ","), "] mesh=[",
                  absl::StrJoin(in.mesh_networks, ","), "] other=", in.other_destinations,
                  " exclude_networks=[", absl::StrJoin(in.exclude_outbound_networks, ","),
                  "] exclude_ports=[", absl::StrJoin(in.exclude_outbound_ports, ","), "]\n");
  const auto& w = c->webhook;
  absl::StrAppend(&out, "webhook: listen=", w.listen, " names=[",
                  absl::StrJoin(w.server_names, ","), "] max_bytes=", w.max_request_bytes,
                  " timeout=", absl::FormatDuration(w.request_timeout),
                  " connections=", w.max_connections, "/", w.max_connections_per_address, "\n");
  absl::StrAppend(&out, "log: ", static_cast<int>(c->log.level), " ",
                  static_cast<int>(c->log.format), "\n");
  return out;
}

TEST(ConfigExamplesTest, EveryExampleReadsAsRecorded) {
  const std::vector<Example> examples = FindExamples();
  std::string golden;
  int sidecar_ok = 0;
  int certmgr_ok = 0;
  for (const Example& e : examples) {
    const std::string sidecar = Dump(sidecar::ParseSidecarConfig(e.yaml, /*check_files=*/false));
    const std::string certmgr = Dump(certmgr::ParseCertmgrConfig(e.yaml));
    sidecar_ok += absl::StartsWith(sidecar, "error: ") ? 0 : 1;
    certmgr_ok += absl::StartsWith(certmgr, "error: ") ? 0 : 1;
    absl::StrAppend(&golden, "=== ", e.name, "\n--- sidecar\n", sidecar, "--- certmgr\n", certmgr);
  }
  // The examples are found where they live: a move must not quietly empty this test.
  EXPECT_GE(sidecar_ok, 4);
  EXPECT_GE(certmgr_ok, 3);
  const fs::path path =
      fs::path(MESHTLS_SOURCE_DIR) / "tests/unit/common/config/testdata/examples.golden";
  if (std::getenv("MESHTLS_UPDATE_GOLDEN") != nullptr) {
    std::ofstream(path, std::ios::binary) << golden;
  }
  EXPECT_EQ(golden, ReadFile(path)) << "regenerate with MESHTLS_UPDATE_GOLDEN=1 and review";
}

}  // namespace
}  // namespace meshtls

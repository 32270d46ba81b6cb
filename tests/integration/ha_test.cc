// certmgr as several replicas, as in Kubernetes: the real binaries on loopback, two certmgr
// processes over one CA directory, sidecars that know both and fail over between them.

#include <gtest/gtest.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/base/file.h"
#include "common/pki/csr.h"
#include "sidecar/identity/ca_client.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/traffic_load.h"

namespace meshtls {
namespace {

using testing::CertmgrOptions;
using testing::CertmgrProcess;
using testing::IsOk;
using testing::SidecarProcess;

constexpr char kTd[] = "mesh.test";
const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";
const std::string kRenewed = R"(meshtls_cert_renewals_total{result="success"})";
const std::string kRenewFailed = R"(meshtls_cert_renewals_total{result="failure"})";
const std::string kSigned = R"(meshtls_certmgr_sign_requests_total{result="success"})";

// TrustedRoots is every root certificate in a CA directory (active, next and previous), so a
// client trusts the replica's serving certificate on either side of a rotation step.
std::string TrustedRoots(const std::string& ca_dir) {
  std::string pem;
  for (const char* name : {"ca.pem", "next.pem", "previous.pem"}) {
    if (absl::StatusOr<std::string> p = base::ReadFileToString(ca_dir + "/" + name); p.ok()) {
      pem += *p;
    }
  }
  return pem;
}

// SignAt asks one replica (and only it) for a certificate with a join token.
absl::StatusOr<sidecar::SignedCredentials> SignAt(const CertmgrProcess& replica,
                                                  const std::string& token,
                                                  const std::string& ca_dir) {
  auto client = sidecar::NewGrpcCaClient({replica.address()}, TrustedRoots(ca_dir));
  return client->Sign(*pki::CreateCsrDer(*pki::PrivateKey::GenerateEcP256()),
                      {.chain = {}, .key = std::nullopt, .bearer_token = token}, absl::Seconds(10));
}

// ServesRoots polls until `replica` answers Sign with a bundle of `roots` roots.
bool ServesRoots(const CertmgrProcess& replica, const std::string& token, const std::string& ca_dir,
                 size_t roots) {
  return testing::WaitFor(
      [&] {
        absl::StatusOr<sidecar::SignedCredentials> r = SignAt(replica, token, ca_dir);
        return r.ok() && r->roots.size() == roots;
      },
      absl::Seconds(15));
}

class HaTest : public ::testing::Test {
 protected:
  // StartSidecars runs a backend sidecar in front of the echo app and a frontend sidecar with
  // an outbound listener to it, both given every replica's address.
  void StartSidecars(const std::vector<const CertmgrProcess*>& replicas, const std::string& extra) {
    std::string addresses;
    for (const CertmgrProcess* r : replicas) {
      absl::StrAppend(&addresses, addresses.empty() ? "" : ", ", r->address());
    }
    auto identity = [&](const std::string& id, const std::string& name) {
      return absl::StrCat("trust_domain: ", kTd, "\nidentity:\n  certmgr:\n    address: [",
                          addresses, "]\n    server_ca: ", replicas[0]->ca_pem_path(),
                          "\n    token_file: ", replicas[0]->TokenFile(id, name + ".token"), "\n");
    };
    // The backend first: the frontend's config names the backend's inbound port.
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_,
        SidecarProcess::Start(dir_, "backend",
                              absl::StrCat(identity(kBackend, "backend"),
                                           "inbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                           "\n    forward: 127.0.0.1:", app_.port(),
                                           "\n    allow: [", kFrontend, "]\n", extra)));
    backend_port_ = backend_->port("inbound.http");
    MESHTLS_ASSERT_OK_AND_MOVE(
        frontend_,
        SidecarProcess::Start(dir_, "frontend",
                              absl::StrCat(identity(kFrontend, "frontend"),
                                           "outbound:\n  - name: backend\n    listen: 127.0.0.1:0",
                                           "\n    connect: 127.0.0.1:", backend_port_,
                                           "\n    expect: [", kBackend, "]\n", extra)));
    frontend_port_ = frontend_->port("outbound.backend");
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
    ASSERT_TRUE(frontend_->WaitReady()) << frontend_->process().Log();
  }

  double Renewals() const { return frontend_->Metric(kRenewed) + backend_->Metric(kRenewed); }

  testing::TempDir dir_;
  testing::EchoServer app_;
  std::unique_ptr<SidecarProcess> backend_;
  std::unique_ptr<SidecarProcess> frontend_;
  uint16_t backend_port_ = 0;
  uint16_t frontend_port_ = 0;
};

TEST_F(HaTest, OneReplicaKilledTheOtherKeepsRenewingAndTrafficNeverFails) {
  // 3 s certificates renewed at half their life: each sidecar renews about every 1.5 s.
  // Automatic rotation off, so the one rotation step here is the test's.
  CertmgrOptions options;
  options.extra_yaml = "issuance: {default_ttl: 3s, min_ttl: 2s, backdate: 0}\n";
  options.ca_extra = ", rotation: {auto: false}";
  std::unique_ptr<CertmgrProcess> a, b;
  MESHTLS_ASSERT_OK_AND_MOVE(a, CertmgrProcess::Start(dir_, kTd, options));
  MESHTLS_ASSERT_OK_AND_MOVE(b, a->StartReplica("certmgr-b"));
  // Replicas share the CA material and nothing else: both sign for a token that either
  // created, under the same root.
  const std::string probe = a->Token("spiffe://mesh.test/ns/default/sa/probe");
  absl::StatusOr<sidecar::SignedCredentials> from_a = SignAt(*a, probe, dir_.File("ca"));
  absl::StatusOr<sidecar::SignedCredentials> from_b = SignAt(*b, probe, dir_.File("ca"));
  ASSERT_THAT(from_a, IsOk());
  ASSERT_THAT(from_b, IsOk());
  ASSERT_EQ(from_a->roots.size(), 1u);
  ASSERT_EQ(from_b->roots.size(), 1u);
  EXPECT_EQ(from_a->roots[0].Sha256Fingerprint(), from_b->roots[0].Sha256Fingerprint());

  StartSidecars({a.get(), b.get()}, "tls: {close_on_expiry: false}\n");
  testing::TrafficLoad load(frontend_port_, /*long_lived=*/3);
  // Both sidecars renew through replica a (the first address) for a while.
  ASSERT_TRUE(
      testing::WaitFor([&] { return load.failures() > 0 || Renewals() >= 6; }, absl::Seconds(30)));
  const double signed_by_a = testing::ScrapeMetric(a->admin_port(), kSigned);
  EXPECT_GE(signed_by_a, 6);

  // SIGKILL: no drain, no goodbye; its port now refuses connections (held, so that no test
  // running beside this one is handed it while the sidecars still try it first).
  a->process().Signal(SIGKILL);
  ASSERT_EQ(a->process().WaitForExit(absl::Seconds(10)), 128 + SIGKILL);
  a->HoldPorts();
  const double signed_by_b = testing::ScrapeMetric(b->admin_port(), kSigned);
  const double renewals_at_kill = Renewals();
  // Replica b signs every renewal from now on, within each renewal's own attempt.
  const bool renewed =
      testing::WaitFor([&] { return load.failures() > 0 || Renewals() >= renewals_at_kill + 10; },
                       absl::Seconds(60));
  EXPECT_TRUE(renewed) << "renewals after the kill: " << Renewals() - renewals_at_kill;
  EXPECT_GE(testing::ScrapeMetric(b->admin_port(), kSigned), signed_by_b + 10);

  // The trust-bundle streams moved to b too: a rotation step on the shared directory reaches
  // both sidecars through it.
  ASSERT_EQ(b->Run({"ca", "rotate", "prepare"}), 0);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return frontend_->Metric("meshtls_trust_bundle_roots") == 2 &&
               backend_->Metric("meshtls_trust_bundle_roots") == 2;
      },
      absl::Seconds(20)));

  const int before = load.new_connections();
  EXPECT_TRUE(
      testing::WaitFor([&] { return load.new_connections() > before + 20; }, absl::Seconds(20)));
  load.Stop();
  std::printf("HA: %.0f renewals (%.0f after the kill), %d new connections, %llu bytes checked\n",
              Renewals(), Renewals() - renewals_at_kill, load.new_connections(),
              static_cast<unsigned long long>(load.bytes_checked()));
  EXPECT_EQ(load.failures(), 0) << load.first_failure();
  // Failover happens inside each renewal attempt: not one attempt failed.
  EXPECT_EQ(frontend_->Metric(kRenewFailed), 0);
  EXPECT_EQ(backend_->Metric(kRenewFailed), 0);
}

// KubeletSecretVolume lays out a directory the way kubelet's atomic writer projects a Secret:
// each version in its own hidden directory, `..data` pointing at the current one, and one
// symlink per key through `..data`. Update() swaps in a new version with one rename.
class KubeletSecretVolume {
 public:
  // The volume's directory is world-writable and sticky, as kubelet's tmpfs for a Secret is;
  // the container sees it read-only, and certmgr must accept that mode there.
  explicit KubeletSecretVolume(std::string path) : path_(std::move(path)) {
    ::mkdir(path_.c_str(), 0700);
    ::chmod(path_.c_str(), 01777);
  }
  const std::string& path() const { return path_; }

  // Update makes the regular files of `from` the Secret's new contents.
  void Update(const std::string& from) {
    namespace fs = std::filesystem;
    const std::string version = absl::StrCat("..version_", ++versions_);
    fs::create_directory(path_ + "/" + version);
    for (const fs::directory_entry& e : fs::directory_iterator(from)) {
      const std::string key = e.path().filename().string();
      if (!e.is_regular_file()) {
        continue;  // as `kubectl create secret --from-file=DIR` (which takes .lock too)
      }
      fs::copy_file(e.path(), path_ + "/" + version + "/" + key);
      const std::string link = path_ + "/" + key;
      if (!fs::is_symlink(link)) {
        fs::create_symlink("..data/" + key, link);
      }
    }
    fs::create_symlink(version, path_ + "/..data_tmp");
    fs::rename(path_ + "/..data_tmp", path_ + "/..data");  // the atomic swap
  }

 private:
  std::string path_;
  int versions_ = 0;
};

// OperatorScript runs deploy/kubernetes/ca.sh as an operator would, against a stand-in for the
// cluster's API (tests/deploy/fake-kubectl keeps Secrets and ConfigMaps as files).
class OperatorScript {
 public:
  OperatorScript(const testing::TempDir& dir, const std::string& trust_domain)
      : dir_(dir),
        kube_(dir.File("kube")),
        config_(dir.Write("operator.yaml", absl::StrCat("trust_domain: ", trust_domain,
                                                        "\nca: {dir: /var/run/meshtls/ca}\n"))) {}
  // The Secret as the API server holds it, one file per key.
  std::string SecretDir() const { return kube_ + "/meshtls-system/secret/meshtls-ca"; }
  std::string BundleFile(const std::string& ns) const {
    return absl::StrCat(kube_, "/", ns, "/configmap/meshtls-ca-bundle/ca.pem");
  }
  // The caBundle of webhook `index` of the meshtls-injector configuration, decoded.
  std::string WebhookBundleFile(const std::string& index) const {
    return absl::StrCat(kube_, "/_cluster/mutatingwebhookconfiguration/meshtls-injector/", index);
  }
  // Run returns the exit code; the output is in Log().
  int Run(std::vector<std::string> args) {
    std::vector<std::string> argv = {
        "/usr/bin/env",
        "FAKE_KUBE_DIR=" + kube_,
        "REAL_KUBECTL=" + testing::FindProgram("kubectl"),
        absl::StrCat("KUBECTL=", MESHTLS_SOURCE_DIR, "/tests/deploy/fake-kubectl"),
        "MESHTLS_CERTMGR=" + testing::BinaryPath("meshtls-certmgr"),
        "MESHTLS_CONFIG=" + config_,
        "bash",
        absl::StrCat(MESHTLS_SOURCE_DIR, "/deploy/kubernetes/ca.sh")};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = testing::Subprocess::Start(argv, dir_.File(absl::StrCat("ca-sh.", ++runs_, ".log")));
    if (!p.ok()) {
      log_ = std::string(p.status().message());
      return -1;
    }
    const int code = (*p)->WaitForExit(absl::Seconds(30)).value_or(-1);
    log_ = (*p)->Log();
    return code;
  }
  const std::string& Log() const { return log_; }

 private:
  const testing::TempDir& dir_;
  const std::string kube_;
  const std::string config_;
  int runs_ = 0;
  std::string log_;
};

int CountCertificates(const std::string& pem) {
  int n = 0;
  for (size_t at = pem.find("BEGIN CERTIFICATE"); at != std::string::npos;
       at = pem.find("BEGIN CERTIFICATE", at + 1)) {
    ++n;
  }
  return n;
}

TEST_F(HaTest, ReplicasOnAReadOnlySecretVolumeApplyEachRotationStepLive) {
  if (testing::FindProgram("kubectl").empty()) {
    GTEST_FAIL() << "kubectl is needed (scripts/setup.sh installs it)";
  }
  // The operator makes the CA once; the Secret reaches the pods as kubelet lays it out.
  OperatorScript ca(dir_, kTd);
  ASSERT_EQ(ca.Run({"init"}), 0) << ca.Log();
  EXPECT_EQ(ca.Run({"init"}), 1) << "a second init must not replace the CA";
  EXPECT_NE(ca.Log().find("exists already"), std::string::npos) << ca.Log();
  EXPECT_FALSE(base::FileExists(ca.SecretDir() + "/.lock"));
  KubeletSecretVolume secret(dir_.File("secret"));
  secret.Update(ca.SecretDir());

  // Each replica sees the volume read-only, as in a pod: a private mount namespace with a
  // read-only bind mount over it (root only; CI runs as root).
  const std::string unshare = testing::FindProgram("unshare");
  if (unshare.empty() || std::system("unshare -m true >/dev/null 2>&1") != 0) {
    GTEST_FAIL() << "this test needs unshare -m (util-linux, as root) for a read-only mount";
  }
  const std::string ro = dir_.File("secret-ro");
  ::mkdir(ro.c_str(), 0755);
  CertmgrOptions options;
  options.ca_dir = ro;
  options.launcher = {unshare, "-m", "sh", "-c",
                      absl::StrCat("mount --bind ", secret.path(), " ", ro,
                                   " && mount -o remount,ro,bind ", ro, " && exec \"$0\" \"$@\"")};
  std::unique_ptr<CertmgrProcess> a, b;
  MESHTLS_ASSERT_OK_AND_MOVE(a, CertmgrProcess::Start(dir_, kTd, options));
  MESHTLS_ASSERT_OK_AND_MOVE(b, a->StartReplica("certmgr-b"));
  EXPECT_NE(a->process().Log().find("ca.dir is read-only"), std::string::npos)
      << a->process().Log();
  const std::string token = a->Token("spiffe://mesh.test/ns/default/sa/probe");
  ASSERT_TRUE(ServesRoots(*a, token, secret.path(), 1));
  ASSERT_TRUE(ServesRoots(*b, token, secret.path(), 1));

  // prepare, then kubelet's update: both replicas, still running, stream 2 roots.
  ASSERT_EQ(ca.Run({"prepare"}), 0) << ca.Log();
  secret.Update(ca.SecretDir());
  EXPECT_TRUE(ServesRoots(*a, token, secret.path(), 2)) << a->process().Log();
  EXPECT_TRUE(ServesRoots(*b, token, secret.path(), 2)) << b->process().Log();

  // activate: both replicas sign with the new root.
  const pki::Certificate next_root =
      *pki::Certificate::FromPem(*base::ReadFileToString(ca.SecretDir() + "/next.pem"));
  ASSERT_EQ(ca.Run({"activate"}), 0) << ca.Log();
  EXPECT_FALSE(base::FileExists(ca.SecretDir() + "/next.pem")) << "replace drops removed keys";
  secret.Update(ca.SecretDir());
  for (CertmgrProcess* replica : {a.get(), b.get()}) {
    EXPECT_TRUE(testing::WaitFor(
        [&] {
          absl::StatusOr<sidecar::SignedCredentials> r = SignAt(*replica, token, secret.path());
          return r.ok() && X509_check_issued(next_root.get(), r->chain[0].get()) == X509_V_OK;
        },
        absl::Seconds(15)))
        << replica->process().Log();
  }
  // The workloads' bootstrap bundle: every root of the trust bundle (new and previous).
  ASSERT_EQ(ca.Run({"bundle", "meshtls-demo"}), 0) << ca.Log();
  EXPECT_EQ(CountCertificates(*base::ReadFileToString(ca.BundleFile("meshtls-demo"))), 2);
  // The API server's trust for the injection webhook: the same roots, in all three webhooks.
  ASSERT_EQ(ca.Run({"webhook"}), 0) << ca.Log();
  for (const char* webhook : {"0", "1", "2"}) {
    EXPECT_EQ(base::ReadFileToString(ca.WebhookBundleFile(webhook)).value_or("none"),
              base::ReadFileToString(ca.BundleFile("meshtls-demo")).value_or("?"));
  }
  // Retiring while leaves of the old root may still be valid is refused.
  EXPECT_EQ(ca.Run({"retire"}), 1);
  EXPECT_NE(ca.Log().find("retire after that"), std::string::npos) << ca.Log();

  // A rotation step aimed at the read-only volume itself is refused, naming the way out.
  std::vector<std::string> argv = options.launcher;
  argv.insert(argv.end(), {testing::BinaryPath("meshtls-certmgr"), "ca", "rotate", "retire",
                           "--force", "--config", a->config_path()});
  auto step = testing::Subprocess::Start(argv, dir_.File("read-only-step.log"));
  ASSERT_THAT(step, IsOk());
  EXPECT_EQ((*step)->WaitForExit(absl::Seconds(20)), 1);
  EXPECT_NE((*step)->Log().find("is read-only (a Kubernetes Secret volume?)"), std::string::npos)
      << (*step)->Log();
}

}  // namespace
}  // namespace meshtls

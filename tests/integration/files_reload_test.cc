// identity.files: the sidecar follows its certificate files, including the Kubernetes
// Secret-volume update (an atomic swap of the `..data` symlink), refuses a bad update while the
// old context keeps serving, and reloads on SIGHUP.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"
#include "tests/testing/tls_peer.h"

namespace meshtls {
namespace {

using testing::IsOk;
using testing::SidecarProcess;
using testing::TestCa;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

class FilesReloadTest : public ::testing::Test {
 protected:
  // Start runs a files-mode backend whose files are `cert`, `key` and `bundle` in `dir`.
  void Start(const std::string& cert, const std::string& key, const std::string& bundle) {
    MESHTLS_ASSERT_OK_AND_MOVE(
        backend_, SidecarProcess::Start(
                      dir_, "backend",
                      absl::StrCat("trust_domain: mesh.test\nidentity:\n  files:\n    cert: ", cert,
                                   "\n    key: ", key, "\n    trust_bundle: ", bundle,
                                   "\ninbound:\n  - name: http\n    listen: 127.0.0.1:0",
                                   "\n    forward: 127.0.0.1:", app_.port(), "\n    allow: [",
                                   kFrontend, "]\n")));
    port_ = backend_->port("inbound.http");
    ASSERT_TRUE(backend_->WaitReady()) << backend_->process().Log();
  }

  // ClientWorks completes a handshake and a round trip as the allowed frontend.
  bool ClientWorks() {
    absl::StatusOr<std::unique_ptr<testing::TlsClient>> c =
        testing::TlsClient::Connect(port_, testing::AsIdentity(frontend_), ca_.RootPem());
    if (!c.ok() || !(*c)->Write("ok").ok()) {
      return false;
    }
    absl::StatusOr<std::string> r = (*c)->Read(2);
    return r.ok() && *r == "ok";
  }

  testing::TempDir dir_;
  TestCa ca_{"mesh.test"};
  testing::IssuedLeaf frontend_ = ca_.Issue(kFrontend);
  testing::EchoServer app_;
  std::unique_ptr<SidecarProcess> backend_;
  uint16_t port_ = 0;
};

TEST_F(FilesReloadTest, KubernetesSecretVolumeSwapIsApplied) {
  // The kubelet's layout: versioned directories, `..data` pointing at one, and the visible
  // names linking through `..data`.
  auto write_version = [&](const std::string& version, const testing::IssuedLeaf& leaf) {
    const std::string d = dir_.File(version);
    ::mkdir(d.c_str(), 0755);
    dir_.Write(version + "/tls.crt", leaf.ChainPem());
    dir_.Write(version + "/tls.key", leaf.KeyPem(), 0600);
    dir_.Write(version + "/ca.crt", ca_.RootPem());
  };
  auto point_data_at = [&](const std::string& version) {
    const std::string tmp = dir_.File("..data_tmp");
    ::unlink(tmp.c_str());
    ASSERT_EQ(::symlink(version.c_str(), tmp.c_str()), 0);
    ASSERT_EQ(::rename(tmp.c_str(), dir_.File("..data").c_str()), 0);  // atomic swap
  };
  testing::IssuedLeaf v1 = ca_.Issue(kBackend);
  write_version("..2026_11_23_v1", v1);
  point_data_at("..2026_11_23_v1");
  for (const char* name : {"tls.crt", "tls.key", "ca.crt"}) {
    ASSERT_EQ(::symlink(absl::StrCat("..data/", name).c_str(), dir_.File(name).c_str()), 0);
  }
  Start(dir_.File("tls.crt"), dir_.File("tls.key"), dir_.File("ca.crt"));
  EXPECT_EQ(backend_->ServedSerial(), v1.chain[0].SerialHex());
  EXPECT_TRUE(ClientWorks());

  testing::IssuedLeaf v2 = ca_.Issue(kBackend);
  write_version("..2026_11_23_v2", v2);
  point_data_at("..2026_11_23_v2");
  EXPECT_TRUE(testing::WaitFor([&] { return backend_->ServedSerial() == v2.chain[0].SerialHex(); },
                               absl::Seconds(10)))
      << backend_->process().Log();
  EXPECT_EQ(backend_->Metric("meshtls_tls_context_generation"), 2);
  EXPECT_EQ(backend_->Metric(R"(meshtls_cert_renewals_total{result="failure"})"), 0)
      << "a symlink swap changes both files at once: never a half-updated pair";
  EXPECT_EQ(backend_->Metric("meshtls_trust_bundle_sequence"), 1) << "the same root: same bundle";
  EXPECT_TRUE(ClientWorks());
}

TEST_F(FilesReloadTest, BadUpdatesAreRejectedWhileTheOldContextServes) {
  testing::IssuedLeaf v1 = ca_.Issue(kBackend);
  const std::string cert = dir_.Write("cert.pem", v1.ChainPem());
  const std::string key = dir_.Write("key.pem", v1.KeyPem(), 0600);
  const std::string bundle = dir_.Write("ca.pem", ca_.RootPem());
  Start(cert, key, bundle);
  const std::string serial = backend_->ServedSerial();

  // A key that does not match the certificate.
  dir_.Write("key.pem", ca_.Issue(kBackend).KeyPem(), 0600);
  EXPECT_TRUE(backend_->WaitForMetric(R"(meshtls_cert_renewals_total{result="failure"})", 1));
  EXPECT_EQ(backend_->ServedSerial(), serial);
  EXPECT_EQ(backend_->Metric("meshtls_tls_context_generation"), 1);
  EXPECT_TRUE(ClientWorks()) << "the old context must keep serving";

  // An unparsable certificate (a half-written file).
  dir_.Write("cert.pem", v1.ChainPem().substr(0, 100));
  EXPECT_TRUE(backend_->WaitForMetric(R"(meshtls_cert_renewals_total{result="failure"})", 2));
  EXPECT_EQ(backend_->ServedSerial(), serial);
  EXPECT_TRUE(ClientWorks());

  // A good pair again (the key first, then the certificate) is applied.
  testing::IssuedLeaf v2 = ca_.Issue(kBackend);
  dir_.Write("key.pem", v2.KeyPem(), 0600);
  dir_.Write("cert.pem", v2.ChainPem());
  EXPECT_TRUE(testing::WaitFor([&] { return backend_->ServedSerial() == v2.chain[0].SerialHex(); },
                               absl::Seconds(10)));
  EXPECT_TRUE(ClientWorks());
}

TEST_F(FilesReloadTest, SighupForcesAReload) {
  testing::IssuedLeaf v1 = ca_.Issue(kBackend);
  Start(dir_.Write("cert.pem", v1.ChainPem()), dir_.Write("key.pem", v1.KeyPem(), 0600),
        dir_.Write("ca.pem", ca_.RootPem()));
  ASSERT_EQ(backend_->Metric("meshtls_tls_context_generation"), 1);
  backend_->process().Signal(SIGHUP);  // the files did not change: only the signal reloads
  EXPECT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 2));
  EXPECT_TRUE(ClientWorks());
}

TEST_F(FilesReloadTest, TrustBundleSequenceCountsChangesOfTheRoots) {
  testing::IssuedLeaf v1 = ca_.Issue(kBackend);
  Start(dir_.Write("cert.pem", v1.ChainPem()), dir_.Write("key.pem", v1.KeyPem(), 0600),
        dir_.Write("ca.pem", ca_.RootPem()));
  EXPECT_EQ(backend_->Metric("meshtls_trust_bundle_sequence"), 1);
  // A reload of the same files builds a new context but holds the same bundle.
  backend_->process().Signal(SIGHUP);
  ASSERT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 2));
  EXPECT_EQ(backend_->Metric("meshtls_trust_bundle_sequence"), 1);

  // A second root (a CA rotation starting): a new bundle, in the metric and in /certs.
  const TestCa next_ca("mesh.test");
  dir_.Write("ca.pem", ca_.RootPem() + next_ca.RootPem());
  ASSERT_TRUE(backend_->WaitForMetric("meshtls_tls_context_generation", 3))
      << backend_->process().Log();
  EXPECT_EQ(backend_->Metric("meshtls_trust_bundle_sequence"), 2);
  EXPECT_EQ(backend_->Metric("meshtls_trust_bundle_roots"), 2);
  absl::StatusOr<testing::HttpResult> certs = testing::HttpGet(backend_->admin_port(), "/certs");
  ASSERT_THAT(certs, IsOk());
  EXPECT_NE(certs->body.find(R"("trust_bundle":{"sequence":"2","roots":[)"), std::string::npos)
      << certs->body;
  EXPECT_NE(certs->body.find(next_ca.root().Sha256Fingerprint()), std::string::npos);
  EXPECT_TRUE(ClientWorks());
}

}  // namespace
}  // namespace meshtls

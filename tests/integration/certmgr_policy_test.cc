// certmgr's identity policy and its gRPC port as an attacker meets them: the real
// meshtls-certmgr (and a sidecar where the mesh matters) on loopback. Who may renew, the live
// deny-list, credentials and caps on WatchTrustBundle streams, the rate of refusal log lines,
// and a CA directory recreated under running sidecars.

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/file.h"
#include "common/pki/csr.h"
#include "sidecar/identity/ca_client.h"
#include "tests/testing/harness.h"
#include "tests/testing/jwt.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"

namespace meshtls {
namespace {

using testing::CertmgrProcess;
using testing::IsOk;
using testing::StatusIs;

constexpr char kTd[] = "mesh.test";
constexpr char kIssuer[] = "https://kubernetes.default.svc";

sidecar::CallCredentials Bearer(std::string token) {
  return {.chain = {}, .key = std::nullopt, .bearer_token = std::move(token)};
}

// Holder is a workload's certificate and key, as a renewal presents them.
struct Holder {
  sidecar::CallCredentials Credentials() const {
    return {.chain = chain, .key = key, .bearer_token = std::nullopt};
  }
  std::vector<pki::Certificate> chain;
  std::optional<pki::PrivateKey> key;
};

class CertmgrPolicyTest : public ::testing::Test {
 protected:
  void Start(const std::string& extra_yaml = "") {
    MESHTLS_ASSERT_OK_AND_MOVE(certmgr_, CertmgrProcess::Start(dir_, kTd, extra_yaml));
    client_ = sidecar::NewGrpcCaClient({certmgr_->address()},
                                       *base::ReadFileToString(certmgr_->ca_pem_path()));
  }

  // Sign sends a fresh CSR with `credentials`; on success returns the new holder.
  absl::StatusOr<Holder> Sign(const sidecar::CallCredentials& credentials) {
    absl::StatusOr<pki::PrivateKey> key = pki::PrivateKey::GenerateEcP256();
    if (!key.ok()) {
      return key.status();
    }
    absl::StatusOr<sidecar::SignedCredentials> signed_credentials =
        client_->Sign(*pki::CreateCsrDer(*key), credentials, absl::Seconds(10));
    if (!signed_credentials.ok()) {
      return signed_credentials.status();
    }
    return Holder{.chain = signed_credentials->chain, .key = *std::move(key)};
  }

  // RewriteConfig replaces certmgr's config file (certmgr follows it).
  void RewriteConfig(const std::string& from, const std::string& to) {
    std::string text = *base::ReadFileToString(certmgr_->config_path());
    ASSERT_TRUE(absl::StrContains(text, from)) << text;
    text.replace(text.find(from), from.size(), to);
    ASSERT_THAT(base::WriteFileAtomically(certmgr_->config_path(), text, 0644), IsOk());
  }

  double CertmgrMetric(const std::string& series) const {
    return testing::ScrapeMetric(certmgr_->admin_port(), series);
  }

  // Watch opens a WatchTrustBundle stream in a thread of its own, with its own client.
  struct Watch {
    std::unique_ptr<sidecar::CaClient> client;
    std::atomic<int> received{0};
    std::atomic<bool> ended{false};
    absl::Status status;
    std::thread thread;
    ~Watch() {
      client->CancelWatch();
      thread.join();
    }
  };
  // OpenWatch watches certmgr_, or `target`.
  std::unique_ptr<Watch> OpenWatch(const sidecar::CallCredentials& credentials,
                                   const CertmgrProcess* target = nullptr) {
    if (target == nullptr) {
      target = certmgr_.get();
    }
    auto w = std::make_unique<Watch>();
    w->client = sidecar::NewGrpcCaClient({target->address()},
                                         *base::ReadFileToString(target->ca_pem_path()));
    Watch* raw = w.get();
    w->thread = std::thread([raw, credentials] {
      raw->status = raw->client->WatchTrustBundle(
          credentials, [raw](std::vector<pki::Certificate>, uint64_t) { raw->received++; });
      raw->ended = true;
    });
    return w;
  }
  // Streaming: the first bundle arrived and the stream is still open.
  static bool Streaming(const Watch& w) { return w.received.load() > 0 && !w.ended.load(); }

  testing::TempDir dir_;
  std::unique_ptr<CertmgrProcess> certmgr_;
  std::unique_ptr<sidecar::CaClient> client_;
};

TEST_F(CertmgrPolicyTest, ADeniedIdentityCanNeitherBootstrapNorRenewAndTheListAppliesLive) {
  ASSERT_NO_FATAL_FAILURE(Start("deny: []\n"));
  const std::string denied = "spiffe://mesh.test/ns/shop/sa/stolen";
  const std::string other = "spiffe://mesh.test/ns/shop/sa/cart";
  const std::string denied_token = certmgr_->Token(denied);
  const std::string other_token = certmgr_->Token(other);
  absl::StatusOr<Holder> denied_holder = Sign(Bearer(denied_token));
  absl::StatusOr<Holder> other_holder = Sign(Bearer(other_token));
  ASSERT_THAT(denied_holder, IsOk());
  ASSERT_THAT(other_holder, IsOk());

  // The operator denies the identity in certmgr's config; no restart.
  RewriteConfig("deny: []", absl::StrCat("deny: [", denied, "]"));
  ASSERT_TRUE(testing::WaitFor(
      [&] { return absl::IsPermissionDenied(Sign(Bearer(denied_token)).status()); },
      absl::Seconds(10)))
      << "the deny-list was not applied live:\n"
      << certmgr_->process().Log();
  EXPECT_THAT(Sign(denied_holder->Credentials()),
              StatusIs(absl::StatusCode::kPermissionDenied, "deny-list"));
  // Everyone else renews and bootstraps as before.
  EXPECT_THAT(Sign(other_holder->Credentials()), IsOk());
  EXPECT_THAT(Sign(Bearer(other_token)), IsOk());

  // A broken edit is refused and shown; the deny-list in force stays.
  RewriteConfig("deny: [", "deny: [[");
  EXPECT_TRUE(testing::WaitFor(
      [&] { return CertmgrMetric("meshtls_certmgr_config_last_reload_successful") == 0; },
      absl::Seconds(10)));
  EXPECT_THAT(Sign(denied_holder->Credentials()), StatusIs(absl::StatusCode::kPermissionDenied));

  // Lifting the entry lets the identity back in.
  RewriteConfig(absl::StrCat("deny: [[", denied, "]"), "deny: []");
  EXPECT_TRUE(testing::WaitFor([&] { return Sign(Bearer(denied_token)).ok(); }, absl::Seconds(10)));
  EXPECT_EQ(CertmgrMetric("meshtls_certmgr_config_last_reload_successful"), 1);
}

TEST_F(CertmgrPolicyTest, ANamespaceTakenOutOfTheAllowListStopsRenewing) {
  testing::JwtSigner cluster_key = testing::NewEs256Signer("cluster-1");
  const std::string jwks = dir_.Write("k8s-jwks.json", testing::Jwks({cluster_key}));
  ASSERT_NO_FATAL_FAILURE(Start(absl::StrCat("  kubernetes: {issuer: ", kIssuer, ", jwks_file: ",
                                             jwks, ", allowed_namespaces: [default, shop]}\n")));
  auto token_for = [&](const std::string& ns, const std::string& sa) {
    return testing::SignJwt(
        cluster_key, testing::ServiceAccountClaims(kIssuer, "meshtls", ns, sa,
                                                   absl::Now() + absl::Hours(1), absl::Now()));
  };
  absl::StatusOr<Holder> shop = Sign(Bearer(token_for("shop", "cart")));
  absl::StatusOr<Holder> web = Sign(Bearer(token_for("default", "web")));
  ASSERT_THAT(shop, IsOk());
  ASSERT_THAT(web, IsOk());
  ASSERT_THAT(Sign(shop->Credentials()), IsOk());  // renewal while shop is allowed

  // The reviewer's reproduction: certmgr restarted with `shop` out of the allow-list.
  certmgr_->Stop();
  RewriteConfig("allowed_namespaces: [default, shop]", "allowed_namespaces: [default]");
  ASSERT_THAT(certmgr_->Restart(), IsOk());
  EXPECT_THAT(Sign(Bearer(token_for("shop", "cart"))),
              StatusIs(absl::StatusCode::kPermissionDenied, "namespace shop"));
  EXPECT_THAT(Sign(shop->Credentials()),
              StatusIs(absl::StatusCode::kPermissionDenied, "namespace shop"));
  EXPECT_THAT(Sign(web->Credentials()), IsOk());

  // And live: putting it back applies without a restart.
  RewriteConfig("allowed_namespaces: [default]", "allowed_namespaces: [default, shop]");
  EXPECT_TRUE(testing::WaitFor([&] { return Sign(shop->Credentials()).ok(); }, absl::Seconds(10)));

  // Removing the section takes a restart: the reload is refused rather than leaving the
  // running authenticator with an empty (= every namespace) allow-list.
  const std::string text = *base::ReadFileToString(certmgr_->config_path());
  const size_t at = text.find("  kubernetes:");
  ASSERT_NE(at, std::string::npos);
  RewriteConfig(text.substr(at, text.find('\n', at) + 1 - at), "");
  EXPECT_TRUE(testing::WaitFor(
      [&] { return CertmgrMetric("meshtls_certmgr_config_last_reload_successful") == 0; },
      absl::Seconds(10)));
  EXPECT_THAT(Sign(Bearer(token_for("kube-system", "admin"))),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(CertmgrPolicyTest, WatchTrustBundleNeedsTheCredentialsSignNeeds) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string token = certmgr_->Token("spiffe://mesh.test/ns/default/sa/watcher");

  // No credential: refused at once, before any bundle.
  {
    std::unique_ptr<Watch> anonymous = OpenWatch({});
    const bool ended = testing::WaitFor([&] { return anonymous->ended.load(); }, absl::Seconds(5));
    EXPECT_EQ(anonymous->received.load(), 0);
    ASSERT_TRUE(ended) << "an anonymous watch stream stayed open";
    EXPECT_THAT(anonymous->status, StatusIs(absl::StatusCode::kUnauthenticated));
  }
  // A join token, and a current mesh certificate, each open a stream.
  std::unique_ptr<Watch> by_token = OpenWatch(Bearer(token));
  absl::StatusOr<Holder> holder = Sign(Bearer(token));
  ASSERT_THAT(holder, IsOk());
  std::unique_ptr<Watch> by_certificate = OpenWatch(holder->Credentials());
  EXPECT_TRUE(testing::WaitFor([&] { return Streaming(*by_token) && Streaming(*by_certificate); },
                               absl::Seconds(10)));

  // A flood of anonymous streams is refused and costs certmgr no memory to speak of.
  const int64_t rss_before = testing::RssKiB(certmgr_->process().pid());
  constexpr int kFlood = 300;
  int refused = 0;
  for (int i = 0; i < kFlood; ++i) {
    absl::Status s = client_->WatchTrustBundle({}, [](std::vector<pki::Certificate>, uint64_t) {});
    refused += absl::IsUnauthenticated(s) ? 1 : 0;
  }
  EXPECT_EQ(refused, kFlood);
  const int64_t rss_after = testing::RssKiB(certmgr_->process().pid());
  std::printf("certmgr RSS %lld KiB before, %lld KiB after %d refused watches\n",
              static_cast<long long>(rss_before), static_cast<long long>(rss_after), kFlood);
#if !defined(__SANITIZE_ADDRESS__)  // ASan's quarantine keeps freed memory resident
  EXPECT_LT(rss_after - rss_before, 20 * 1024);
#endif
  EXPECT_EQ(CertmgrMetric(
                R"(meshtls_certmgr_trust_bundle_watch_refused_total{reason="unauthenticated"})"),
            kFlood + 1);
  EXPECT_EQ(CertmgrMetric("meshtls_certmgr_trust_bundle_watchers"), 2);
}

TEST_F(CertmgrPolicyTest, WatchStreamsAreCappedPerAddressAndInTotal) {
  ASSERT_NO_FATAL_FAILURE(Start("limits: {max_watchers: 100, max_watchers_per_address: 3}\n"));
  const std::string token = certmgr_->Token("spiffe://mesh.test/ns/default/sa/watcher");
  std::vector<std::unique_ptr<Watch>> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(OpenWatch(Bearer(token)));
  }
  ASSERT_TRUE(testing::WaitFor(
      [&] { return std::all_of(open.begin(), open.end(), [](auto& w) { return Streaming(*w); }); },
      absl::Seconds(10)));
  std::unique_ptr<Watch> fourth = OpenWatch(Bearer(token));
  ASSERT_TRUE(testing::WaitFor([&] { return fourth->ended.load(); }, absl::Seconds(10)));
  EXPECT_THAT(fourth->status, StatusIs(absl::StatusCode::kResourceExhausted, "127.0.0.1"));
  EXPECT_EQ(
      CertmgrMetric(
          R"(meshtls_certmgr_trust_bundle_watch_refused_total{reason="too_many_from_address"})"),
      1);
  // A closed stream frees its slot.
  open.pop_back();
  ASSERT_TRUE(
      testing::WaitFor([&] { return CertmgrMetric("meshtls_certmgr_trust_bundle_watchers") == 2; },
                       absl::Seconds(10)));
  std::unique_ptr<Watch> again = OpenWatch(Bearer(token));
  EXPECT_TRUE(testing::WaitFor([&] { return Streaming(*again); }, absl::Seconds(10)));

  // The total: another certmgr on the same CA with room for two streams in all.
  testing::CertmgrOptions options;
  options.name = "small";
  options.extra_yaml = "limits: {max_watchers: 2, max_watchers_per_address: 100}\n";
  std::unique_ptr<CertmgrProcess> small;
  MESHTLS_ASSERT_OK_AND_MOVE(small, CertmgrProcess::Start(dir_, kTd, options));
  auto watch_small = [&] { return OpenWatch(Bearer(token), small.get()); };
  auto a = watch_small();
  auto b = watch_small();
  ASSERT_TRUE(testing::WaitFor([&] { return Streaming(*a) && Streaming(*b); }, absl::Seconds(10)));
  auto c = watch_small();
  ASSERT_TRUE(testing::WaitFor([&] { return c->ended.load(); }, absl::Seconds(10)));
  EXPECT_THAT(c->status, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(testing::ScrapeMetric(
                small->admin_port(),
                R"(meshtls_certmgr_trust_bundle_watch_refused_total{reason="too_many_watchers"})"),
            1);
}

TEST_F(CertmgrPolicyTest, RefusedCallsAreLoggedAtABoundedRate) {
  ASSERT_NO_FATAL_FAILURE(Start());
  constexpr int kCalls = 300;
  const absl::Time start = absl::Now();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_THAT(Sign(Bearer("mjt_not-a-real-token")), StatusIs(absl::StatusCode::kUnauthenticated));
  }
  const absl::Duration flood = absl::Now() - start;
  // Refusals after the flood until one is logged again: its line is preceded by one reporting
  // how many were dropped, so then every call is accounted for. Logging is synchronous, so a
  // call's line is in the log when the call returns.
  int calls = kCalls;
  auto count_refused_lines = [&] {
    const std::string log = certmgr_->process().Log();
    int n = 0;
    for (size_t at = log.find("sign refused"); at != std::string::npos;
         at = log.find("sign refused", at + 1)) {
      ++n;
    }
    return n;
  };
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        const int before = count_refused_lines();
        ++calls;
        EXPECT_THAT(Sign(Bearer("mjt_not-a-real-token")),
                    StatusIs(absl::StatusCode::kUnauthenticated));
        return count_refused_lines() > before;
      },
      absl::Seconds(10)));
  EXPECT_EQ(CertmgrMetric(R"(meshtls_certmgr_sign_requests_total{result="unauthenticated"})"),
            calls);

  int refused_lines = 0;
  uint64_t suppressed = 0;
  const std::string log = certmgr_->process().Log();
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "sign refused")) {
      ++refused_lines;
    }
    if (absl::StrContains(line, "suppressed by the rate limit")) {
      const size_t at = line.find("suppressed=");
      uint64_t n = 0;
      if (at != absl::string_view::npos &&
          absl::SimpleAtoi(line.substr(at + 11, line.find(' ', at) - at - 11), &n)) {
        suppressed += n;
      }
    }
  }
  const double allowed = 20 + 10 * absl::ToDoubleSeconds(absl::Now() - start) + 1;
  std::printf("%d refusals (%d in %s): %d logged, %llu reported suppressed (bound %.0f)\n", calls,
              kCalls, absl::FormatDuration(flood).c_str(), refused_lines,
              static_cast<unsigned long long>(suppressed), allowed);
  EXPECT_LE(refused_lines, allowed) << log.substr(0, 4000);
  EXPECT_GT(suppressed, 0u);
  EXPECT_EQ(refused_lines + static_cast<int>(suppressed), calls);
}

TEST_F(CertmgrPolicyTest, ARecreatedCaDirectoryReachesARunningSidecar) {
  // A sidecar needs a listener; this one is never used.
  const std::string kOneOutbound =
      "outbound:\n  - name: peer\n    listen: 127.0.0.1:0\n    connect: 127.0.0.1:9\n"
      "    expect: [spiffe://mesh.test/ns/default/sa/peer]\n";
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string token_file =
      certmgr_->TokenFile("spiffe://mesh.test/ns/default/sa/app", "app-token");
  std::unique_ptr<testing::SidecarProcess> sidecar;
  MESHTLS_ASSERT_OK_AND_MOVE(
      sidecar, testing::SidecarProcess::Start(
                   dir_, "app",
                   absl::StrCat("trust_domain: mesh.test\n",
                                certmgr_->SidecarIdentityYaml(token_file), kOneOutbound)));
  ASSERT_TRUE(sidecar->WaitReady()) << sidecar->process().Log();
  const double first_sequence = sidecar->Metric("meshtls_trust_bundle_sequence");
  const std::string old_root = *base::ReadFileToString(certmgr_->ca_pem_path());

  // After a compromise the operator wipes the CA directory; certmgr makes a new root. The
  // sidecar's bootstrap CA file (server_ca) is the same path, now holding the new root.
  certmgr_->Stop();
  const std::string ca_dir = certmgr_->ca_pem_path().substr(0, certmgr_->ca_pem_path().rfind('/'));
  std::filesystem::remove_all(ca_dir);
  ASSERT_THAT(certmgr_->Restart(), IsOk());
  ASSERT_NE(*base::ReadFileToString(certmgr_->ca_pem_path()), old_root);

  // The sidecar takes the new bundle, sees its own root gone, and re-bootstraps on its token.
  EXPECT_TRUE(testing::WaitFor(
      [&] { return sidecar->Metric("meshtls_trust_bundle_sequence") > first_sequence; },
      absl::Seconds(30)))
      << "sequence stayed at " << first_sequence << "\n"
      << sidecar->process().Log();
  EXPECT_TRUE(sidecar->WaitForMetric(R"(meshtls_cert_renewals_total{result="success"})", 2,
                                     absl::Seconds(30)));
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        absl::StatusOr<testing::HttpResult> certs =
            testing::HttpGet(sidecar->admin_port(), "/certs");
        const std::string fingerprint =
            pki::Certificate::FromPem(*base::ReadFileToString(certmgr_->ca_pem_path()))
                ->Sha256Fingerprint();
        return certs.ok() && absl::StrContains(certs->body, fingerprint);
      },
      absl::Seconds(10)));
}

}  // namespace
}  // namespace meshtls

// TLS policy probe: OpenSSL's own s_client (and s_server, for the outbound side) offer every
// protocol version, TLS 1.3 ciphersuite, TLS 1.2 cipher and key-exchange group against the real
// listeners, and only the configured policy may be accepted: TLS 1.3 with AES-GCM or
// ChaCha20-Poly1305 by default, TLS 1.2 with ECDHE and AEAD ciphers only when configured; no
// renegotiation, no 0-RTT. certmgr's gRPC port is probed too.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/mesh_processes.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/test_ca.h"

namespace meshtls {
namespace {

using testing::IsOk;
using testing::SidecarProcess;
using testing::TestCa;

const std::string kFrontend = "spiffe://mesh.test/ns/default/sa/frontend";
const std::string kBackend = "spiffe://mesh.test/ns/default/sa/backend";

struct ProbeResult {
  bool established = false;  // the handshake completed and the connection was kept
  std::string output;
};

// AcceptingPort reads the port from `openssl s_server -accept 127.0.0.1:0`'s output, a line
// "ACCEPT 127.0.0.1:<port>" (nullopt until the whole line is there).
std::optional<uint16_t> AcceptingPort(const std::string& log) {
  const std::string accept = "ACCEPT 127.0.0.1:";
  const size_t at = log.find(accept);
  const size_t end = at == std::string::npos ? at : log.find('\n', at);
  uint32_t port = 0;
  if (end == std::string::npos ||
      !absl::SimpleAtoi(log.substr(at + accept.size(), end - at - accept.size()), &port) ||
      port == 0 || port > 65535) {
    return std::nullopt;
  }
  return static_cast<uint16_t>(port);
}

class TlsPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    openssl_ = testing::FindProgram("openssl");
    ASSERT_FALSE(openssl_.empty()) << "openssl is needed (scripts/setup.sh installs it)";
    const testing::IssuedLeaf client = ca_.Issue(kFrontend, absl::Hours(1));
    client_cert_ = dir_.Write("client.crt", client.ChainPem());
    client_key_ = dir_.Write("client.key", client.KeyPem(), 0600);
    bundle_ = dir_.Write("bundle.pem", ca_.RootPem());
  }

  // StartSidecar runs a files-mode sidecar (the backend) with one inbound listener, and one
  // outbound listener to `upstream_port` when it is not 0; `tls` is its tls: section.
  void StartSidecar(const std::string& tls, uint16_t upstream_port = 0) {
    const testing::IssuedLeaf own = ca_.Issue(kBackend, absl::Hours(1));
    std::string yaml =
        absl::StrCat(testing::FilesConfigHead(dir_, "own", own, bundle_),
                     "workers: 1\nlimits: {handshake_timeout: 2s}\n", tls,
                     "\ninbound:\n  - name: in\n    listen: 127.0.0.1:0",
                     "\n    forward: 127.0.0.1:", app_.port(), "\n    allow: [", kFrontend, "]\n");
    if (upstream_port != 0) {
      absl::StrAppend(&yaml, "outbound:\n  - name: out\n    listen: 127.0.0.1:0",
                      "\n    connect: 127.0.0.1:", upstream_port, "\n    expect: [", kFrontend,
                      "]\n");
    }
    MESHTLS_ASSERT_OK_AND_MOVE(sidecar_, SidecarProcess::Start(dir_, "sidecar", yaml));
    inbound_port_ = sidecar_->port("inbound.in");
    if (upstream_port != 0) {
      outbound_port_ = sidecar_->port("outbound.out");
    }
    ASSERT_TRUE(sidecar_->WaitReady()) << sidecar_->process().Log();
  }

  // Probe runs `openssl s_client` against `port` with a client certificate of an allowed
  // identity and the given options, stdin empty (it connects, handshakes, reads until the
  // server is done or its stdin ends).
  ProbeResult Probe(uint16_t port, const std::vector<std::string>& options,
                    const std::string& stdin_text = "") {
    const std::string input = dir_.Write(absl::StrCat("stdin.", ++probes_), stdin_text);
    std::vector<std::string> argv = {openssl_,
                                     "s_client",
                                     "-connect",
                                     absl::StrCat("127.0.0.1:", port),
                                     "-cert",
                                     client_cert_,
                                     "-key",
                                     client_key_,
                                     "-CAfile",
                                     bundle_,
                                     "-verify_return_error"};
    argv.insert(argv.end(), options.begin(), options.end());
    std::string command;
    for (const std::string& a : argv) {
      absl::StrAppend(&command, "'", a, "' ");
    }
    absl::StrAppend(&command, "<'", input, "'");
    auto p = testing::Subprocess::Start({"/bin/sh", "-c", command},
                                        dir_.File(absl::StrCat("probe.", probes_, ".log")));
    EXPECT_THAT(p, IsOk());
    ProbeResult r;
    if (!p.ok()) {
      return r;
    }
    const std::optional<int> code = (*p)->WaitForExit(absl::Seconds(20));
    r.output = (*p)->Log();
    // s_client prints the negotiated parameters once the handshake is done ("New, TLSv1.3,
    // Cipher is ..."); a refused handshake prints an alert and "no peer certificate available"
    // or "Cipher is (NONE)".
    r.established = code == 0 && absl::StrContains(r.output, "\nNew, TLSv1.") &&
                    !absl::StrContains(r.output, "Cipher is (NONE)");
    return r;
  }

  std::string openssl_;
  testing::TempDir dir_;
  testing::EchoServer app_;
  TestCa ca_{"mesh.test"};
  std::string client_cert_, client_key_, bundle_;
  std::unique_ptr<SidecarProcess> sidecar_;
  uint16_t inbound_port_ = 0;
  uint16_t outbound_port_ = 0;
  int probes_ = 0;
};

// Each offer and whether the default policy (TLS 1.3 only) accepts it.
TEST_F(TlsPolicyTest, InboundDefaultAcceptsOnlyTls13WithGcmOrChaCha) {
  StartSidecar("");
  const std::vector<std::pair<std::vector<std::string>, bool>> offers = {
      {{"-tls1"}, false},
      {{"-tls1_1"}, false},
      {{"-tls1_2"}, false},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, false},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"}, true},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"}, true},
      {{"-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"}, true},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"}, false},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"}, false},
      {{"-tls1_3", "-groups", "X25519"}, true},
      {{"-tls1_3", "-groups", "P-256"}, true},
      {{"-tls1_3", "-groups", "P-384"}, true},
      {{"-tls1_3", "-groups", "P-521"}, false},
      {{"-tls1_3", "-groups", "ffdhe2048"}, false},
      {{"-tls1_3", "-groups", "ffdhe3072"}, false},
  };
  for (const auto& [options, accepted] : offers) {
    ProbeResult r = Probe(inbound_port_, options);
    EXPECT_EQ(r.established, accepted) << absl::StrJoin(options, " ") << ":\n" << r.output;
    if (accepted) {
      EXPECT_TRUE(absl::StrContains(r.output, "New, TLSv1.3")) << r.output;
    }
  }
  EXPECT_GE(sidecar_->Metric(testing::Handshakes("inbound", "protocol_version")), 4);
  EXPECT_GE(sidecar_->Metric(testing::Handshakes("inbound", "no_shared_cipher")), 5);
}

TEST_F(TlsPolicyTest, InboundTls12AcceptsOnlyEcdheWithAead) {
  StartSidecar("tls: {min_version: \"1.2\"}");
  const std::vector<std::pair<std::vector<std::string>, bool>> offers = {
      {{"-tls1"}, false},
      {{"-tls1_1"}, false},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"}, true},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"}, true},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false},  // CBC
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false},     // CBC, SHA-1
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-CCM"}, false},     // not in the list
      {{"-tls1_2", "-cipher", "AES128-GCM-SHA256"}, false},          // no forward secrecy
      {{"-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"}, false},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-groups", "ffdhe2048"}, false},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"}, true},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"}, false},
  };
  for (const auto& [options, accepted] : offers) {
    ProbeResult r = Probe(inbound_port_, options);
    EXPECT_EQ(r.established, accepted) << absl::StrJoin(options, " ") << ":\n" << r.output;
  }
}

// A TLS 1.2 client that asks to renegotiate ("R" on s_client's stdin) is refused with a
// no_renegotiation alert, and no second handshake happens.
TEST_F(TlsPolicyTest, RenegotiationIsRefused) {
  StartSidecar("tls: {min_version: \"1.2\"}");
  const double handshakes = sidecar_->Metric(testing::Handshakes("inbound", "success"));
  ProbeResult r =
      Probe(inbound_port_, {"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, "R\n");
  EXPECT_TRUE(absl::StrContains(r.output, "RENEGOTIATING")) << r.output;
  // The sidecar answers the new ClientHello with a no_renegotiation alert.
  EXPECT_TRUE(absl::StrContains(r.output, "no renegotiation")) << r.output;
  EXPECT_EQ(sidecar_->Metric(testing::Handshakes("inbound", "success")), handshakes + 1);
}

// 0-RTT: a client resuming with early data never has it accepted (the tickets do not allow it).
TEST_F(TlsPolicyTest, EarlyDataIsNeverAccepted) {
  StartSidecar("");
  // The first connection stays open until s_client has stored the session ticket the sidecar
  // sends after the handshake: its stdin is a FIFO this test holds open until then.
  const std::string session = dir_.File("session.pem");
  const std::string fifo = dir_.File("stdin.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::string command;
  for (const std::string& a :
       {openssl_, std::string("s_client"), std::string("-connect"),
        absl::StrCat("127.0.0.1:", inbound_port_), std::string("-cert"), client_cert_,
        std::string("-key"), client_key_, std::string("-CAfile"), bundle_, std::string("-tls1_3"),
        std::string("-sess_out"), session}) {
    absl::StrAppend(&command, "'", a, "' ");
  }
  absl::StrAppend(&command, "<'", fifo, "'");
  auto first = testing::Subprocess::Start({"/bin/sh", "-c", command}, dir_.File("first.log"));
  ASSERT_THAT(first, IsOk());
  base::UniqueFd writer(::open(fifo.c_str(), O_WRONLY | O_CLOEXEC));  // s_client's stdin
  ASSERT_TRUE(writer.valid());
  ASSERT_TRUE(testing::WaitFor([&] { return base::FileExists(session); }, absl::Seconds(10)))
      << (*first)->Log();
  writer.reset();  // EOF: s_client ends
  ASSERT_TRUE((*first)->WaitForExit(absl::Seconds(10)).has_value());

  const uint64_t app_bytes = app_.bytes_received();
  const std::string early = dir_.Write("early.txt", "GET / HTTP/1.0\r\n\r\n");
  ProbeResult second = Probe(inbound_port_, {"-tls1_3", "-sess_in", session, "-early_data", early});
  // The session resumed, but its ticket allows no early data, so the client sends none.
  EXPECT_TRUE(absl::StrContains(second.output, "Reused, TLSv1.3")) << second.output;
  EXPECT_FALSE(absl::StrContains(second.output, "Early data was accepted")) << second.output;
  EXPECT_TRUE(absl::StrContains(second.output, "Early data was not sent") ||
              absl::StrContains(second.output, "Early data was rejected"))
      << second.output;
  EXPECT_EQ(app_.bytes_received(), app_bytes) << "early data reached the app";
}

// The outbound side offers only the same policy: an upstream that speaks only TLS 1.2, or only
// a ciphersuite or group outside it, is refused before any byte of the app leaves.
TEST_F(TlsPolicyTest, OutboundRefusesUpstreamsOutsideThePolicy) {
  const testing::IssuedLeaf upstream = ca_.Issue(kFrontend, absl::Hours(1));
  const std::string cert = dir_.Write("upstream.crt", upstream.ChainPem());
  const std::string key = dir_.Write("upstream.key", upstream.KeyPem(), 0600);
  struct Case {
    std::vector<std::string> server_options;
    bool accepted;
  };
  const std::vector<Case> cases = {
      {{"-tls1_3"}, true},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, false},
      {{"-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"}, false},
      {{"-tls1_3", "-groups", "ffdhe2048"}, false},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    // s_server takes a port of the kernel's choice and prints it: "ACCEPT 127.0.0.1:<port>".
    std::vector<std::string> argv = {openssl_,  "s_server", "-accept",  "127.0.0.1:0", "-cert",
                                     cert,      "-key",     key,        "-CAfile",     bundle_,
                                     "-Verify", "1",        "-naccept", "1",           "-rev"};
    argv.insert(argv.end(), c.server_options.begin(), c.server_options.end());
    auto server = testing::Subprocess::Start(argv, dir_.File(absl::StrCat("s_server.", i, ".log")));
    ASSERT_THAT(server, IsOk());
    std::optional<uint16_t> upstream_port;
    ASSERT_TRUE(testing::WaitFor(
        [&] { return (upstream_port = AcceptingPort((*server)->Log())).has_value(); },
        absl::Seconds(10)))
        << (*server)->Log();
    sidecar_.reset();
    ASSERT_NO_FATAL_FAILURE(StartSidecar("", *upstream_port));
    absl::StatusOr<base::UniqueFd> conn = testing::TcpConnect(outbound_port_);
    ASSERT_THAT(conn, IsOk());
    (void)testing::SendAll(conn->get(), "hello\n");
    absl::StatusOr<std::string> back = testing::RecvExactly(conn->get(), 6, absl::Seconds(10));
    EXPECT_EQ(back.ok() && *back == "olleh\n", c.accepted)
        << absl::StrJoin(c.server_options, " ") << ": " << (*server)->Log();
    conn->reset();
    // -naccept 1: s_server ends after the sidecar's one connection (or is stopped here).
    if (!(*server)->WaitForExit(absl::Seconds(10)).has_value()) {
      (*server)->Signal(SIGKILL);
      (*server)->WaitForExit(absl::Seconds(10));
    }
  }
}

// certmgr's gRPC listener: TLS 1.2 or 1.3, and in TLS 1.2 only ECDHE with AEAD.
TEST_F(TlsPolicyTest, CertmgrAcceptsOnlyModernTls) {
  std::unique_ptr<testing::CertmgrProcess> certmgr;
  MESHTLS_ASSERT_OK_AND_MOVE(certmgr, testing::CertmgrProcess::Start(dir_, "mesh.test"));
  bundle_ = certmgr->ca_pem_path();  // certmgr's serving certificate comes from its own root
  const std::vector<std::pair<std::vector<std::string>, bool>> offers = {
      {{"-tls1"}, false},
      {{"-tls1_1"}, false},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"}, false},
      {{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"}, false},
      {{"-tls1_3"}, true},
  };
  for (const auto& [options, accepted] : offers) {
    std::vector<std::string> with_alpn = options;
    with_alpn.insert(with_alpn.end(), {"-alpn", "h2", "-servername", "localhost"});
    ProbeResult r = Probe(certmgr->grpc_port(), with_alpn);
    EXPECT_EQ(r.established, accepted) << absl::StrJoin(options, " ") << ":\n" << r.output;
  }
}

}  // namespace
}  // namespace meshtls

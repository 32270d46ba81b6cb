// Writes the generated seeds of the fuzz corpora (tests/fuzz/*_corpus/gen-*): certificates,
// CSRs and tokens minted here, valid at the fixed time the targets validate at
// (1,700,000,000 = 2023-11-14), so the seeds never expire. Run by tests/fuzz/make-seeds.sh;
// the hand-written seeds beside them are not touched.
//
//   make_fuzz_seeds CORPUS_ROOT   (tests/fuzz)

#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/base/file.h"
#include "common/pki/certificate_builder.h"
#include "common/pki/csr.h"
#include "tests/fuzz/relay_script.h"
#include "tests/testing/jwt.h"
#include "tests/testing/test_ca.h"

namespace {

using namespace meshtls;

const absl::Time kAt = absl::FromUnixSeconds(1'700'000'000);

std::string Der(const pki::Certificate& c) {
  unsigned char* out = nullptr;
  const int n = i2d_X509(c.get(), &out);
  std::string der(reinterpret_cast<char*>(out), n > 0 ? n : 0);
  OPENSSL_free(out);
  return der;
}

// ChainSeed: the bundle-size byte, the bundle, then the chain.
std::string ChainSeed(const std::vector<pki::Certificate>& bundle,
                      const std::vector<pki::Certificate>& chain) {
  std::string seed(1, static_cast<char>(bundle.size() - 1));
  for (const auto* list : {&bundle, &chain}) {
    for (const pki::Certificate& c : *list) {
      seed += Der(c);
    }
  }
  return seed;
}

pki::PrivateKey Rsa2048() {
  pki::EvpPkeyPtr key(EVP_RSA_gen(2048));
  pki::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  char* pem = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &pem);
  return *pki::PrivateKey::FromPem(absl::string_view(pem, static_cast<size_t>(n)));
}

void Write(const std::string& dir, const std::string& name, const std::string& bytes) {
  if (!base::WriteFileAtomically(absl::StrCat(dir, "/gen-", name), bytes, 0644).ok()) {
    std::fprintf(stderr, "cannot write %s/gen-%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_fuzz_seeds CORPUS_ROOT\n");
    return 2;
  }
  const std::string root = argv[1];
  const std::string id = "spiffe://fuzz.test/ns/default/sa/web";

  // Chains: a valid SVID, one through an intermediate, one cross-signed, one expired.
  const std::string chains = root + "/svid_chain_corpus";
  testing::TestCa ca("fuzz.test", kAt);
  testing::TestCa other("fuzz.test", kAt);
  Write(chains, "svid", ChainSeed({ca.root()}, ca.Issue(id, absl::Hours(1), kAt).chain));
  Write(chains, "two-roots",
        ChainSeed({other.root(), ca.root()}, ca.Issue(id, absl::Hours(1), kAt).chain));
  pki::PrivateKey ica_key = *pki::PrivateKey::GenerateEcP256();
  pki::CertificateProfile ica;
  ica.common_name = "fuzz intermediate";
  ica.is_ca = true;
  ica.key_cert_sign = true;
  ica.not_before = kAt - absl::Hours(1);
  ica.not_after = kAt + absl::Hours(24);
  pki::Certificate ica_by_ca =
      *pki::BuildCertificate(ica, ica_key.get(), &ca.root(), ca.root_key().get());
  pki::Certificate ica_by_other =
      *pki::BuildCertificate(ica, ica_key.get(), &other.root(), other.root_key().get());
  pki::CertificateProfile leaf =
      testing::TestCa::LeafProfile(id, kAt - absl::Minutes(5), kAt + absl::Hours(1));
  pki::PrivateKey leaf_key = *pki::PrivateKey::GenerateEcP256();
  pki::Certificate leaf_by_ica =
      *pki::BuildCertificate(leaf, leaf_key.get(), &ica_by_ca, ica_key.get());
  Write(chains, "intermediate", ChainSeed({ca.root()}, {leaf_by_ica, ica_by_ca}));
  Write(chains, "cross-signed", ChainSeed({ca.root()}, {leaf_by_ica, ica_by_other, ica_by_ca}));
  Write(chains, "expired",
        ChainSeed({ca.root()}, ca.Issue(id, absl::Hours(1), kAt - absl::Hours(3)).chain));

  // CSRs: what a sidecar sends, and an RSA one.
  const std::string csrs = root + "/csr_corpus";
  Write(csrs, "p256", *pki::CreateCsrDer(*pki::PrivateKey::GenerateEcP256()));
  Write(csrs, "rsa2048", *pki::CreateCsrDer(Rsa2048()));

  // Tokens: a valid projected token with its JWKS, for both algorithms, and a wrong audience.
  const std::string jwts = root + "/jwt_corpus";
  for (const testing::JwtSigner& signer :
       {testing::NewEs256Signer("es"), testing::NewRs256Signer("rs")}) {
    const std::string jwks = testing::Jwks({signer});
    Write(jwts, signer.alg + "-valid",
          jwks + "\n" +
              testing::SignJwt(signer, testing::ServiceAccountClaims(
                                           "https://kubernetes.default.svc", "meshtls", "default",
                                           "web", kAt + absl::Hours(1), kAt - absl::Minutes(1))));
    Write(jwts, signer.alg + "-audience",
          jwks + "\n" +
              testing::SignJwt(signer, testing::ServiceAccountClaims(
                                           "https://kubernetes.default.svc", "kubernetes",
                                           "default", "web", kAt + absl::Hours(1), kAt)));
  }
  // Relay scripts: each way, a clean exchange, half-closes in both orders, backpressure, resets
  // and closes mid-stream, refused and raw peers, garbage inside the TLS stream, a refused
  // upstream.
  const std::string relays = root + "/relay_corpus";
  using fuzz::RelayOp;
  using fuzz::RelayPeer;
  using fuzz::RelayScript;
  for (bool outbound : {false, true}) {
    const std::string way = outbound ? "outbound-" : "inbound-";
    Write(relays, way + "clean",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 3000)
              .Op(RelayOp::kAppWrite, 5000)
              .Steps(8)
              .Op(RelayOp::kAppRead, 65536)
              .Op(RelayOp::kPeerRead, 65536)
              .bytes());
    Write(relays, way + "peer-closes-first",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 100)
              .Op(RelayOp::kPeerCloseNotify)
              .Op(RelayOp::kPeerFin)
              .Steps(8)
              .Op(RelayOp::kAppRead, 200)
              .Op(RelayOp::kAppWrite, 40000)
              .Steps(16)
              .bytes());
    Write(relays, way + "app-closes-first",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Op(RelayOp::kAppWrite, 1)
              .Steps(4)
              .Op(RelayOp::kAppFin)
              .Steps(8)
              .Op(RelayOp::kPeerWrite, 65536)
              .Steps(8)
              .bytes());
    Write(relays, way + "backpressure",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 65536)
              .Op(RelayOp::kPeerWrite, 65536)
              .Op(RelayOp::kAppWrite, 65536)
              .Op(RelayOp::kAppWrite, 65536)
              .Steps(16)
              .Op(RelayOp::kAppRead, 1000)
              .Steps(16)
              .Op(RelayOp::kPeerRead, 1000)
              .Steps(16)
              .bytes());
    Write(relays, way + "peer-resets",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 20000)
              .Op(RelayOp::kAppWrite, 20000)
              .Steps(2)
              .Op(RelayOp::kPeerReset)
              .Steps(8)
              .bytes());
    Write(relays, way + "app-resets",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 20000)
              .Steps(2)
              .Op(RelayOp::kAppReset)
              .Steps(8)
              .bytes());
    Write(relays, way + "close-unread",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 30000)
              .Op(RelayOp::kAppWrite, 30000)
              .Steps(4)
              .Op(RelayOp::kAppClose)
              .Op(RelayOp::kPeerClose)
              .bytes());
    Write(relays, way + "truncated-by-fin",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 500)
              .Op(RelayOp::kPeerFin)
              .Steps(8)
              .bytes());
    Write(relays, way + "garbage-record",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Steps(4)
              .Op(RelayOp::kPeerWrite, 100)
              .Raw(std::string("\x17\x03\x03\x00\x20", 5) + std::string(32, 'A'))
              .Steps(8)
              .bytes());
    Write(relays, way + "not-allowed",
          RelayScript(outbound, RelayPeer::kNotAllowed)
              .Op(RelayOp::kAppWrite, 100)
              .Steps(8)
              .Op(RelayOp::kPeerWrite, 100)
              .Steps(8)
              .bytes());
    Write(relays, way + "untrusted",
          RelayScript(outbound, RelayPeer::kUntrusted)
              .Op(RelayOp::kAppWrite, 100)
              .Steps(8)
              .Op(RelayOp::kPeerWrite, 100)
              .Steps(8)
              .bytes());
    Write(relays, way + "raw-peer",
          RelayScript(outbound, RelayPeer::kRaw)
              .Raw("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
              .Op(RelayOp::kAppWrite, 100)
              .Steps(8)
              .Op(RelayOp::kPeerRead, 4096)
              .bytes());
    Write(relays, way + "refused-upstream",
          RelayScript(outbound, RelayPeer::kAuthorized, /*refuse_upstream=*/true)
              .Op(RelayOp::kAppWrite, 100)
              .Steps(8)
              .bytes());
    Write(relays, way + "refused-mid-handshake",
          RelayScript(outbound, RelayPeer::kAuthorized)
              .Op(RelayOp::kRefuseUpstream)
              .Op(RelayOp::kPeerWrite, 100)
              .Steps(8)
              .bytes());
  }
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}

// Fuzz target: certmgr's Sign path for the CSR bytes a caller sends: parse and verify the CSR,
// and sign what passes with a CA made at start-up, as CaService does.

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "certmgr/ca/signer.h"
#include "common/pki/certificate_builder.h"
#include "common/pki/csr.h"
#include "common/pki/spiffe_id.h"
#include "tests/testing/fake_clock.h"

namespace {

using namespace meshtls;

struct Ca {
  testing::FakeClock clock{absl::FromUnixSeconds(1'700'000'000)};
  std::unique_ptr<certmgr::Signer> signer;
  pki::SpiffeId id = *pki::SpiffeId::Parse("spiffe://fuzz.test/ns/default/sa/caller");
};

Ca* MakeCa() {
  auto* ca = new Ca();
  pki::PrivateKey key = *pki::PrivateKey::GenerateEcP256();
  pki::CertificateProfile p;
  p.common_name = "fuzz root";
  p.is_ca = true;
  p.key_cert_sign = true;
  p.not_before = ca->clock.Now() - absl::Hours(1);
  p.not_after = ca->clock.Now() + absl::Hours(24 * 365);
  pki::Certificate root = *pki::BuildCertificate(p, key.get(), nullptr, key.get());
  certmgr::CaMaterial material{.cert = root, .key = key, .intermediates = {}, .roots = {root}};
  ca->signer =
      std::make_unique<certmgr::Signer>(std::move(material), certmgr::IssuancePolicy{}, ca->clock);
  return ca;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Ca* ca = MakeCa();  // one CA for the whole run (key generation is slow)
  absl::StatusOr<pki::VerifiedCsr> csr =
      pki::ParseAndVerifyCsr(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!csr.ok()) {
    return 0;
  }
  absl::StatusOr<certmgr::IssuedCertificate> issued =
      ca->signer->SignWorkload(*csr, ca->id, absl::Hours(1));
  if (!issued.ok()) {
    std::abort();  // a verified CSR must be signable
  }
  return 0;
}

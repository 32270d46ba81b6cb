// Fuzz target: the Kubernetes ServiceAccount-token authenticator, JWKS and JWT both from the
// input (a cluster's JWKS is operator input; the token is a caller's).
//
// Input: the JWKS document, a newline, then the bearer token. The JWKS is parsed on its own
// (ParseJwks) and then installed as the authenticator's key file, which authenticates the token
// at a fixed time (the seeds' tokens are valid then).

#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/time/time.h"
#include "certmgr/server/kubernetes_authenticator.h"
#include "common/base/file.h"
#include "tests/testing/fake_clock.h"

namespace {

using namespace meshtls;

struct Fixture {
  std::string jwks_path;
  testing::FakeClock clock{absl::FromUnixSeconds(1'700'000'000)};
};

Fixture* MakeFixture() {
  auto* f = new Fixture();
  char dir[] = "/tmp/meshtls-jwt-fuzz.XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::abort();
  }
  f->jwks_path = std::string(dir) + "/jwks.json";
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fixture = MakeFixture();
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  const std::string jwks = input.substr(0, newline);
  const std::string token = newline == std::string::npos ? "" : input.substr(newline + 1);
  (void)certmgr::ParseJwks(jwks);
  if (!base::WriteFileAtomically(fixture->jwks_path, jwks, 0600).ok()) {
    std::abort();
  }
  certmgr::KubernetesAuthenticator authenticator({.trust_domain = "fuzz.test",
                                                  .issuer = "https://kubernetes.default.svc",
                                                  .audience = "meshtls",
                                                  .jwks_file = fixture->jwks_path,
                                                  .allowed_namespaces = {},
                                                  .clock_skew = absl::Seconds(30)},
                                                 fixture->clock);
  (void)authenticator.Authenticate({.bearer_token = token, .peer_chain = {}});
  return 0;
}

// meshtls-handshake-bench: the CPU one mutual TLS 1.3 handshake costs in meshtls, both sides
// together, through the sidecar's own TlsContext (the production SSL_CTX settings, the
// certificate verification callback and the session-ticket callbacks) over a socketpair, with
// no proxy, kernel TCP or event loop around it. The pieces a handshake is made of are measured
// alongside (certificate parsing, chain verification, the primitives), so a profile can be read
// against them. Built when Google Benchmark is installed; scripts/bench.sh runs it.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "sidecar/tls/peer_authorizer.h"
#include "sidecar/tls/session_cache.h"
#include "sidecar/tls/tls_context.h"
#include "tests/testing/test_ca.h"

namespace meshtls::sidecar {
namespace {

constexpr char kTrustDomain[] = "bench.meshtls.local";
constexpr char kClientId[] = "spiffe://bench.meshtls.local/ns/bench/sa/client";
constexpr char kServerId[] = "spiffe://bench.meshtls.local/ns/bench/sa/server";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "handshake_bench: %s\n", what.c_str());
  std::exit(1);
}

// Pki is one test CA with a client and a server X.509-SVID, made once per process.
struct Pki {
  testing::TestCa ca{kTrustDomain};
  testing::IssuedLeaf client = ca.Issue(kClientId);
  testing::IssuedLeaf server = ca.Issue(kServerId);

  pki::CredentialBundle Bundle(const testing::IssuedLeaf& leaf) const {
    pki::CredentialBundle bundle{.chain = leaf.chain, .key = leaf.key, .trust_bundle = {}};
    bundle.trust_bundle.push_back(ca.root());
    return bundle;
  }
  static const Pki& Get() {
    static const Pki* pki = new Pki();
    return *pki;
  }
};

std::shared_ptr<const TlsContext> MakeContext(const testing::IssuedLeaf& leaf, bool resumption) {
  TlsSettings settings;
  settings.session_resumption = resumption;
  auto context = TlsContext::Create(Pki::Get().Bundle(leaf), kTrustDomain, settings, 1);
  if (!context.ok()) {
    Die(std::string(context.status().message()));
  }
  return *context;
}

PeerAuthorizer MakeAuthorizer(const std::string& id) {
  auto authorizer = PeerAuthorizer::Create({id});
  if (!authorizer.ok()) {
    Die(std::string(authorizer.status().message()));
  }
  return *std::move(authorizer);
}

// OneConnection runs one connection between the two contexts to completion: both handshakes,
// then one byte from server to client, which also delivers the server's session ticket (TLS 1.3
// sends it after the handshake) into `cache` when resumption is on. Returns whether the
// handshake resumed.
bool OneConnection(const TlsContext& server_context, const TlsContext& client_context,
                   const PeerAuthorizer& allow, const PeerAuthorizer& expect, SessionCache* cache) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0) {
    Die("socketpair failed");
  }
  PeerCheck server_check;
  server_check.authorizer = &allow;
  PeerCheck client_check;
  client_check.authorizer = &expect;
  client_check.session_cache = cache;
  auto server = server_context.NewSsl(/*server=*/true, fds[0], &server_check);
  auto client = client_context.NewSsl(/*server=*/false, fds[1], &client_check);
  if (!server.ok() || !client.ok()) {
    Die("NewSsl failed");
  }
  if (cache != nullptr) {
    if (auto entry = cache->Take(client_context.generation(), absl::Now())) {
      SSL_set_session(client->get(), entry->session.get());
      client_check.resumed_peer_id = entry->peer;
    }
  }
  bool server_done = false;
  bool client_done = false;
  for (int round = 0; !(server_done && client_done); ++round) {
    if (round > 20) {
      Die("the handshake did not complete in 20 rounds");
    }
    for (auto [ssl, done] :
         {std::pair{client->get(), &client_done}, std::pair{server->get(), &server_done}}) {
      if (*done) {
        continue;
      }
      int rc = SSL_do_handshake(ssl);
      if (rc == 1) {
        *done = true;
      } else if (int err = SSL_get_error(ssl, rc);
                 err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        Die("handshake failed: " + client_check.detail + server_check.detail);
      }
    }
  }
  const char byte = 'x';
  char got = 0;
  if (SSL_write(server->get(), &byte, 1) != 1 || SSL_read(client->get(), &got, 1) != 1) {
    Die("the first byte did not arrive");
  }
  const bool resumed = SSL_session_reused(client->get()) == 1;
  SSL_shutdown(client->get());
  SSL_shutdown(server->get());
  close(fds[0]);
  close(fds[1]);
  return resumed;
}

// Modes: 0 a full handshake between peers that have met before (each side's verified-chain
// cache knows the other's chain, as between sidecars that talk often); 1 a resumed one; 2 a
// full handshake on first contact (a new client certificate and context every time, so
// neither side has seen the other's chain; making them is not timed).
void BM_Handshake(benchmark::State& state) {
  const int mode = static_cast<int>(state.range(0));
  const bool resumption = mode == 1;
  const Pki& pki = Pki::Get();
  auto server_context = MakeContext(pki.server, resumption);
  auto client_context = MakeContext(pki.client, resumption);
  PeerAuthorizer allow = MakeAuthorizer(kClientId);
  PeerAuthorizer expect = MakeAuthorizer(kServerId);
  SessionCache cache;
  SessionCache* cache_or_null = resumption ? &cache : nullptr;
  OneConnection(*server_context, *client_context, allow, expect, cache_or_null);  // warm up
  int64_t resumed = 0;
  for (auto _ : state) {
    if (mode == 2) {
      state.PauseTiming();
      server_context = MakeContext(pki.server, false);
      client_context = MakeContext(pki.ca.Issue(kClientId), false);
      state.ResumeTiming();
    }
    resumed += OneConnection(*server_context, *client_context, allow, expect, cache_or_null);
  }
  if (resumption && resumed != state.iterations()) {
    state.SkipWithError("a handshake with resumption on did not resume");
  }
  if (!resumption && resumed != 0) {
    state.SkipWithError("a handshake with resumption off resumed");
  }
  state.SetLabel(mode == 0   ? "full, peers met before, both sides"
                 : mode == 1 ? "resumed, both sides"
                             : "full, first contact, both sides");
}
BENCHMARK(BM_Handshake)->ArgName("mode")->Arg(0)->Arg(1)->Arg(2)->UseRealTime();

// The heap one resumable session costs the inbound side while it waits in the
// ServerSessionStore (the session and the client certificate it holds): kSessions full
// handshakes whose tickets are never used, heap in use before and after (glibc mallinfo2).
void BM_StoredSessionMemory(benchmark::State& state) {
  constexpr int kSessions = 1000;
  const Pki& pki = Pki::Get();
  PeerAuthorizer allow = MakeAuthorizer(kClientId);
  PeerAuthorizer expect = MakeAuthorizer(kServerId);
  for (auto _ : state) {
    auto server_context = MakeContext(pki.server, /*resumption=*/true);
    auto client_context = MakeContext(pki.client, /*resumption=*/true);
    OneConnection(*server_context, *client_context, allow, expect, nullptr);  // warm up
    const size_t stored_before = server_context->server_sessions().size();
    const size_t heap_before = mallinfo2().uordblks;
    for (int i = 0; i < kSessions; ++i) {
      OneConnection(*server_context, *client_context, allow, expect, nullptr);
    }
    const size_t stored = server_context->server_sessions().size() - stored_before;
    if (stored != kSessions) {
      state.SkipWithError("the server did not keep one session per handshake");
      return;
    }
    state.counters["bytes_per_session"] =
        static_cast<double>(mallinfo2().uordblks - heap_before) / static_cast<double>(stored);
  }
}
BENCHMARK(BM_StoredSessionMemory)->Iterations(1)->Unit(benchmark::kMillisecond);

// The pieces: what libcrypto spends on the peer's leaf certificate before and during
// verification, and the primitives of one side.
void BM_ParseCertificate(benchmark::State& state) {
  const std::string der = Pki::Get().client.chain[0].ToDer();
  for (auto _ : state) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
    X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
    benchmark::DoNotOptimize(cert);
    X509_free(cert);
  }
}
BENCHMARK(BM_ParseCertificate);

void BM_VerifyChain(benchmark::State& state) {
  const Pki& pki = Pki::Get();
  auto verifier = pki::ChainVerifier::Create(kTrustDomain, {pki.ca.root()});
  if (!verifier.ok()) {
    Die(std::string(verifier.status().message()));
  }
  for (auto _ : state) {
    auto id = (*verifier)->VerifyChain(pki.client.chain, pki::PeerRole::kClient, absl::Now());
    if (!id.ok()) {
      Die(std::string(id.status().message()));
    }
  }
}
BENCHMARK(BM_VerifyChain);

void BM_EcdsaP256Sign(benchmark::State& state) {
  const pki::PrivateKey& key = Pki::Get().client.key;
  const unsigned char digest[32] = {1};
  unsigned char signature[80];
  for (auto _ : state) {
    std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
        EVP_PKEY_CTX_new(key.get(), nullptr), EVP_PKEY_CTX_free);
    size_t length = sizeof(signature);
    if (EVP_PKEY_sign_init(ctx.get()) != 1 ||
        EVP_PKEY_sign(ctx.get(), signature, &length, digest, sizeof(digest)) != 1) {
      Die("ECDSA sign failed");
    }
  }
}
BENCHMARK(BM_EcdsaP256Sign);

}  // namespace
}  // namespace meshtls::sidecar

BENCHMARK_MAIN();

#include "sidecar/tls/tls_context.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "certmgr/base/status_macros.h"
#include "certmgr/pki/openssl_error.h"
#include "sidecar/tls/session_cache.h"

namespace meshtls::sidecar {
namespace {

int PeerCheckIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// VerifyPeer replaces OpenSSL's chain verification for both directions: the inbound side
// verifies a client certificate, the outbound side a server certificate.
int VerifyPeer(X509_STORE_CTX* store_ctx, void* arg) {
  const auto* context = static_cast<const TlsContext*>(arg);
  SSL* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* check =
      ssl == nullptr ? nullptr : static_cast<PeerCheck*>(SSL_get_ex_data(ssl, PeerCheckIndex()));
  if (check == nullptr) {
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_UNSPECIFIED);
    return 0;
  }
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  if (leaf != nullptr) {
    std::vector<std::string> uris = pki::Certificate::Wrap(pki::UpRef(leaf)).UriSans();
    if (!uris.empty()) {
      check->claimed_id = uris[0].substr(0, 256);
    }
  }
  const pki::PeerRole role = SSL_is_server(ssl) ? pki::PeerRole::kClient : pki::PeerRole::kServer;
  int x509_error = X509_V_OK;
  absl::StatusOr<pki::SpiffeId> id = context->verifier().Verify(
      leaf, X509_STORE_CTX_get0_untrusted(store_ctx), role, absl::Now(), &x509_error);
  if (!id.ok()) {
    check->x509_error = x509_error;
    check->detail = std::string(id.status().message());
    X509_STORE_CTX_set_error(store_ctx, x509_error);
    return 0;
  }
  check->verified = true;
  check->peer_id = *id;
  if (check->authorizer != nullptr && !check->authorizer->Allows(*id)) {
    check->identity_denied = true;
    check->detail = absl::StrCat(id->str(), " is not allowed on this listener");
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  X509_STORE_CTX_set_error(store_ctx, X509_V_OK);
  return 1;
}

PeerCheck* CheckOf(SSL* ssl) {
  return static_cast<PeerCheck*>(SSL_get_ex_data(ssl, PeerCheckIndex()));
}

const TlsContext* ContextOf(SSL* ssl) {
  return static_cast<const TlsContext*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

bool PeerCertificateStillValid(SSL_SESSION* session) {
  X509* peer = SSL_SESSION_get0_peer(session);
  return peer != nullptr && X509_cmp_current_time(X509_get0_notAfter(peer)) > 0;
}

// OnTicketKey encrypts new tickets under the current period's key and decrypts tickets under
// the current or the previous one (asking OpenSSL to issue a fresh ticket for the latter).
// Runs on worker threads; the derivation is pure, and each thread keeps its last result.
int OnTicketKey(SSL* ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt) {
  const TlsContext* context = ContextOf(ssl);
  if (context == nullptr) {
    return -1;
  }
  struct Cached {
    const TlsContext* context = nullptr;
    uint64_t generation = 0;
    int64_t period = -1;
    std::pair<TlsContext::TicketKey, TlsContext::TicketKey> keys;
  };
  thread_local Cached cached;
  const int64_t period = context->TicketPeriod(absl::Now());
  if (cached.context != context || cached.generation != context->generation() ||
      cached.period != period) {
    cached.keys = {context->DeriveTicketKey(period), context->DeriveTicketKey(period - 1)};
    cached.context = context;
    cached.generation = context->generation();
    cached.period = period;
  }
  const TlsContext::TicketKey* key = nullptr;
  int result = 1;
  if (encrypt == 1) {
    key = &cached.keys.first;
    std::memcpy(key_name, key->name, sizeof(key->name));
    if (RAND_bytes(iv, 16) != 1) {
      return -1;
    }
  } else if (std::memcmp(key_name, cached.keys.first.name, 16) == 0) {
    key = &cached.keys.first;
  } else if (std::memcmp(key_name, cached.keys.second.name, 16) == 0) {
    key = &cached.keys.second;
    result = 2;  // valid, but renew: the next ticket is under the current key
  } else {
    return 0;  // another generation's or an expired key: full handshake
  }
  if (EVP_CipherInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key->aes_key, iv, encrypt) != 1) {
    return -1;
  }
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(
          OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key->hmac_key), sizeof(key->hmac_key)),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) {
    return -1;
  }
  return result;
}

// OnGenerateTicket stores the peer's verified identity in the ticket (server side).
int OnGenerateTicket(SSL* ssl, void* /*arg*/) {
  PeerCheck* check = CheckOf(ssl);
  SSL_SESSION* session = SSL_get0_session(ssl);
  if (check == nullptr || session == nullptr) {
    return 1;  // no identity in the ticket: OnDecryptTicket will never accept it
  }
  const pki::SpiffeId* id = nullptr;
  if (SSL_session_reused(ssl) == 1 && check->resumed_peer_id.has_value()) {
    id = &*check->resumed_peer_id;
  } else if (check->verified && !check->identity_denied && check->peer_id.has_value()) {
    id = &*check->peer_id;
  }
  if (id == nullptr) {
    return 1;
  }
  return SSL_SESSION_set1_ticket_appdata(session, id->str().data(), id->str().size());
}

// OnDecryptTicket decides whether a ticket of ours may resume (server side): only with the
// identity it carries still allowed on this listener and the peer certificate still valid.
// Anything else falls back to a full handshake, where the certificate is verified again (and a
// peer that is no longer allowed is refused as identity_denied).
SSL_TICKET_RETURN OnDecryptTicket(SSL* ssl, SSL_SESSION* session, const unsigned char* /*name*/,
                                  size_t /*name_length*/, SSL_TICKET_STATUS status, void* /*arg*/) {
  if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW) {
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  PeerCheck* check = CheckOf(ssl);
  void* data = nullptr;
  size_t length = 0;
  if (check == nullptr || SSL_SESSION_get0_ticket_appdata(session, &data, &length) != 1 ||
      length == 0 || !PeerCertificateStillValid(session)) {
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  absl::StatusOr<pki::SpiffeId> id =
      pki::SpiffeId::Parse(absl::string_view(static_cast<const char*>(data), length));
  if (!id.ok() || (check->authorizer != nullptr && !check->authorizer->Allows(*id))) {
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  check->resumed_peer_id = *std::move(id);
  // Renew: the client uses a ticket once, so a resumed connection must bring the next one.
  return SSL_TICKET_RETURN_USE_RENEW;
}

// OnNewClientSession files a ticket the server sent into the listener's cache (client side),
// with the server identity this connection verified (or resumed with).
int OnNewClientSession(SSL* ssl, SSL_SESSION* session) {
  PeerCheck* check = CheckOf(ssl);
  const TlsContext* context = ContextOf(ssl);
  if (check == nullptr || check->session_cache == nullptr || context == nullptr ||
      SSL_SESSION_is_resumable(session) != 1) {
    return 0;
  }
  std::optional<pki::SpiffeId> peer;
  if (SSL_session_reused(ssl) == 1) {
    peer = check->resumed_peer_id;
  } else if (check->verified && !check->identity_denied) {
    peer = check->peer_id;
  }
  if (!peer.has_value()) {
    return 0;
  }
  absl::Time expires =
      absl::FromTimeT(SSL_SESSION_get_time(session) + SSL_SESSION_get_timeout(session));
  if (X509* server = SSL_SESSION_get0_peer(session)) {
    expires = std::min(expires, pki::Asn1TimeToAbsl(X509_get0_notAfter(server)));
  }
  // A copy: `session` is also the connection's own, which OpenSSL marks non-resumable when the
  // connection ends without close_notify.
  SslSessionPtr copy(SSL_SESSION_dup(session));
  if (copy == nullptr) {
    return 0;
  }
  check->session_cache->Put(SessionCache::Entry{.session = std::move(copy),
                                                .peer = *std::move(peer),
                                                .generation = context->generation(),
                                                .expires = expires});
  return 0;  // OpenSSL keeps its own reference
}

void ConfigureResumption(SSL_CTX* ctx, const TlsSettings& settings, bool server) {
  if (!settings.session_resumption) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    return;
  }
  SSL_CTX_set_timeout(ctx, static_cast<long>(absl::ToInt64Seconds(settings.ticket_lifetime)));
  if (server) {
    // Stateless tickets only: nothing is cached server-side, and any worker can resume any
    // ticket of this generation.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    // Required by OpenSSL to resume when client certificates are verified; the ticket keys
    // already scope tickets to this generation.
    static constexpr unsigned char kSessionContext[] = "meshtls-sidecar";
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, OnTicketKey);
    SSL_CTX_set_session_ticket_cb(ctx, OnGenerateTicket, OnDecryptTicket, nullptr);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, OnNewClientSession);
  }
}

absl::Status Configure(SSL_CTX* ctx, bool server, const pki::CredentialBundle& bundle,
                       const TlsSettings& settings, const TlsContext* self) {
  if (SSL_CTX_set_min_proto_version(ctx, settings.allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION) !=
          1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "setting TLS versions");
  }
  if (settings.allow_tls12 &&
      SSL_CTX_set_cipher_list(ctx,
                              "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                              "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
                              "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305") != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "setting TLS 1.2 ciphers");
  }
  if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "setting key exchange groups");
  }
  SSL_CTX_set_options(
      ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_app_data(ctx, const_cast<TlsContext*>(self));
  ConfigureResumption(ctx, settings, server);
  SSL_CTX_set_max_early_data(ctx, 0);  // no 0-RTT: early data can be replayed
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // One read() per burst of records rather than two per record (header, then body); the relay
  // loop asks SSL_has_pending() for what was read ahead.
  SSL_CTX_set_read_ahead(ctx, 1);
  if (SSL_CTX_use_certificate(ctx, bundle.chain[0].get()) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInvalidArgument, "loading the certificate");
  }
  for (size_t i = 1; i < bundle.chain.size(); ++i) {
    pki::X509Ptr extra = pki::UpRef(bundle.chain[i].get());
    if (SSL_CTX_add0_chain_cert(ctx, extra.get()) != 1) {
      return pki::OpenSslError(absl::StatusCode::kInvalidArgument, "adding a chain certificate");
    }
    (void)extra.release();  // now owned by ctx
  }
  if (SSL_CTX_use_PrivateKey(ctx, bundle.key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInvalidArgument,
                             "the private key does not match the certificate");
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_cert_verify_callback(ctx, VerifyPeer, const_cast<TlsContext*>(self));
  // The CAs a server names in its CertificateRequest: the trust bundle's subjects.
  for (const pki::Certificate& root : bundle.trust_bundle) {
    if (SSL_CTX_add_client_CA(ctx, root.get()) != 1) {
      return pki::OpenSslError(absl::StatusCode::kInvalidArgument, "adding a client CA name");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(
    const pki::CredentialBundle& bundle, const std::string& trust_domain,
    const TlsSettings& settings, uint64_t generation) {
  if (bundle.chain.empty()) {
    return absl::InvalidArgumentError("no certificate");
  }
  std::vector<std::string> uris = bundle.chain[0].UriSans();
  if (uris.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the certificate has ", uris.size(), " URI SANs; want exactly one SPIFFE ID"));
  }
  MESHTLS_ASSIGN_OR_RETURN(pki::SpiffeId identity, pki::SpiffeId::Parse(uris[0]));
  if (identity.trust_domain() != trust_domain) {
    return absl::InvalidArgumentError(absl::StrCat("the certificate's identity ", identity.str(),
                                                   " is not in trust domain ", trust_domain));
  }
  if (!bundle.chain[0].MatchesKey(bundle.key.get())) {
    return absl::InvalidArgumentError("the private key does not match the certificate");
  }
  auto context =
      std::shared_ptr<TlsContext>(new TlsContext(bundle, identity, settings, generation));
  if (RAND_bytes(context->ticket_secret_, sizeof(context->ticket_secret_)) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "generating the ticket secret");
  }
  MESHTLS_ASSIGN_OR_RETURN(context->verifier_,
                           pki::ChainVerifier::Create(trust_domain, bundle.trust_bundle));
  context->server_.reset(SSL_CTX_new(TLS_server_method()));
  context->client_.reset(SSL_CTX_new(TLS_client_method()));
  if (context->server_ == nullptr || context->client_ == nullptr) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "SSL_CTX_new");
  }
  MESHTLS_RETURN_IF_ERROR(Configure(context->server_.get(), /*server=*/true, context->bundle_,
                                    settings, context.get()));
  MESHTLS_RETURN_IF_ERROR(Configure(context->client_.get(), /*server=*/false, context->bundle_,
                                    settings, context.get()));
  ERR_clear_error();
  return std::shared_ptr<const TlsContext>(std::move(context));
}

TlsContext::TicketKey TlsContext::DeriveTicketKey(int64_t period) const {
  TicketKey key;
  // Three HMAC-SHA256 outputs of the generation's secret, one per purpose, bound to the period.
  auto derive = [&](char purpose, unsigned char* out, size_t length) {
    unsigned char message[9];
    message[0] = static_cast<unsigned char>(purpose);
    for (int i = 0; i < 8; ++i) {
      message[1 + i] = static_cast<unsigned char>(static_cast<uint64_t>(period) >> (8 * i));
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    HMAC(EVP_sha256(), ticket_secret_, sizeof(ticket_secret_), message, sizeof(message), digest,
         &digest_length);
    std::memcpy(out, digest, std::min<size_t>(length, digest_length));
  };
  derive('n', key.name, sizeof(key.name));
  derive('e', key.aes_key, sizeof(key.aes_key));
  derive('m', key.hmac_key, sizeof(key.hmac_key));
  return key;
}

int64_t TlsContext::TicketPeriod(absl::Time now) const {
  const int64_t seconds = std::max<int64_t>(1, absl::ToInt64Seconds(settings_.ticket_lifetime));
  return absl::ToUnixSeconds(now) / seconds;
}

absl::StatusOr<SslPtr> TlsContext::NewSsl(bool server, int fd, PeerCheck* check) const {
  SslPtr ssl(SSL_new(server ? server_.get() : client_.get()));
  if (ssl == nullptr || SSL_set_fd(ssl.get(), fd) != 1 ||
      SSL_set_ex_data(ssl.get(), PeerCheckIndex(), check) != 1) {
    return pki::OpenSslError(absl::StatusCode::kResourceExhausted, "SSL_new");
  }
  if (server) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }
  return ssl;
}

}  // namespace meshtls::sidecar

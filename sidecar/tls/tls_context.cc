#include "sidecar/tls/tls_context.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/base/status_macros.h"
#include "common/pki/openssl_error.h"
#include "sidecar/tls/server_session_store.h"
#include "sidecar/tls/session_cache.h"
#include "sidecar/tls/verified_chain_cache.h"

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
  STACK_OF(X509)* sent = X509_STORE_CTX_get0_untrusted(store_ctx);
  const pki::PeerRole role = SSL_is_server(ssl) ? pki::PeerRole::kClient : pki::PeerRole::kServer;
  const absl::Time now = absl::Now();
  // A peer reconnecting with the chain this worker verified last time skips path validation
  // (see VerifiedChainCache for why that is safe).
  thread_local VerifiedChainCache verified_chains;
  std::optional<std::string> key =
      VerifiedChainCache::MakeKey(context->verifier_serial(), role, leaf, sent);
  std::optional<pki::SpiffeId> id;
  if (key.has_value()) {
    id = verified_chains.Find(*key, now);
  }
  if (!id.has_value()) {
    if (leaf != nullptr) {
      std::vector<std::string> uris = pki::Certificate::Wrap(pki::UpRef(leaf)).UriSans();
      if (!uris.empty()) {
        check->claimed_id = uris[0].substr(0, 256);
      }
    }
    int x509_error = X509_V_OK;
    pki::ValidityWindow window;
    absl::StatusOr<pki::SpiffeId> verified =
        context->verifier().Verify(leaf, sent, role, now, &x509_error, &window);
    if (!verified.ok()) {
      check->x509_error = x509_error;
      check->detail = std::string(verified.status().message());
      X509_STORE_CTX_set_error(store_ctx, x509_error);
      return 0;
    }
    id = *std::move(verified);
    if (key.has_value()) {
      verified_chains.Insert(*std::move(key), *id, window);
    }
  } else {
    check->claimed_id = id->str();
  }
  check->verified = true;
  check->peer_id = *id;
  if (check->authorizer != nullptr && !check->authorizer->Allows(*id)) {
    check->identity_denied = true;
    check->detail = absl::StrCat(id->str(), " is not allowed on this listener");
    if (SSL_is_server(ssl) && SSL_version(ssl) == TLS1_3_VERSION) {
      // A failure here would send handshake_failure (OpenSSL maps every verification error to
      // an alert, none to access_denied). Accept the chain instead and let the connection send
      // access_denied through RefuseDeniedIdentity once the handshake is done.
      check->deny_after_handshake = true;
      X509_STORE_CTX_set_error(store_ctx, X509_V_OK);
      return 1;
    }
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

// EstablishedPeer is the peer identity a new session of `ssl` is established with: the one
// resumed with, or the one verified and allowed in this handshake.
std::optional<pki::SpiffeId> EstablishedPeer(SSL* ssl, const PeerCheck& check) {
  if (SSL_session_reused(ssl) == 1) {
    return check.resumed_peer_id;
  }
  if (check.verified && !check.identity_denied) {
    return check.peer_id;
  }
  return std::nullopt;
}

// OnNewServerSession files a session the server is issuing a ticket for (inbound side), with
// the client identity this connection verified or resumed with. The store keeps a copy: the
// connection's own session is marked non-resumable by OpenSSL if the connection ends without
// close_notify (a client reset), and a ticket, like a stateless one, should outlive that.
int OnNewServerSession(SSL* ssl, SSL_SESSION* session) {
  PeerCheck* check = CheckOf(ssl);
  const TlsContext* context = ContextOf(ssl);
  if (check == nullptr || context == nullptr) {
    return 0;
  }
  std::optional<pki::SpiffeId> peer = EstablishedPeer(ssl, *check);
  X509* client = SSL_SESSION_get0_peer(session);
  unsigned int ticket_length = 0;
  const unsigned char* ticket = SSL_SESSION_get_id(session, &ticket_length);
  if (!peer.has_value() || client == nullptr || ticket_length == 0) {
    return 0;  // nothing to authorize a resumption with: the ticket will not resume
  }
  const absl::Time expires =
      std::min(absl::FromTimeT(SSL_SESSION_get_time(session) + SSL_SESSION_get_timeout(session)),
               pki::Asn1TimeToAbsl(X509_get0_notAfter(client)));
  SslSessionPtr copy(SSL_SESSION_dup(session));
  if (copy == nullptr) {
    return 0;
  }
  context->server_sessions().Put(
      std::string(reinterpret_cast<const char*>(ticket), ticket_length),
      ServerSessionStore::Entry{
          .session = std::move(copy), .peer = *std::move(peer), .expires = expires});
  return 0;  // OpenSSL keeps its own reference
}

// OnGetServerSession decides whether a ticket may resume (inbound side): only once, before it
// expires, and with the identity it was issued to still allowed on the listener the client
// presents it to. Anything else is a full handshake, which verifies the certificate again (and
// refuses a peer that is no longer allowed as identity_denied).
SSL_SESSION* OnGetServerSession(SSL* ssl, const unsigned char* ticket, int ticket_length,
                                int* copy) {
  *copy = 0;  // OpenSSL takes over the store's reference
  PeerCheck* check = CheckOf(ssl);
  const TlsContext* context = ContextOf(ssl);
  if (check == nullptr || context == nullptr || ticket_length <= 0) {
    return nullptr;
  }
  std::optional<ServerSessionStore::Entry> entry = context->server_sessions().Take(
      std::string(reinterpret_cast<const char*>(ticket), static_cast<size_t>(ticket_length)),
      absl::Now());
  if (!entry.has_value() ||
      (check->authorizer != nullptr && !check->authorizer->Allows(entry->peer))) {
    return nullptr;
  }
  check->resumed_peer_id = std::move(entry->peer);
  return entry->session.release();
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
  std::optional<pki::SpiffeId> peer = EstablishedPeer(ssl, *check);
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

// A private-use extension number (RFC 8446 §4.2) for DenyInTicket; it is never sent.
constexpr unsigned int kDenyExtensionType = 0xff5a;

// DenyInTicket is the server's add callback of an extension of NewSessionTicket messages. It
// never adds anything; for a connection whose client identity was denied after an accepted
// chain (PeerCheck::deny_after_handshake) it fails with access_denied, which makes OpenSSL send
// that alert, encrypted, in place of the ticket. This is the one place in OpenSSL 3.0's server
// past the client's Certificate where the application chooses the alert: a verification
// callback's error is mapped by ssl_x509err2alert, which has no access_denied.
int DenyInTicket(SSL* ssl, unsigned int /*ext_type*/, unsigned int /*context*/,
                 const unsigned char** /*out*/, size_t* /*outlen*/, X509* /*x*/,
                 size_t /*chainidx*/, int* alert, void* /*add_arg*/) {
  const PeerCheck* check = CheckOf(ssl);
  if (check != nullptr && check->deny_after_handshake) {
    *alert = SSL_AD_ACCESS_DENIED;
    return -1;
  }
  return 0;  // add nothing
}

void ConfigureResumption(SSL_CTX* ctx, const TlsSettings& settings, bool server) {
  if (!settings.session_resumption) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    return;
  }
  SSL_CTX_set_timeout(ctx, static_cast<long>(absl::ToInt64Seconds(settings.session_lifetime)));
  if (server) {
    // Stateful TLS 1.3 tickets (SSL_OP_NO_TICKET): a ticket is a random session ID, and the
    // session stays in this generation's ServerSessionStore, which OpenSSL's own cache does not
    // duplicate (NO_INTERNAL).
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_set_num_tickets(ctx, 1);
    // Required by OpenSSL to resume when client certificates are verified; the store already
    // scopes sessions to this generation.
    static constexpr unsigned char kSessionContext[] = "meshtls-sidecar";
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
    SSL_CTX_sess_set_new_cb(ctx, OnNewServerSession);
    SSL_CTX_sess_set_get_cb(ctx, OnGetServerSession);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, OnNewClientSession);
  }
}

int SelectAlpn(SSL* ssl, const unsigned char** out, unsigned char* out_length,
               const unsigned char* in, unsigned int in_length, void* /*arg*/) {
  // `meshtls-h2` on every port; plain `h2` only on the pooled port (15008), where nothing else
  // is spoken: elsewhere an HTTP/2 client with a workload certificate of its own is relayed to
  // the app, as before the pooled transport.
  const PeerCheck* check = CheckOf(ssl);
  const bool pooled_port = check != nullptr && check->pooled_port;
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_length, kPooledAlpn,
                            pooled_port ? sizeof(kPooledAlpn) : kMeshtlsH2AlpnLength, in,
                            in_length) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;  // not offered: the `tls` transport
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
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
  if (server) {
    // ALPN `meshtls-h2` (or `h2` on the pooled port) asks for the pooled transport: HTTP/2
    // CONNECT streams over this connection. Anything else gets one relayed connection.
    SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, nullptr);
  }
  if (server && SSL_CTX_add_custom_ext(ctx, kDenyExtensionType, SSL_EXT_TLS1_3_NEW_SESSION_TICKET,
                                       DenyInTicket, nullptr, nullptr, nullptr, nullptr) != 1) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "adding the ticket extension callback");
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
  MESHTLS_ASSIGN_OR_RETURN(context->verifier_,
                           pki::ChainVerifier::Create(trust_domain, bundle.trust_bundle));
  static std::atomic<uint64_t> verifiers_created{0};
  context->verifier_serial_ = ++verifiers_created;
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

void TlsContext::BindPeerCheck(SSL* ssl, PeerCheck* check) {
  SSL_set_ex_data(ssl, PeerCheckIndex(), check);
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

bool SelectedPooledAlpn(const SSL* ssl) {
  const unsigned char* alpn = nullptr;
  unsigned int length = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &length);
  const absl::string_view selected(reinterpret_cast<const char*>(alpn), length);
  return selected == "meshtls-h2" || selected == "h2";
}

}  // namespace meshtls::sidecar

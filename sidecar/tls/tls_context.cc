#include "sidecar/tls/tls_context.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "certmgr/base/status_macros.h"
#include "certmgr/pki/openssl_error.h"

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

absl::Status Configure(SSL_CTX* ctx, const pki::CredentialBundle& bundle,
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
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  // Session resumption is off until resumed sessions carry the peer identity (issue #4): a
  // resumed handshake skips the verify callback, and authorization must never be skipped.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_max_early_data(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
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
  auto context = std::shared_ptr<TlsContext>(new TlsContext(bundle, identity, generation));
  MESHTLS_ASSIGN_OR_RETURN(context->verifier_,
                           pki::ChainVerifier::Create(trust_domain, bundle.trust_bundle));
  context->server_.reset(SSL_CTX_new(TLS_server_method()));
  context->client_.reset(SSL_CTX_new(TLS_client_method()));
  if (context->server_ == nullptr || context->client_ == nullptr) {
    return pki::OpenSslError(absl::StatusCode::kInternal, "SSL_CTX_new");
  }
  MESHTLS_RETURN_IF_ERROR(
      Configure(context->server_.get(), context->bundle_, settings, context.get()));
  MESHTLS_RETURN_IF_ERROR(
      Configure(context->client_.get(), context->bundle_, settings, context.get()));
  ERR_clear_error();
  return std::shared_ptr<const TlsContext>(std::move(context));
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

#include "certmgr/pki/chain_verifier.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "certmgr/pki/openssl_error.h"

namespace meshtls::pki {
namespace {

constexpr int kMaxChainDepth = 8;

absl::Status Fail(int code, int* x509_error, absl::string_view why) {
  if (x509_error != nullptr) {
    *x509_error = code;
  }
  return absl::UnauthenticatedError(why);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ChainVerifier>> ChainVerifier::Create(
    std::string trust_domain, std::vector<Certificate> roots) {
  if (absl::Status s = SpiffeId::ValidateTrustDomain(trust_domain); !s.ok()) {
    return s;
  }
  return CreateWithDomain(std::move(trust_domain), std::move(roots));
}

absl::StatusOr<std::shared_ptr<const ChainVerifier>> ChainVerifier::CreatePathOnly(
    std::vector<Certificate> roots) {
  return CreateWithDomain("", std::move(roots));
}

absl::StatusOr<std::shared_ptr<const ChainVerifier>> ChainVerifier::CreateWithDomain(
    std::string trust_domain, std::vector<Certificate> roots) {
  if (roots.empty()) {
    return absl::InvalidArgumentError("trust bundle has no root certificate");
  }
  X509StorePtr store(X509_STORE_new());
  if (store == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_new");
  }
  for (const Certificate& root : roots) {
    if (!root.IsCa()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle entry \"", root.SubjectText(), "\" is not a CA certificate"));
    }
    if (X509_STORE_add_cert(store.get(), root.get()) != 1) {
      unsigned long err = ERR_peek_last_error();
      if (ERR_GET_REASON(err) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
        return OpenSslError(absl::StatusCode::kInvalidArgument, "adding a trust bundle root");
      }
      ERR_clear_error();
    }
  }
  X509_STORE_set_flags(store.get(), X509_V_FLAG_X509_STRICT);
  return std::shared_ptr<const ChainVerifier>(
      new ChainVerifier(std::move(trust_domain), std::move(roots), std::move(store)));
}

absl::Status ChainVerifier::VerifyPath(X509* leaf, STACK_OF(X509) * untrusted, PeerRole role,
                                       absl::Time now, int* x509_error,
                                       ValidityWindow* window) const {
  if (x509_error != nullptr) {
    *x509_error = X509_V_OK;
  }
  if (leaf == nullptr) {
    return Fail(X509_V_ERR_UNSPECIFIED, x509_error, "no certificate");
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (ctx == nullptr || X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, untrusted) != 1) {
    return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_time(param, absl::ToTimeT(now));
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_X509_STRICT);
  X509_VERIFY_PARAM_set_depth(param, kMaxChainDepth);
  X509_STORE_CTX_set_purpose(
      ctx.get(), role == PeerRole::kClient ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    if (err == X509_V_OK) {
      err = X509_V_ERR_UNSPECIFIED;
    }
    ERR_clear_error();
    if (x509_error != nullptr) {
      *x509_error = err;
    }
    std::string why = absl::StrCat("certificate verification failed at depth ",
                                   X509_STORE_CTX_get_error_depth(ctx.get()), ": ",
                                   X509_verify_cert_error_string(err));
    if (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID) {
      return absl::FailedPreconditionError(why);
    }
    return absl::UnauthenticatedError(why);
  }
  if (window != nullptr) {
    *window = ValidityWindow{};
    STACK_OF(X509)* path = X509_STORE_CTX_get0_chain(ctx.get());
    for (int i = 0; i < sk_X509_num(path); ++i) {
      X509* cert = sk_X509_value(path, i);
      window->not_before = std::max(window->not_before, Asn1TimeToAbsl(X509_get0_notBefore(cert)));
      window->not_after = std::min(window->not_after, Asn1TimeToAbsl(X509_get0_notAfter(cert)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SpiffeId> ChainVerifier::Verify(X509* leaf, STACK_OF(X509) * untrusted,
                                               PeerRole role, absl::Time now, int* x509_error,
                                               ValidityWindow* window) const {
  if (trust_domain_.empty()) {
    return absl::FailedPreconditionError("this verifier checks certification paths only");
  }
  if (absl::Status s = VerifyPath(leaf, untrusted, role, now, x509_error, window); !s.ok()) {
    return s;
  }
  return CheckSvidLeaf(leaf, role, trust_domain_, x509_error);
}

namespace {

// Intermediates returns chain[1..] as an OpenSSL stack (null on allocation failure).
X509StackPtr Intermediates(const std::vector<Certificate>& chain) {
  X509StackPtr untrusted(sk_X509_new_null());
  for (size_t i = 1; untrusted != nullptr && i < chain.size(); ++i) {
    X509Ptr extra = UpRef(chain[i].get());
    if (sk_X509_push(untrusted.get(), extra.get()) <= 0) {
      return nullptr;
    }
    (void)extra.release();  // now owned by the stack
  }
  return untrusted;
}

}  // namespace

absl::StatusOr<SpiffeId> ChainVerifier::VerifyChain(const std::vector<Certificate>& chain,
                                                    PeerRole role, absl::Time now,
                                                    int* x509_error) const {
  if (chain.empty()) {
    return Fail(X509_V_ERR_UNSPECIFIED, x509_error, "no certificate");
  }
  X509StackPtr untrusted = Intermediates(chain);
  if (untrusted == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "building the intermediate stack");
  }
  return Verify(chain[0].get(), untrusted.get(), role, now, x509_error);
}

absl::Status ChainVerifier::VerifyChainPath(const std::vector<Certificate>& chain, PeerRole role,
                                            absl::Time now, int* x509_error) const {
  if (chain.empty()) {
    return Fail(X509_V_ERR_UNSPECIFIED, x509_error, "no certificate");
  }
  X509StackPtr untrusted = Intermediates(chain);
  if (untrusted == nullptr) {
    return OpenSslError(absl::StatusCode::kInternal, "building the intermediate stack");
  }
  return VerifyPath(chain[0].get(), untrusted.get(), role, now, x509_error);
}

absl::StatusOr<SpiffeId> CheckSvidLeaf(X509* leaf, PeerRole role, absl::string_view trust_domain,
                                       int* x509_error) {
  const uint32_t flags = X509_get_extension_flags(leaf);
  if ((flags & EXFLAG_INVALID) != 0) {
    return Fail(X509_V_ERR_INVALID_EXTENSION, x509_error, "leaf has an invalid extension");
  }
  if ((flags & EXFLAG_CA) != 0) {
    return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error,
                "leaf is a CA certificate (X.509-SVID leaves must be CA:FALSE)");
  }
  const uint32_t key_usage = X509_get_key_usage(leaf);
  if (key_usage != UINT32_MAX) {
    if ((key_usage & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) != 0) {
      return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error,
                  "leaf has keyCertSign or cRLSign key usage");
    }
    if ((key_usage & KU_DIGITAL_SIGNATURE) == 0) {
      return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error, "leaf key usage lacks digitalSignature");
    }
  }
  const uint32_t eku = X509_get_extended_key_usage(leaf);
  const uint32_t wanted = role == PeerRole::kClient ? XKU_SSL_CLIENT : XKU_SSL_SERVER;
  if (eku == UINT32_MAX || (eku & wanted) == 0) {
    return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error,
                role == PeerRole::kClient ? "leaf lacks the clientAuth extended key usage"
                                          : "leaf lacks the serverAuth extended key usage");
  }
  std::vector<std::string> uris = Certificate::Wrap(UpRef(leaf)).UriSans();
  if (uris.size() != 1) {
    return Fail(X509_V_ERR_APPLICATION_VERIFICATION, x509_error,
                absl::StrCat("leaf has ", uris.size(), " URI SANs; an X.509-SVID has exactly one"));
  }
  absl::StatusOr<SpiffeId> id = SpiffeId::Parse(uris[0]);
  if (!id.ok()) {
    return Fail(X509_V_ERR_APPLICATION_VERIFICATION, x509_error, id.status().message());
  }
  if (id->trust_domain() != trust_domain) {
    return Fail(
        X509_V_ERR_APPLICATION_VERIFICATION, x509_error,
        absl::StrCat("leaf SPIFFE ID ", id->str(), " is not in trust domain ", trust_domain));
  }
  if (x509_error != nullptr) {
    *x509_error = X509_V_OK;
  }
  return id;
}

}  // namespace meshtls::pki

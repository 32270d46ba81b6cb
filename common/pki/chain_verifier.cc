#include "common/pki/chain_verifier.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/pki/openssl_error.h"
#include "common/pki/path_builder.h"

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
  std::vector<Anchor> anchors;
  for (const Certificate& root : roots) {
    if (!root.IsCa()) {
      return absl::InvalidArgumentError(
          absl::StrCat("trust bundle entry \"", root.SubjectText(), "\" is not a CA certificate"));
    }
    bool duplicate = false;
    for (const Anchor& a : anchors) {
      duplicate = duplicate || X509_cmp(a.cert.get(), root.get()) == 0;
    }
    if (duplicate) {
      continue;
    }
    // One store per anchor: each candidate path is validated against its own anchor only, so
    // OpenSSL cannot wander onto another path than the one being checked.
    X509StorePtr store(X509_STORE_new());
    if (store == nullptr || X509_STORE_add_cert(store.get(), root.get()) != 1) {
      return OpenSslError(absl::StatusCode::kInternal, "building a trust anchor store");
    }
    const bool self_issued =
        X509_NAME_cmp(X509_get_subject_name(root.get()), X509_get_issuer_name(root.get())) == 0;
    anchors.push_back(Anchor{.cert = root, .store = std::move(store), .self_issued = self_issued});
  }
  return std::shared_ptr<const ChainVerifier>(
      new ChainVerifier(std::move(trust_domain), std::move(roots), std::move(anchors)));
}

absl::Status ChainVerifier::VerifyPath(X509* leaf, STACK_OF(X509) * untrusted, PeerRole role,
                                       absl::Time now, int* x509_error,
                                       ValidityWindow* window) const {
  int ignored_error = X509_V_OK;
  if (x509_error == nullptr) {
    x509_error = &ignored_error;
  }
  *x509_error = X509_V_OK;
  if (leaf == nullptr) {
    return Fail(X509_V_ERR_UNSPECIFIED, x509_error, "no certificate");
  }
  std::vector<X509*> intermediates;
  for (int i = 0; untrusted != nullptr && i < sk_X509_num(untrusted); ++i) {
    X509* c = sk_X509_value(untrusted, i);
    if (X509_cmp(c, leaf) != 0) {
      intermediates.push_back(c);
    }
  }
  const std::vector<std::vector<X509*>> paths = CandidatePaths(leaf, intermediates, anchor_certs_);
  if (paths.empty()) {
    const bool self_signed = X509_check_issued(leaf, leaf) == X509_V_OK;
    *x509_error = self_signed ? X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
                              : X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
    return absl::UnauthenticatedError(absl::StrCat("certificate verification failed at depth 0: ",
                                                   X509_verify_cert_error_string(*x509_error)));
  }
  // The first path's error explains a refusal best: it is the shortest, through anchors first.
  absl::Status first_error;
  for (const std::vector<X509*>& path : paths) {
    int error = X509_V_OK;
    int depth = 0;
    absl::Status s = CheckOnePath(path, role, now, &error, &depth);
    if (s.ok()) {
      *x509_error = X509_V_OK;
      if (window != nullptr) {
        *window = ValidityWindow{};
        for (X509* cert : path) {
          window->not_before =
              std::max(window->not_before, Asn1TimeToAbsl(X509_get0_notBefore(cert)));
          window->not_after = std::min(window->not_after, Asn1TimeToAbsl(X509_get0_notAfter(cert)));
        }
      }
      return absl::OkStatus();
    }
    if (first_error.ok()) {
      *x509_error = error;
      const std::string why =
          absl::StrCat("certificate verification failed at depth ", depth, ": ", s.message());
      first_error = error == X509_V_ERR_CERT_HAS_EXPIRED || error == X509_V_ERR_CERT_NOT_YET_VALID
                        ? absl::FailedPreconditionError(why)
                        : absl::UnauthenticatedError(why);
    }
  }
  return first_error;
}

absl::Status ChainVerifier::CheckOnePath(const std::vector<X509*>& path, PeerRole role,
                                         absl::Time now, int* x509_error, int* depth) const {
  const Anchor* anchor = nullptr;
  for (const Anchor& a : anchors_) {
    if (a.cert.get() == path.back()) {
      anchor = &a;
    }
  }
  X509StackPtr untrusted(sk_X509_new_null());
  for (size_t i = 1; untrusted != nullptr && i + 1 < path.size(); ++i) {
    if (sk_X509_push(untrusted.get(), path[i]) <= 0) {  // borrowed: the stack frees nothing
      untrusted.reset();
    }
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (anchor == nullptr || untrusted == nullptr || ctx == nullptr ||
      X509_STORE_CTX_init(ctx.get(), anchor->store.get(), path[0], untrusted.get()) != 1) {
    // Release the borrowed pointers before the stack's deleter would free them.
    if (untrusted != nullptr) {
      sk_X509_zero(untrusted.get());
    }
    *x509_error = X509_V_ERR_UNSPECIFIED;
    *depth = 0;
    return OpenSslError(absl::StatusCode::kInternal, "X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  // Validity is checked below with RFC 5280's inclusive notAfter; a trust anchor is any
  // certificate of the bundle, self-signed or not (RFC 5280 6.1). No OpenSSL purpose: its TLS
  // purposes demand leaf key usages the path profile does not; EKUs are checked below. (No
  // X509_VERIFY_PARAM_set_time: it turns OpenSSL's own time checks back on.)
  // PARTIAL_CHAIN only for an anchor that is not self-issued (an intermediate in the bundle).
  // A self-issued anchor must be a well-formed root: with PARTIAL_CHAIN OpenSSL 3.0 would also
  // take one whose key identifiers do not match its own (not self-signed by X509_check_issued).
  unsigned long flags = X509_V_FLAG_X509_STRICT | X509_V_FLAG_NO_CHECK_TIME;
  if (!anchor->self_issued) {
    flags |= X509_V_FLAG_PARTIAL_CHAIN;
  }
  X509_VERIFY_PARAM_set_flags(param, flags);
  X509_VERIFY_PARAM_set_depth(param, kMaxChainDepth);
  // Security level 2 for every key and signature of the path: 112-bit strength at least (RSA
  // and DSA of 2048 bits, ECDSA from P-224; no SHA-1 signatures). Mesh certificates are P-256.
  X509_VERIFY_PARAM_set_auth_level(param, 2);
  const bool verified = X509_verify_cert(ctx.get()) == 1;
  const int error = X509_STORE_CTX_get_error(ctx.get());
  const int error_depth = X509_STORE_CTX_get_error_depth(ctx.get());
  ctx.reset();
  sk_X509_zero(untrusted.get());  // borrowed pointers: empty the stack before it is freed
  ERR_clear_error();
  if (!verified) {
    *x509_error = error == X509_V_OK ? X509_V_ERR_UNSPECIFIED : error;
    *depth = error_depth;
    return absl::UnauthenticatedError(X509_verify_cert_error_string(*x509_error));
  }
  if (absl::Status s = CheckValidityInclusive(path, absl::ToTimeT(now), depth, x509_error);
      !s.ok()) {
    return s;
  }
  // Extended key usage, where present, must allow the role, on every certificate (a CA's EKU
  // constrains what it may issue for). anyExtendedKeyUsage does not count: OpenSSL's TLS
  // purposes and the Web PKI agree.
  const uint32_t wanted = role == PeerRole::kClient ? XKU_SSL_CLIENT : XKU_SSL_SERVER;
  for (size_t i = 0; i < path.size(); ++i) {
    const uint32_t eku = X509_get_extended_key_usage(path[i]);
    if (eku != UINT32_MAX && (eku & wanted) == 0) {
      *depth = static_cast<int>(i);
      *x509_error = X509_V_ERR_INVALID_PURPOSE;
      return absl::UnauthenticatedError(role == PeerRole::kClient
                                            ? "extended key usage does not allow clientAuth"
                                            : "extended key usage does not allow serverAuth");
    }
  }
  return CheckNameConstraintsProfile(path, depth, x509_error);
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

absl::Status CheckSvidLeafShape(X509* leaf, int* x509_error) {
  const uint32_t flags = X509_get_extension_flags(leaf);
  if ((flags & EXFLAG_INVALID) != 0) {
    return Fail(X509_V_ERR_INVALID_EXTENSION, x509_error, "leaf has an invalid extension");
  }
  if ((flags & EXFLAG_CA) != 0) {
    return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error,
                "leaf is a CA certificate (X.509-SVID leaves must be CA:FALSE)");
  }
  const uint32_t key_usage = X509_get_key_usage(leaf);
  if (key_usage != UINT32_MAX && (key_usage & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) != 0) {
    return Fail(X509_V_ERR_INVALID_PURPOSE, x509_error,
                "leaf has keyCertSign or cRLSign key usage");
  }
  return absl::OkStatus();
}

absl::StatusOr<SpiffeId> CheckSvidLeaf(X509* leaf, PeerRole role, absl::string_view trust_domain,
                                       int* x509_error) {
  if (absl::Status s = CheckSvidLeafShape(leaf, x509_error); !s.ok()) {
    return s;
  }
  const uint32_t key_usage = X509_get_key_usage(leaf);
  if (key_usage != UINT32_MAX) {
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

#pragma once

// Owning pointers for libcrypto objects. libssl types (SSL_CTX, SSL) live in sidecar/tls.
// Ownership follows OpenSSL's naming: get0 is borrowed (never wrap), new/get1/dup are yours
// (wrap at once), set0/add0 take ownership on success (release only after the check).

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace meshtls::pki {

template <auto kFree>
struct OpenSslFree {
  template <typename T>
  void operator()(T* p) const {
    kFree(p);
  }
};

inline void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
inline void FreeGeneralNames(GENERAL_NAMES* n) { GENERAL_NAMES_free(n); }
inline void FreeEku(EXTENDED_KEY_USAGE* e) { EXTENDED_KEY_USAGE_free(e); }

using X509Ptr = std::unique_ptr<X509, OpenSslFree<X509_free>>;
using X509ReqPtr = std::unique_ptr<X509_REQ, OpenSslFree<X509_REQ_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpenSslFree<X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpenSslFree<X509_STORE_CTX_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpenSslFree<X509_EXTENSION_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpenSslFree<X509_NAME_free>>;
using X509StackPtr = std::unique_ptr<STACK_OF(X509), OpenSslFree<FreeX509Stack>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpenSslFree<FreeGeneralNames>>;
using EkuPtr = std::unique_ptr<EXTENDED_KEY_USAGE, OpenSslFree<FreeEku>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslFree<EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpenSslFree<EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, OpenSslFree<EVP_MD_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, OpenSslFree<BIO_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpenSslFree<BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpenSslFree<ASN1_INTEGER_free>>;
using Asn1TimePtr = std::unique_ptr<ASN1_TIME, OpenSslFree<ASN1_TIME_free>>;
using Asn1OctetStringPtr = std::unique_ptr<ASN1_OCTET_STRING, OpenSslFree<ASN1_OCTET_STRING_free>>;

// UpRef returns a second owner of `x`.
inline X509Ptr UpRef(X509* x) {
  X509_up_ref(x);
  return X509Ptr(x);
}
inline EvpPkeyPtr UpRef(EVP_PKEY* k) {
  EVP_PKEY_up_ref(k);
  return EvpPkeyPtr(k);
}

}  // namespace meshtls::pki

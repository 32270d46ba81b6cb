#include "common/pki/csr.h"

#include <openssl/err.h>
#include <openssl/objects.h>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "common/pki/openssl_error.h"

namespace meshtls::pki {
namespace {
constexpr size_t kMaxCsrBytes = 16 * 1024;
}  // namespace

absl::StatusOr<std::string> CreateCsrDer(const PrivateKey& key) {
  X509ReqPtr req(X509_REQ_new());
  if (req == nullptr || X509_REQ_set_version(req.get(), 0) != 1 ||
      X509_REQ_set_pubkey(req.get(), key.get()) != 1 ||
      X509_REQ_sign(req.get(), key.get(), EVP_sha256()) <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "building a CSR");
  }
  unsigned char* der = nullptr;
  int len = i2d_X509_REQ(req.get(), &der);
  if (len <= 0) {
    return OpenSslError(absl::StatusCode::kInternal, "i2d_X509_REQ");
  }
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

absl::StatusOr<VerifiedCsr> ParseAndVerifyCsr(absl::string_view der) {
  if (der.empty()) {
    return absl::InvalidArgumentError("CSR is empty");
  }
  if (der.size() > kMaxCsrBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR is ", der.size(), " bytes; the limit is ", kMaxCsrBytes));
  }
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  X509ReqPtr req(d2i_X509_REQ(nullptr, &p, static_cast<long>(der.size())));
  if (req == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR is not a DER PKCS#10 request");
  }
  if (p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
    return absl::InvalidArgumentError("CSR has trailing bytes");
  }
  EvpPkeyPtr key(X509_REQ_get_pubkey(req.get()));
  if (key == nullptr) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR public key is unreadable");
  }
  if (absl::Status s = CheckKeyAcceptable(key.get()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("CSR key rejected: ", s.message()));
  }
  int digest_nid = NID_undef;
  int pkey_nid = NID_undef;
  if (OBJ_find_sigid_algs(X509_REQ_get_signature_nid(req.get()), &digest_nid, &pkey_nid) != 1) {
    return absl::InvalidArgumentError("CSR signature algorithm is unknown");
  }
  if (digest_nid == NID_md5 || digest_nid == NID_sha1 || digest_nid == NID_md5_sha1) {
    return absl::InvalidArgumentError(
        absl::StrCat("CSR is signed with ", OBJ_nid2sn(digest_nid), "; use SHA-256 or better"));
  }
  if (X509_REQ_verify(req.get(), key.get()) != 1) {
    return OpenSslError(absl::StatusCode::kInvalidArgument, "CSR signature does not verify");
  }
  ERR_clear_error();
  return VerifiedCsr{std::move(key)};
}

}  // namespace meshtls::pki

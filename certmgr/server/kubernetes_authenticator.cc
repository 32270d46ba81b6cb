#include "certmgr/server/kubernetes_authenticator.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/base/file.h"
#include "common/base/log.h"

namespace meshtls::certmgr {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

constexpr size_t kMaxTokenBytes = 16 * 1024;

absl::Status Bad(absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat("service account token rejected: ", why));
}

bool Base64UrlDecode(absl::string_view in, std::string& out) {
  if (in.find_first_of("=+/") != absl::string_view::npos) {
    return false;  // JWTs use unpadded base64url only
  }
  return absl::WebSafeBase64Unescape(in, &out);
}

absl::StatusOr<Struct> ParseJson(absl::string_view json) {
  Struct out;
  auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &out);
  if (!status.ok()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  return out;
}

const Value* Field(const Struct& s, const std::string& name) {
  auto it = s.fields().find(name);
  return it == s.fields().end() ? nullptr : &it->second;
}

std::optional<std::string> StringField(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  if (v == nullptr || v->kind_case() != Value::kStringValue) {
    return std::nullopt;
  }
  return v->string_value();
}

std::optional<double> NumberField(const Struct& s, const std::string& name) {
  const Value* v = Field(s, name);
  if (v == nullptr || v->kind_case() != Value::kNumberValue || !std::isfinite(v->number_value())) {
    return std::nullopt;
  }
  return v->number_value();
}

pki::EvpPkeyPtr KeyFromParams(const char* type, OSSL_PARAM_BLD* bld) {
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  pki::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  if (params == nullptr || ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    key = nullptr;
  }
  OSSL_PARAM_free(params);
  ERR_clear_error();
  return pki::EvpPkeyPtr(key);
}

pki::EvpPkeyPtr RsaKey(const std::string& n, const std::string& e) {
  pki::BignumPtr bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()),
                                static_cast<int>(n.size()), nullptr));
  pki::BignumPtr bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()),
                                static_cast<int>(e.size()), nullptr));
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  pki::EvpPkeyPtr key;
  if (bld != nullptr && bn_n != nullptr && bn_e != nullptr &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n.get()) == 1 &&
      OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e.get()) == 1) {
    key = KeyFromParams("RSA", bld);
  }
  OSSL_PARAM_BLD_free(bld);
  return key;
}

pki::EvpPkeyPtr EcP256Key(const std::string& x, const std::string& y) {
  if (x.size() != 32 || y.size() != 32) {
    return nullptr;
  }
  std::string point = "\x04" + x + y;
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  pki::EvpPkeyPtr key;
  if (bld != nullptr &&
      OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) == 1 &&
      OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) ==
          1) {
    key = KeyFromParams("EC", bld);
  }
  OSSL_PARAM_BLD_free(bld);
  return key;
}

// VerifySignature checks a JWS signature over `signed_part`. ES256 signatures are raw r||s.
bool VerifySignature(EVP_PKEY* key, const std::string& alg, absl::string_view signed_part,
                     const std::string& signature) {
  std::string der;
  if (alg == "ES256") {
    if (signature.size() != 64) {
      return false;
    }
    ECDSA_SIG* sig = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()), 32, nullptr);
    BIGNUM* s =
        BN_bin2bn(reinterpret_cast<const unsigned char*>(signature.data()) + 32, 32, nullptr);
    if (sig == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(sig, r, s) != 1) {
      BN_free(r);
      BN_free(s);
      ECDSA_SIG_free(sig);
      return false;
    }
    unsigned char* buf = nullptr;
    int len = i2d_ECDSA_SIG(sig, &buf);
    ECDSA_SIG_free(sig);
    if (len <= 0) {
      return false;
    }
    der.assign(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
    OPENSSL_free(buf);
  } else {
    der = signature;
  }
  pki::EvpMdCtxPtr md(EVP_MD_CTX_new());
  bool ok = md != nullptr &&
            EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(der.data()),
                             der.size(), reinterpret_cast<const unsigned char*>(signed_part.data()),
                             signed_part.size()) == 1;
  ERR_clear_error();
  return ok;
}

bool ValidSegment(absl::string_view s) {
  return !s.empty() && s.size() <= 253 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
  });
}

}  // namespace

absl::StatusOr<std::vector<ParsedJwk>> ParseJwks(absl::string_view json) {
  absl::StatusOr<Struct> doc = ParseJson(json);
  if (!doc.ok()) {
    return absl::InvalidArgumentError("JWKS is not a JSON object");
  }
  const Value* keys = Field(*doc, "keys");
  if (keys == nullptr || keys->kind_case() != Value::kListValue) {
    return absl::InvalidArgumentError("JWKS has no \"keys\" list");
  }
  std::vector<ParsedJwk> out;
  for (const Value& v : keys->list_value().values()) {
    if (v.kind_case() != Value::kStructValue) {
      continue;
    }
    const Struct& k = v.struct_value();
    ParsedJwk jwk;
    jwk.kid = StringField(k, "kid").value_or("");
    jwk.kty = StringField(k, "kty").value_or("");
    if (std::optional<std::string> use = StringField(k, "use"); use && *use != "sig") {
      continue;
    }
    std::string a, b;
    if (jwk.kty == "RSA") {
      std::optional<std::string> n = StringField(k, "n"), e = StringField(k, "e");
      if (n && e && Base64UrlDecode(*n, a) && Base64UrlDecode(*e, b)) {
        jwk.key = RsaKey(a, b);
      }
      if (jwk.key != nullptr && EVP_PKEY_get_bits(jwk.key.get()) < kMinJwksRsaBits) {
        base::LogWarning("JWKS: ignoring an RSA key shorter than 2048 bits",
                         {{"kid", jwk.kid.substr(0, 64)},
                          {"bits", absl::StrCat(EVP_PKEY_get_bits(jwk.key.get()))}});
        jwk.key = nullptr;
      }
    } else if (jwk.kty == "EC" && StringField(k, "crv").value_or("") == "P-256") {
      std::optional<std::string> x = StringField(k, "x"), y = StringField(k, "y");
      if (x && y && Base64UrlDecode(*x, a) && Base64UrlDecode(*y, b)) {
        jwk.key = EcP256Key(a, b);
      }
    }
    if (jwk.key != nullptr) {
      out.push_back(std::move(jwk));
    }
  }
  return out;
}

absl::StatusOr<std::vector<EVP_PKEY*>> KubernetesAuthenticator::Keys(const std::string& kid,
                                                                     const std::string& kty) {
  const base::FileVersion now = base::StatFileVersion(options_.jwks_file);
  if (!(now == loaded_)) {
    absl::StatusOr<std::string> text = base::ReadFileToString(options_.jwks_file);
    absl::StatusOr<std::vector<ParsedJwk>> parsed =
        text.ok() ? ParseJwks(*text) : absl::StatusOr<std::vector<ParsedJwk>>(text.status());
    if (parsed.ok()) {
      keys_.clear();
      for (ParsedJwk& k : *parsed) {
        keys_.emplace(k.kid, std::move(k));
      }
      loaded_ = now;
    } else {
      base::LogError(
          "cannot load the Kubernetes JWKS file; keeping the previous keys",
          {{"path", options_.jwks_file}, {"error", std::string(parsed.status().message())}});
    }
  }
  std::vector<EVP_PKEY*> out;
  for (const auto& [k, jwk] : keys_) {
    if ((kid.empty() || k == kid) && jwk.kty == kty) {
      out.push_back(jwk.key.get());
    }
  }
  return out;
}

absl::StatusOr<pki::SpiffeId> KubernetesAuthenticator::Authenticate(
    const CallerCredentials& credentials) {
  if (!credentials.bearer_token.has_value()) {
    return absl::NotFoundError("no bearer token");
  }
  const std::string& token = *credentials.bearer_token;
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3) {
    return absl::NotFoundError("not a JWT");
  }
  if (token.size() > kMaxTokenBytes) {
    return Bad("longer than 16 KiB");
  }
  std::string header_json, payload_json, signature;
  if (!Base64UrlDecode(parts[0], header_json) || !Base64UrlDecode(parts[1], payload_json) ||
      !Base64UrlDecode(parts[2], signature)) {
    return Bad("malformed: not base64url");
  }
  absl::StatusOr<Struct> header = ParseJson(header_json);
  absl::StatusOr<Struct> claims = ParseJson(payload_json);
  if (!header.ok() || !claims.ok()) {
    return Bad("malformed: header or claims are not JSON objects");
  }
  const std::string alg = StringField(*header, "alg").value_or("");
  if (alg != "RS256" && alg != "ES256") {
    return Bad(
        absl::StrCat("signature algorithm \"", alg.substr(0, 16), "\" (want RS256 or ES256)"));
  }
  const std::string kid = StringField(*header, "kid").value_or("");
  const absl::string_view signed_part(token.data(), parts[0].size() + 1 + parts[1].size());
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<std::vector<EVP_PKEY*>> keys = Keys(kid, alg == "RS256" ? "RSA" : "EC");
    if (!keys.ok() || keys->empty()) {
      return Bad(absl::StrCat("no key in the JWKS for kid \"", kid.substr(0, 64), "\""));
    }
    bool verified = false;
    for (EVP_PKEY* key : *keys) {
      verified = verified || VerifySignature(key, alg, signed_part, signature);
    }
    if (!verified) {
      return Bad("the signature does not verify");
    }
  }
  if (StringField(*claims, "iss").value_or("") != options_.issuer) {
    return Bad("wrong issuer");
  }
  bool audience_ok = false;
  if (const Value* aud = Field(*claims, "aud")) {
    if (aud->kind_case() == Value::kStringValue) {
      audience_ok = aud->string_value() == options_.audience;
    } else if (aud->kind_case() == Value::kListValue) {
      for (const Value& a : aud->list_value().values()) {
        audience_ok = audience_ok || (a.kind_case() == Value::kStringValue &&
                                      a.string_value() == options_.audience);
      }
    }
  }
  if (!audience_ok) {
    return Bad(absl::StrCat("the audience is not \"", options_.audience, "\""));
  }
  const double now = absl::ToDoubleSeconds(clock_.Now() - absl::UnixEpoch());
  const double skew = absl::ToDoubleSeconds(options_.clock_skew);
  std::optional<double> exp = NumberField(*claims, "exp");
  if (!exp.has_value()) {
    return Bad("no exp claim");
  }
  if (now >= *exp + skew) {
    return Bad("expired");
  }
  if (std::optional<double> nbf = NumberField(*claims, "nbf"); nbf && now + skew < *nbf) {
    return Bad("not valid yet (nbf)");
  }
  std::optional<double> iat = NumberField(*claims, "iat");
  if (!iat.has_value()) {
    return Bad("no iat claim (the token's lifetime cannot be checked)");
  }
  if (*iat > now + skew) {
    return Bad("issued in the future (iat)");
  }
  if (*exp - *iat > absl::ToDoubleSeconds(options_.max_token_lifetime)) {
    return Bad(absl::StrCat("its lifetime (exp - iat) exceeds ",
                            absl::FormatDuration(options_.max_token_lifetime)));
  }
  // The identity: the kubernetes.io claim, cross-checked with sub.
  std::string ns, sa;
  bool pod_bound = false;
  if (const Value* k8s = Field(*claims, "kubernetes.io");
      k8s != nullptr && k8s->kind_case() == Value::kStructValue) {
    ns = StringField(k8s->struct_value(), "namespace").value_or("");
    if (const Value* pod = Field(k8s->struct_value(), "pod");
        pod != nullptr && pod->kind_case() == Value::kStructValue) {
      pod_bound = !StringField(pod->struct_value(), "name").value_or("").empty() &&
                  !StringField(pod->struct_value(), "uid").value_or("").empty();
    }
    if (const Value* account = Field(k8s->struct_value(), "serviceaccount");
        account != nullptr && account->kind_case() == Value::kStructValue) {
      sa = StringField(account->struct_value(), "name").value_or("");
    }
  }
  if (std::optional<std::string> sub = StringField(*claims, "sub")) {
    std::vector<std::string> s = absl::StrSplit(*sub, ':');
    if (s.size() == 4 && s[0] == "system" && s[1] == "serviceaccount") {
      if (ns.empty() && sa.empty()) {
        ns = s[2];
        sa = s[3];
      } else if (ns != s[2] || sa != s[3]) {
        return Bad("sub and the kubernetes.io claim name different service accounts");
      }
    }
  }
  if (!ValidSegment(ns) || !ValidSegment(sa)) {
    return Bad("no valid namespace and service account in the token");
  }
  if (options_.require_pod_binding && !pod_bound) {
    return Bad("not bound to a pod (no kubernetes.io.pod name and uid)");
  }
  if (absl::Status s = CheckNamespace(ns); !s.ok()) {
    return s;
  }
  return pki::SpiffeId::ForWorkload(options_.trust_domain, ns, sa);
}

absl::Status KubernetesAuthenticator::CheckNamespace(absl::string_view ns) {
  absl::MutexLock lock(&policy_mu_);
  if (!allowed_namespaces_.empty() &&
      std::find(allowed_namespaces_.begin(), allowed_namespaces_.end(), ns) ==
          allowed_namespaces_.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("namespace ", ns, " may not obtain mesh identities"));
  }
  return absl::OkStatus();
}

absl::Status KubernetesAuthenticator::CheckRenewal(const pki::SpiffeId& id) {
  // Only identities this authenticator could have issued: ns/<namespace>/sa/<name>.
  std::vector<absl::string_view> segments = absl::StrSplit(id.path(), '/');
  if (id.trust_domain() != options_.trust_domain || segments.size() != 5 || !segments[0].empty() ||
      segments[1] != "ns" || segments[3] != "sa" || !ValidSegment(segments[2]) ||
      !ValidSegment(segments[4])) {
    return absl::NotFoundError("not a Kubernetes service account identity");
  }
  return CheckNamespace(segments[2]);
}

void KubernetesAuthenticator::SetAllowedNamespaces(std::vector<std::string> namespaces) {
  absl::MutexLock lock(&policy_mu_);
  allowed_namespaces_ = std::move(namespaces);
}

}  // namespace meshtls::certmgr

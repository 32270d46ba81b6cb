#include "sidecar/server/certs_response.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/wrappers.pb.h>

#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "meshtls/admin/v1/certs.pb.h"

namespace meshtls::sidecar {
namespace {

google::protobuf::Value NullValue() {
  google::protobuf::Value v;
  v.set_null_value(google::protobuf::NULL_VALUE);
  return v;
}

// TimeValue is an RFC 3339 UTC time to the second, or null for a time that is not known.
google::protobuf::Value TimeValue(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) {
    return NullValue();
  }
  google::protobuf::Value v;
  v.set_string_value(absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone()));
  return v;
}

}  // namespace

absl::StatusOr<std::string> CertsJson(const TlsContext* context, const IdentityStatus& status) {
  admin::v1::CertsResponse response;
  // Keys as the fields are named, in field-number order. Not always_print_primitive_fields: it
  // moves the google.protobuf.Value fields after the others, and every field that must always
  // be there is set (or a wrapper) anyway.
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (context == nullptr) {
    *response.mutable_identity() = NullValue();
  } else {
    const pki::Certificate& leaf = context->bundle().chain[0];
    response.mutable_identity()->set_string_value(context->identity().str());
    response.set_serial(leaf.SerialHex());
    *response.mutable_not_before() = TimeValue(leaf.not_before());
    *response.mutable_not_after() = TimeValue(leaf.not_after());
    *response.mutable_renewal_due() = TimeValue(status.renewal_due);
    // Relayed from certmgr or gRPC: protobuf would silently drop bytes that are not UTF-8.
    response.mutable_last_renewal_error()->set_value(base::ValidUtf8(status.last_error));
    admin::v1::TrustBundle& bundle = *response.mutable_trust_bundle();
    bundle.set_sequence(context->bundle().bundle_sequence);
    for (const pki::Certificate& root : context->bundle().trust_bundle) {
      admin::v1::Root& r = *bundle.add_roots();
      r.set_subject(base::ValidUtf8(root.SubjectText()));
      r.set_sha256(root.Sha256Fingerprint());
      *r.mutable_not_after() = TimeValue(root.not_after());
    }
    response.set_tls_context_generation(context->generation());
  }
  std::string json;
  if (auto s = google::protobuf::util::MessageToJsonString(response, &json, options); !s.ok()) {
    return absl::InternalError(absl::StrCat("/certs: cannot print the response: ", s.ToString()));
  }
  json += '\n';
  return json;
}

}  // namespace meshtls::sidecar

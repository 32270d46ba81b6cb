#include "certmgr/webhook/admission.h"

#include <optional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/base/log.h"

namespace meshtls::webhook {
namespace {

// The most nodes a review may parse into. A Pod of the largest size etcd stores (1.5 MiB) has
// far fewer; the bound keeps a body of `[0,0,0,...]` from costing hundreds of MiB.
constexpr size_t kMaxReviewNodes = 100000;

using config::YamlNode;
using Kind = YamlNode::Kind;

using config::FindKey;
using config::ScalarAt;

// PointerToken escapes one JSON Pointer reference token (RFC 6901): "~" and "/".
std::string PointerToken(absl::string_view key) {
  return absl::StrReplaceAll(key, {{"~", "~0"}, {"/", "~1"}});
}

void AddOp(std::string& out, absl::string_view op, const std::string& path, const YamlNode* value) {
  if (!out.empty()) {
    out += ',';
  }
  absl::StrAppend(&out, "{\"op\":\"", op, "\",\"path\":\"", base::JsonEscape(path), "\"");
  if (value != nullptr) {
    absl::StrAppend(&out, ",\"value\":", config::EmitJson(*value));
  }
  out += '}';
}

void Diff(const YamlNode& from, const YamlNode& to, const std::string& path, std::string& out) {
  if (from.kind == Kind::kMapping && to.kind == Kind::kMapping) {
    for (const config::YamlEntry& e : from.entries) {
      if (FindKey(&to, e.key) == nullptr) {
        AddOp(out, "remove", absl::StrCat(path, "/", PointerToken(e.key)), nullptr);
      }
    }
    for (const config::YamlEntry& e : to.entries) {
      const std::string child = absl::StrCat(path, "/", PointerToken(e.key));
      if (const YamlNode* before = FindKey(&from, e.key)) {
        Diff(*before, e.value, child, out);
      } else {
        AddOp(out, "add", child, &e.value);
      }
    }
    return;
  }
  if (from.kind == Kind::kSequence && to.kind == Kind::kSequence &&
      from.items.size() == to.items.size()) {
    for (size_t i = 0; i < from.items.size(); ++i) {
      Diff(from.items[i], to.items[i], absl::StrCat(path, "/", i), out);
    }
    return;
  }
  if (config::EmitJson(from) != config::EmitJson(to)) {
    AddOp(out, "replace", path, &to);
  }
}

// Answer is the AdmissionReview response for `uid`; `patch` and `refusal` are optional.
std::string Answer(absl::string_view uid, std::optional<std::string> patch,
                   std::optional<std::string> refusal) {
  std::string response = absl::StrCat("{\"uid\":\"", base::JsonEscape(uid),
                                      "\",\"allowed\":", refusal ? "false" : "true");
  if (patch) {
    absl::StrAppend(&response, ",\"patchType\":\"JSONPatch\",\"patch\":\"",
                    absl::Base64Escape(*patch), "\"");
  }
  if (refusal) {
    absl::StrAppend(&response, ",\"status\":{\"code\":403,\"reason\":\"Forbidden\",\"message\":\"",
                    base::JsonEscape(*refusal), "\"}");
  }
  response += '}';
  return absl::StrCat(
      "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"response\":",
      response, "}");
}

}  // namespace

absl::string_view ReviewResultName(ReviewResult result) {
  switch (result) {
    case ReviewResult::kInjected:
      return "injected";
    case ReviewResult::kUnchanged:
      return "unchanged";
    case ReviewResult::kRefused:
      return "refused";
  }
  return "?";
}

std::string JsonPatch(const YamlNode& from, const YamlNode& to) {
  std::string ops;
  Diff(from, to, "", ops);
  return absl::StrCat("[", ops, "]");
}

absl::StatusOr<Review> AdmitPod(const inject::MeshSettings& mesh, absl::string_view body,
                                size_t max_bytes) {
  absl::StatusOr<std::vector<YamlNode>> documents =
      config::ParseYamlStream(body, max_bytes, kMaxReviewNodes);
  if (!documents.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the body is not JSON: ", documents.status().message()));
  }
  if (documents->size() != 1 || (*documents)[0].kind != Kind::kMapping) {
    return absl::InvalidArgumentError("the body is not one JSON object");
  }
  const YamlNode& review = (*documents)[0];
  if (ScalarAt(&review, "apiVersion") != "admission.k8s.io/v1" ||
      ScalarAt(&review, "kind") != "AdmissionReview") {
    return absl::InvalidArgumentError("not an admission.k8s.io/v1 AdmissionReview");
  }
  const YamlNode* request = FindKey(&review, "request");
  const std::optional<std::string> uid = ScalarAt(request, "uid");
  if (!uid || uid->empty()) {
    return absl::InvalidArgumentError("the AdmissionReview has no request.uid");
  }
  Review out;
  const YamlNode* kind = FindKey(request, "kind");
  const YamlNode* object = FindKey(request, "object");
  const bool is_pod = ScalarAt(kind, "kind") == "Pod" &&
                      ScalarAt(kind, "group").value_or("") == "" && object != nullptr &&
                      object->kind == Kind::kMapping;
  if (is_pod && ScalarAt(request, "operation") == "UPDATE") {
    // The sidecar's config is fixed when the pod is created: the downward-API volume would
    // carry an edited annotation into the pod, past every check above.
    const YamlNode* old_object = FindKey(request, "oldObject");
    auto config_of = [](const YamlNode* o) {
      const YamlNode* annotations = FindKey(FindKey(o, "metadata"), "annotations");
      return ScalarAt(annotations, inject::kConfigAnnotation);
    };
    if (config_of(object) != config_of(old_object)) {
      out.result = ReviewResult::kRefused;
      out.message = absl::StrCat(inject::kConfigAnnotation,
                                 " is set when the pod is created and cannot change; recreate "
                                 "the pod (its workload's template) instead");
      out.response_json = Answer(*uid, std::nullopt, out.message);
      return out;
    }
  }
  if (!is_pod || ScalarAt(request, "operation") != "CREATE") {
    out.message = "not a Pod being created";
    out.response_json = Answer(*uid, std::nullopt, std::nullopt);
    return out;
  }
  YamlNode pod = *object;
  absl::StatusOr<inject::Outcome> outcome = inject::InjectPodTemplate(mesh, pod);
  const std::string who = absl::StrCat(
      ScalarAt(request, "namespace").value_or(""), "/",
      ScalarAt(FindKey(object, "metadata"), "name")
          .value_or(ScalarAt(FindKey(object, "metadata"), "generateName").value_or("") + "*"));
  if (!outcome.ok()) {
    out.result = ReviewResult::kRefused;
    out.message = absl::StrCat("meshtls cannot mesh pod ", who, ": ", outcome.status().message());
    out.response_json = Answer(*uid, std::nullopt, out.message);
    return out;
  }
  if (*outcome != inject::Outcome::kInjected) {
    out.message = absl::StrCat("pod ", who, ": ", inject::OutcomeName(*outcome));
    out.response_json = Answer(*uid, std::nullopt, std::nullopt);
    return out;
  }
  out.result = ReviewResult::kInjected;
  out.message = absl::StrCat("pod ", who, ": injected");
  out.response_json = Answer(*uid, JsonPatch(*object, pod), std::nullopt);
  return out;
}

}  // namespace meshtls::webhook

#pragma once

// The mutating admission webhook's logic, without the transport: an `admission.k8s.io/v1`
// AdmissionReview in, the AdmissionReview answer out, the Pod injected by a JSONPatch
// (RFC 6902). Pure functions; any thread.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "certmgr/inject/injector.h"
#include "common/config/yaml_tree.h"

namespace meshtls::webhook {

// What one review came to (the result label of meshtls_certmgr_admission_reviews_total).
enum class ReviewResult {
  kInjected,   // allowed, with a patch
  kUnchanged,  // allowed as it is: opted out, already injected, not a Pod, not a CREATE
  kRefused,    // not allowed: the pod cannot be meshed, or an UPDATE changes its sidecar config
};

absl::string_view ReviewResultName(ReviewResult result);

struct Review {
  ReviewResult result = ReviewResult::kUnchanged;
  std::string response_json;  // the AdmissionReview to send back
  std::string message;        // why it was refused, or what was done (for the log)
};

// AdmitPod answers one AdmissionReview request body: a Pod's CREATE is injected; an UPDATE that
// changes the meshtls.io/sidecar-config annotation is refused; anything else passes unchanged.
// Errors (InvalidArgument, naming what is wrong) mean the body is no AdmissionReview v1 with a
// request.uid: answer 400, no review.
absl::StatusOr<Review> AdmitPod(const inject::MeshSettings& mesh, absl::string_view body,
                                size_t max_bytes);

// JsonPatch lists the RFC 6902 operations that turn `from` into `to`, as a JSON array: mappings
// are compared key by key (add, remove, or recurse), lists of the same length item by item, and
// anything else that differs is replaced whole. Applying it to `from` gives `to` exactly.
std::string JsonPatch(const config::YamlNode& from, const config::YamlNode& to);

}  // namespace meshtls::webhook

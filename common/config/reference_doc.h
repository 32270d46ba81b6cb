#pragma once

// RenderReference renders a config message's schema as a Markdown table: one row per field,
// depth-first in declaration order, with its YAML path ("inbound[].listen"), type, default and
// the one-line doc of its options. docs/configuration.md is this text; a test fails when the
// committed file and the schema differ.

#include <string>

#include "absl/status/statusor.h"

namespace google::protobuf {
class Descriptor;
}  // namespace google::protobuf

namespace meshtls::config {

// RenderReference fails when a field has no doc: the schema is the only reference there is.
absl::StatusOr<std::string> RenderReference(const google::protobuf::Descriptor& root);

}  // namespace meshtls::config

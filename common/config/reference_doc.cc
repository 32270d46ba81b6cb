#include "common/config/reference_doc.h"

#include <google/protobuf/descriptor.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/base/status_macros.h"
#include "common/config/schema_options.h"

namespace meshtls::config {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

std::string TypeName(const FieldDescriptor& field) {
  std::string type;
  if (IsDuration(field)) {
    type = "duration";
  } else {
    switch (field.cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        type = "string";
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        type = "bool";
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        type = "number";
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        type = "mapping";
        break;
      default:
        type = "whole number";
        break;
    }
  }
  if (field.is_repeated()) {
    type = absl::StrCat("list of ", type == "mapping" ? "mappings" : absl::StrCat(type, "s"));
  }
  const SchemaOptions o = OptionsOf(field);
  if (!o.min.empty() && !o.max.empty()) {
    absl::StrAppend(&type, ", ", o.min, "..", o.max);
  } else if (!o.min.empty()) {
    absl::StrAppend(&type, ", at least ", o.min);
  } else if (!o.max.empty()) {
    absl::StrAppend(&type, ", at most ", o.max);
  }
  return type;
}

std::string Cell(absl::string_view text) { return absl::StrReplaceAll(text, {{"|", "\\|"}}); }

absl::Status AppendRows(const Descriptor& message, const std::string& prefix, std::string& out) {
  for (int i = 0; i < message.field_count(); ++i) {
    const FieldDescriptor& field = *message.field(i);
    const std::string path = absl::StrCat(prefix, field.name());
    const SchemaOptions o = OptionsOf(field);
    if (o.doc.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(message.full_name(), ".", field.name(),
                                                        " (", path, ") has no (doc) option"));
    }
    std::string default_text;
    if (o.required) {
      default_text = "required";
    } else if (!o.default_value.empty()) {
      default_text = absl::StrCat("`", o.default_value, "`");
    } else {
      default_text = o.default_doc;
    }
    absl::StrAppend(&out, "| `", path, "` | ", TypeName(field), " | ", Cell(default_text), " | ",
                    Cell(o.doc), " |\n");
    if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !IsDuration(field)) {
      MESHTLS_RETURN_IF_ERROR(AppendRows(
          *field.message_type(), absl::StrCat(path, field.is_repeated() ? "[]." : "."), out));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> RenderReference(const Descriptor& root) {
  std::string out = "| field | type | default | meaning |\n|---|---|---|---|\n";
  MESHTLS_RETURN_IF_ERROR(AppendRows(root, "", out));
  return out;
}

}  // namespace meshtls::config

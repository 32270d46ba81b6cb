#include "common/config/schema_options.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/message.h>

#include "absl/strings/str_cat.h"

namespace meshtls::config {
namespace {

const google::protobuf::FieldDescriptor* Extension(absl::string_view name) {
  return google::protobuf::DescriptorPool::generated_pool()->FindExtensionByName(
      absl::StrCat("meshtls.config.v1.", name));
}

// Extensions holds the option extensions, looked up once (thread-safe static init).
struct Extensions {
  const google::protobuf::FieldDescriptor* doc = Extension("doc");
  const google::protobuf::FieldDescriptor* default_value = Extension("default_value");
  const google::protobuf::FieldDescriptor* default_doc = Extension("default_doc");
  const google::protobuf::FieldDescriptor* required = Extension("required");
  const google::protobuf::FieldDescriptor* min = Extension("min");
  const google::protobuf::FieldDescriptor* max = Extension("max");
  const google::protobuf::FieldDescriptor* allow_zero = Extension("allow_zero");
};

std::string GetString(const google::protobuf::Message& options,
                      const google::protobuf::FieldDescriptor* ext) {
  if (ext == nullptr || !options.GetReflection()->HasField(options, ext)) {
    return "";
  }
  return options.GetReflection()->GetString(options, ext);
}

bool GetBool(const google::protobuf::Message& options,
             const google::protobuf::FieldDescriptor* ext) {
  return ext != nullptr && options.GetReflection()->HasField(options, ext) &&
         options.GetReflection()->GetBool(options, ext);
}

}  // namespace

SchemaOptions OptionsOf(const google::protobuf::FieldDescriptor& field) {
  static const Extensions* const kExtensions = new Extensions();
  const google::protobuf::Message& options = field.options();
  SchemaOptions out;
  out.doc = GetString(options, kExtensions->doc);
  out.default_value = GetString(options, kExtensions->default_value);
  out.default_doc = GetString(options, kExtensions->default_doc);
  out.min = GetString(options, kExtensions->min);
  out.max = GetString(options, kExtensions->max);
  out.required = GetBool(options, kExtensions->required);
  out.allow_zero = GetBool(options, kExtensions->allow_zero);
  return out;
}

bool IsDuration(const google::protobuf::FieldDescriptor& field) {
  return field.cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE &&
         field.message_type()->full_name() == "google.protobuf.Duration";
}

}  // namespace meshtls::config

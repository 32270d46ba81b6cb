#pragma once

// SchemaOptions reads a config field's options (proto/meshtls/config/v1/options.proto) through
// reflection, so this library needs none of the generated code: the options are found by name
// in the generated descriptor pool, where linking a config message's generated code puts them.

#include <string>

namespace google::protobuf {
class FieldDescriptor;
}  // namespace google::protobuf

namespace meshtls::config {

// SchemaOptions are one field's options; empty strings and false when not set. A plain value.
struct SchemaOptions {
  std::string doc;
  std::string default_value;
  std::string default_doc;
  std::string min;
  std::string max;
  bool required = false;
  bool allow_zero = false;
};

SchemaOptions OptionsOf(const google::protobuf::FieldDescriptor& field);

// IsDuration tells whether a field holds a google.protobuf.Duration (written "500ms", "24h").
bool IsDuration(const google::protobuf::FieldDescriptor& field);

}  // namespace meshtls::config

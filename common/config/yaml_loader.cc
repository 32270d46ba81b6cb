#include "common/config/yaml_loader.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/base/status_macros.h"
#include "common/config/schema_options.h"
#include "common/config/yaml_tree.h"

namespace meshtls::config {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// google.protobuf.Duration holds at most 10,000 years.
constexpr int64_t kMaxDurationSeconds = 315'576'000'000;

std::string ChildPath(const std::string& path, absl::string_view key) {
  return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
}

// BetweenText says what a number or duration must be, from the field's min and max.
std::string BetweenText(const SchemaOptions& o) {
  if (!o.min.empty() && !o.max.empty()) {
    return absl::StrCat("must be between ", o.min, " and ", o.max);
  }
  if (!o.min.empty()) {
    return absl::StrCat("must be at least ", o.min);
  }
  return absl::StrCat("must be at most ", o.max);
}

// Mapper walks a YAML tree and a message together. Owned by one LoadYaml call.
class Mapper {
 public:
  explicit Mapper(LoadedFields& fields) : fields_(fields) {}

  // MapMessage fills `message` from a mapping (or an empty node). `written` is false for a
  // section absent from the document, which only takes its defaults.
  absl::Status MapMessage(const YamlNode& node, const std::string& path, Message& message,
                          bool written) {
    if (node.kind != YamlNode::Kind::kMapping && node.kind != YamlNode::Kind::kNull) {
      return Error(path, absl::StrCat("must be a mapping, not ", KindName(node.kind)));
    }
    const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
    std::set<const FieldDescriptor*> present;
    for (const YamlEntry& entry : node.entries) {
      const std::string child = ChildPath(path, entry.key);
      const FieldDescriptor* field = descriptor->FindFieldByName(entry.key);
      if (record_) {
        fields_.Record(child, entry.key_line);
      }
      if (field == nullptr) {
        return Error(child, "unknown field");
      }
      if (const google::protobuf::OneofDescriptor* oneof = field->containing_oneof()) {
        for (const FieldDescriptor* other : present) {
          if (other->containing_oneof() == oneof) {
            std::vector<std::string> names;
            for (int i = 0; i < oneof->field_count(); ++i) {
              names.push_back(oneof->field(i)->name());
            }
            return Error(path.empty() ? "(top level)" : path,
                         absl::StrCat("set exactly one of ", absl::StrJoin(names, " or ")),
                         entry.key_line);
          }
        }
      }
      present.insert(field);
      MESHTLS_RETURN_IF_ERROR(MapField(entry.value, child, *field, message));
    }
    for (int i = 0; i < descriptor->field_count(); ++i) {
      const FieldDescriptor& field = *descriptor->field(i);
      if (present.count(&field) > 0) {
        continue;
      }
      const SchemaOptions options = OptionsOf(field);
      const std::string child = ChildPath(path, field.name());
      if (written && options.required) {
        return Error(child, "required");
      }
      if (!options.default_value.empty()) {
        MESHTLS_RETURN_IF_ERROR(ApplyDefault(options.default_value, child, field, message));
      } else if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !field.is_repeated() &&
                 field.containing_oneof() == nullptr && !IsDuration(field)) {
        // An absent section still carries its fields' defaults.
        MESHTLS_RETURN_IF_ERROR(MapMessage(
            YamlNode{}, child, *message.GetReflection()->MutableMessage(&message, &field),
            /*written=*/false));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& path, absl::string_view message, int line = -1) const {
    if (line < 0) {
      return fields_.Error(path, message);
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message, " (line ", line, ")"));
  }

  absl::Status ApplyDefault(const std::string& text, const std::string& path,
                            const FieldDescriptor& field, Message& message) {
    absl::StatusOr<YamlNode> node = ParseYamlTree(text);
    absl::Status status = node.status();
    if (status.ok()) {
      const bool was_recording = record_;
      record_ = false;
      status = MapField(*node, path, field, message);
      record_ = was_recording;
    }
    if (!status.ok()) {
      return absl::InternalError(
          absl::StrCat("the schema's default for ", path, " is wrong: ", status.message()));
    }
    return absl::OkStatus();
  }

  absl::Status MapField(const YamlNode& value, const std::string& path,
                        const FieldDescriptor& field, Message& message) {
    if (!field.is_repeated()) {
      if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !IsDuration(field)) {
        return MapMessage(value, path, *message.GetReflection()->MutableMessage(&message, &field),
                          /*written=*/true);
      }
      return SetScalar(value, path, field, message);
    }
    const bool of_messages =
        field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !IsDuration(field);
    switch (value.kind) {
      case YamlNode::Kind::kNull:
        return absl::OkStatus();
      case YamlNode::Kind::kScalar:
        if (!of_messages) {  // one value stands for a list of one
          return SetScalar(value, path, field, message);
        }
        [[fallthrough]];
      case YamlNode::Kind::kMapping:
        return Error(path, absl::StrCat("must be a list, not ", KindName(value.kind)));
      case YamlNode::Kind::kSequence:
        break;
    }
    for (size_t i = 0; i < value.items.size(); ++i) {
      const std::string item_path = absl::StrCat(path, "[", i, "]");
      if (record_) {
        fields_.Record(item_path, value.items[i].line);
      }
      if (of_messages) {
        MESHTLS_RETURN_IF_ERROR(MapMessage(value.items[i], item_path,
                                           *message.GetReflection()->AddMessage(&message, &field),
                                           /*written=*/true));
      } else {
        MESHTLS_RETURN_IF_ERROR(SetScalar(value.items[i], item_path, field, message));
      }
    }
    return absl::OkStatus();
  }

  // SetScalar converts one scalar to the field's type and sets it (adds it to a list).
  absl::Status SetScalar(const YamlNode& value, const std::string& path,
                         const FieldDescriptor& field, Message& message) {
    const Reflection& r = *message.GetReflection();
    const SchemaOptions options = OptionsOf(field);
    const bool plain = value.kind == YamlNode::Kind::kScalar && !value.quoted;
    if (IsDuration(field)) {
      MESHTLS_ASSIGN_OR_RETURN(absl::Duration d, ReadDuration(value, path, options));
      Message& out = field.is_repeated() ? *r.AddMessage(&message, &field)
                                         : *r.MutableMessage(&message, &field);
      const google::protobuf::Descriptor& dd = *out.GetDescriptor();
      const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
      out.GetReflection()->SetInt64(&out, dd.FindFieldByName("seconds"), seconds);
      out.GetReflection()->SetInt32(&out, dd.FindFieldByName("nanos"),
                                    static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
      return absl::OkStatus();
    }
    switch (field.cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        if (value.kind != YamlNode::Kind::kScalar) {
          return Error(path, absl::StrCat("must be a string, not ", KindName(value.kind)));
        }
        field.is_repeated() ? r.AddString(&message, &field, value.scalar)
                            : r.SetString(&message, &field, value.scalar);
        return absl::OkStatus();
      case FieldDescriptor::CPPTYPE_BOOL: {
        if (!plain || (value.scalar != "true" && value.scalar != "false")) {
          return Error(path, "must be true or false");
        }
        const bool b = value.scalar == "true";
        field.is_repeated() ? r.AddBool(&message, &field, b) : r.SetBool(&message, &field, b);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        double d = 0;
        if (!plain || !absl::SimpleAtod(value.scalar, &d) || !std::isfinite(d)) {
          return Error(path, "must be a number");
        }
        double min = 0;
        double max = 0;
        if ((!options.min.empty() && absl::SimpleAtod(options.min, &min) && d < min) ||
            (!options.max.empty() && absl::SimpleAtod(options.max, &max) && d > max)) {
          return Error(path, BetweenText(options));
        }
        field.is_repeated() ? r.AddDouble(&message, &field, d) : r.SetDouble(&message, &field, d);
        return absl::OkStatus();
      }
      case FieldDescriptor::CPPTYPE_INT32:
      case FieldDescriptor::CPPTYPE_INT64: {
        const bool is32 = field.cpp_type() == FieldDescriptor::CPPTYPE_INT32;
        int64_t min =
            is32 ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int64_t>::min();
        int64_t max =
            is32 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max();
        if (!options.min.empty()) {
          (void)absl::SimpleAtoi(options.min, &min);
        }
        if (!options.max.empty()) {
          (void)absl::SimpleAtoi(options.max, &max);
        }
        int64_t n = 0;
        if (!plain || !absl::SimpleAtoi(value.scalar, &n) || n < min || n > max) {
          return Error(path, absl::StrCat("must be a whole number from ", min, " to ", max));
        }
        if (is32) {
          field.is_repeated() ? r.AddInt32(&message, &field, static_cast<int32_t>(n))
                              : r.SetInt32(&message, &field, static_cast<int32_t>(n));
        } else {
          field.is_repeated() ? r.AddInt64(&message, &field, n) : r.SetInt64(&message, &field, n);
        }
        return absl::OkStatus();
      }
      default:
        return absl::InternalError(
            absl::StrCat(path, ": the config loader has no reading for this field's type"));
    }
  }

  absl::StatusOr<absl::Duration> ReadDuration(const YamlNode& value, const std::string& path,
                                              const SchemaOptions& options) const {
    absl::Duration d;
    const bool parsed = value.kind == YamlNode::Kind::kScalar &&
                        absl::ParseDuration(value.scalar, &d) && d != absl::InfiniteDuration() &&
                        (options.allow_zero ? d >= absl::ZeroDuration() : d > absl::ZeroDuration());
    if (!parsed) {
      return Error(path, options.allow_zero
                             ? "must be a duration such as 0, 500ms, 10s, 2m or 24h"
                             : "must be a positive duration such as 500ms, 10s, 2m or 24h");
    }
    absl::Duration min;
    absl::Duration max;
    if ((!options.min.empty() && absl::ParseDuration(options.min, &min) && d < min) ||
        (!options.max.empty() && absl::ParseDuration(options.max, &max) && d > max)) {
      return Error(path, BetweenText(options));
    }
    if (d > absl::Seconds(kMaxDurationSeconds)) {
      return Error(path, "is longer than 10000 years");
    }
    return d;
  }

  LoadedFields& fields_;
  bool record_ = true;  // false while applying a default, which was not written
};

}  // namespace

int LoadedFields::Line(absl::string_view path) const {
  std::string p(path);
  while (!p.empty()) {
    if (auto it = lines_.find(p); it != lines_.end()) {
      return it->second;
    }
    const size_t cut = p.find_last_of(".[");
    p.resize(cut == std::string::npos ? 0 : cut);
  }
  return 0;
}

absl::Status LoadedFields::Error(absl::string_view path, absl::string_view message) const {
  const int line = Line(path);
  if (line > 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message, " (line ", line, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

absl::StatusOr<LoadedFields> LoadYaml(absl::string_view yaml, Message& message) {
  message.Clear();
  MESHTLS_ASSIGN_OR_RETURN(YamlNode root, ParseYamlTree(yaml));
  if (root.kind != YamlNode::Kind::kMapping && root.kind != YamlNode::Kind::kNull) {
    return absl::InvalidArgumentError(absl::StrCat("(top level): must be a mapping, not ",
                                                   KindName(root.kind), " (line ", root.line, ")"));
  }
  LoadedFields fields;
  Mapper mapper(fields);
  MESHTLS_RETURN_IF_ERROR(mapper.MapMessage(root, "", message, /*written=*/true));
  return fields;
}

absl::StatusOr<base::HostPort> ReadListenAddress(const LoadedFields& fields, absl::string_view path,
                                                 absl::string_view text) {
  absl::StatusOr<base::HostPort> hp = base::ParseHostPort(text, /*allow_port_zero=*/true);
  if (!hp.ok()) {
    return fields.Error(path, hp.status().message());
  }
  if (!hp->host_is_ip) {
    return fields.Error(path, "a listen address must be an IP address (0.0.0.0, [::], 127.0.0.1)");
  }
  return *hp;
}

absl::StatusOr<base::LogSettings> ReadLogSettings(const LoadedFields& fields,
                                                  absl::string_view level,
                                                  absl::string_view format) {
  absl::StatusOr<base::LogLevel> parsed_level = base::ParseLogLevel(level);
  if (!parsed_level.ok()) {
    return fields.Error("log.level", parsed_level.status().message());
  }
  absl::StatusOr<base::LogFormat> parsed_format = base::ParseLogFormat(format);
  if (!parsed_format.ok()) {
    return fields.Error("log.format", parsed_format.status().message());
  }
  return base::LogSettings{*parsed_level, *parsed_format};
}

}  // namespace meshtls::config

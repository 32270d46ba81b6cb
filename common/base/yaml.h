#pragma once

// A strict parser for the YAML subset meshtls configuration files use, and typed readers that
// turn its nodes into config values with errors naming the field.
//
// Supported: block mappings and sequences (including "key:\n- item" at the same indent and
// "- key: value" items), flow sequences and mappings ([a, b], {k: v}, possibly over several
// lines), plain, 'single' and "double" quoted scalars, comments, a leading "---".
// Refused with an error naming the line: tabs in indentation, anchors, aliases, tags, block
// scalars (| and >), duplicate keys, more than one document, nesting deeper than 32 levels.
// Operators get a precise error instead of YAML's surprises; the parser is small enough to fuzz.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/base/log.h"

namespace meshtls::base {

struct YamlEntry;

struct YamlNode {
  enum class Kind { kNull, kScalar, kMapping, kSequence };
  Kind kind = Kind::kNull;
  int line = 0;                    // 1-based line where the node starts
  std::string scalar;              // kScalar
  bool quoted = false;             // kScalar written in quotes (never null, never a number)
  std::vector<YamlEntry> entries;  // kMapping, in document order
  std::vector<YamlNode> items;     // kSequence

  // Find returns the value of `key` in a mapping, or nullptr.
  const YamlNode* Find(absl::string_view key) const;
};

// YamlEntry is one key of a mapping with its value. (A struct of its own, not a std::pair: a
// pair of an incomplete YamlNode inside YamlNode is ill-formed, and clang says so.)
struct YamlEntry {
  std::string key;
  YamlNode value;
};

// ParseYaml parses one document. An empty document is a kNull node.
absl::StatusOr<YamlNode> ParseYaml(absl::string_view text);

// ConfigMap reads the fields of one mapping and reports, on Finish(), the first field that was
// never taken as unknown. `path` is the dotted name used in errors ("identity.certmgr").
class ConfigMap {
 public:
  // Of accepts a mapping, or a null node (an empty mapping); anything else is an error.
  static absl::StatusOr<ConfigMap> Of(const YamlNode& node, std::string path);

  // Take returns the field's node (nullptr when absent) and marks it as known.
  const YamlNode* Take(absl::string_view key);
  // FieldPath returns "path.key" for error messages.
  std::string FieldPath(absl::string_view key) const;
  absl::Status Finish() const;
  const std::string& path() const { return path_; }

 private:
  ConfigMap(const YamlNode& node, std::string path) : node_(&node), path_(std::move(path)) {}
  const YamlNode* node_;
  std::string path_;
  std::vector<std::string> taken_;
};

// FieldError returns InvalidArgument("<path>: <message> (line N)").
absl::Status FieldError(absl::string_view path, const YamlNode& node, absl::string_view message);

absl::StatusOr<std::string> ReadString(const YamlNode& node, absl::string_view path);
absl::StatusOr<bool> ReadBool(const YamlNode& node, absl::string_view path);
absl::StatusOr<double> ReadNumber(const YamlNode& node, absl::string_view path);
absl::StatusOr<int64_t> ReadInt(const YamlNode& node, absl::string_view path, int64_t min,
                                int64_t max);
// ReadDuration takes Go-style durations ("500ms", "10s", "2m", "24h", "1h30m"), > 0.
absl::StatusOr<absl::Duration> ReadDuration(const YamlNode& node, absl::string_view path);
// ReadStringList takes a sequence of scalars (or one scalar, as a list of one).
absl::StatusOr<std::vector<std::string>> ReadStringList(const YamlNode& node,
                                                        absl::string_view path);

// ReadListenAddress reads an IP-literal "host:port" (port 0 allowed: any free port).
absl::StatusOr<std::string> ReadListenAddress(const YamlNode& node, absl::string_view path);

// ReadLogSection reads a `log: {level, format}` mapping into the two values.
absl::Status ReadLogSection(const YamlNode& node, absl::string_view path, LogLevel& level,
                            LogFormat& format);

}  // namespace meshtls::base

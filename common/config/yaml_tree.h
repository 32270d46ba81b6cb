#pragma once

// YamlTree reads one YAML document with libyaml into a tree of nodes that keep their line
// numbers, so the config loader can name the line of every field it refuses.
//
// Block scalars (| and >) are read as strings. Refused with an error naming the line: anchors,
// aliases, tags, complex (non-scalar) keys, duplicate keys, more than one document, nesting deeper
// than 32 levels, documents over 1 MiB or with a NUL byte. Configs are small and written by hand:
// the limits keep a hostile file from costing more than a bounded parse.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::config {

struct YamlEntry;

// YamlNode is one node of the document. A plain value.
struct YamlNode {
  enum class Kind { kNull, kScalar, kMapping, kSequence };
  Kind kind = Kind::kNull;
  int line = 0;                    // 1-based line where the node starts
  std::string scalar;              // kScalar
  bool quoted = false;             // kScalar written in quotes (never null, never a number)
  std::vector<YamlEntry> entries;  // kMapping, in document order
  std::vector<YamlNode> items;     // kSequence
};

// YamlEntry is one key of a mapping with its value. (A struct of its own, not a std::pair: a
// pair of an incomplete YamlNode inside YamlNode is ill-formed.)
struct YamlEntry {
  std::string key;
  int key_line = 0;
  YamlNode value;
};

// ParseYamlTree parses one document. An empty document is a kNull node. Errors read
// "line N: <what is wrong>".
absl::StatusOr<YamlNode> ParseYamlTree(absl::string_view text);

// KindName names a node's kind for error messages ("a mapping", "a list").
absl::string_view KindName(YamlNode::Kind kind);

}  // namespace meshtls::config

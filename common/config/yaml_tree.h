#pragma once

// YamlTree reads YAML with libyaml into a tree of nodes that keep their line numbers, so the
// config loader can name the line of every field it refuses, and writes trees back as YAML or
// JSON (for manifests that are read, changed and written again).
//
// Block scalars (| and >) are read as strings. Refused with an error naming the line: anchors,
// aliases, tags, complex (non-scalar) keys, duplicate keys, more than one document (for a config),
// nesting deeper than 32 levels, input over 1 MiB (for a config; a stream has its own bound) or
// with a NUL byte. Configs are small and written by hand: the limits keep a hostile file from
// costing more than a bounded parse.

#include <cstdint>
#include <optional>
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

// ParseYamlStream parses a stream of documents separated by "---" (Kubernetes manifests), with
// the same refusals as ParseYamlTree except for the size, bounded by `max_bytes` instead. An
// empty document (two "---" in a row, or nothing but comments) is a kNull node in its place; an
// empty stream has no documents. JSON is YAML here too: a JSON text is one document whose
// strings are quoted scalars and whose numbers, true, false and null are plain.
// `max_nodes` bounds the nodes (each scalar, list and mapping) of all documents together: a
// node costs about 100 bytes of memory besides its text, so `[0,0,0,...]` would otherwise turn
// 1 MiB of input into some 50 MiB of tree.
absl::StatusOr<std::vector<YamlNode>> ParseYamlStream(absl::string_view text, size_t max_bytes,
                                                      size_t max_nodes = SIZE_MAX);

// EmitYaml writes documents as a YAML stream ("---" before each but the first), block style,
// keys in their order. A scalar read plain is written plain where libyaml can (so 8080 and true
// keep their type), a quoted one quoted (a multi-line one as a literal block), so that reading
// the output back gives the same tree. Empty mappings and lists are written {} and []. Fails
// only for a scalar or key that is not valid UTF-8.
absl::StatusOr<std::string> EmitYaml(const std::vector<YamlNode>& documents);

// EmitJson writes one node as compact JSON. A quoted scalar is a string; a plain one is typed as
// Kubernetes' YAML reader (YAML 1.1) types it: true/yes/on and false/no/off (also capitalized or
// in capitals) are booleans, 0755, 0o755 and 0x1F integers (written in decimal), a JSON number
// is itself, anything else a string; kNull is null. Strings come out as valid UTF-8
// (base::JsonEscape).
std::string EmitJson(const YamlNode& node);

// StringNode is a scalar that reads back as the string `text` under both readers above: plain
// where YAML would type it as a string, quoted where it would read a boolean, number or null
// ("true", "8080", "~", "") or where it holds a line break.
YamlNode StringNode(std::string text);

// FindKey is the value of `key` in the mapping `map`; nullptr when `map` is null, not a mapping,
// or has no such key. For code that walks documents of unknown shape (manifests, JSON bodies).
const YamlNode* FindKey(const YamlNode* map, absl::string_view key);
YamlNode* FindKey(YamlNode* map, absl::string_view key);

// ScalarAt is the text of `key` in the mapping `map` when it is a scalar; nullopt otherwise
// (absent, null, a list or a mapping).
std::optional<std::string> ScalarAt(const YamlNode* map, absl::string_view key);

// KindName names a node's kind for error messages ("a mapping", "a list").
absl::string_view KindName(YamlNode::Kind kind);

}  // namespace meshtls::config

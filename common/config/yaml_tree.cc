#include "common/config/yaml_tree.h"

#include <yaml.h>

#include <charconv>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/base/log.h"
#include "common/base/status_macros.h"

namespace meshtls::config {
namespace {

constexpr size_t kMaxDocumentBytes = 1 << 20;
constexpr int kMaxDepth = 32;

absl::Status LineError(int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
}

int LineOf(const yaml_mark_t& mark) { return static_cast<int>(mark.line) + 1; }

// EventReader pulls libyaml events one at a time and turns them into nodes. Owns the parser
// and the current event; used by one thread for one document.
class EventReader {
 public:
  // `text` must not be empty (libyaml asserts on a null input) and must outlive the reader.
  EventReader(absl::string_view text, size_t max_nodes) : text_(text), nodes_left_(max_nodes) {
    initialized_ = yaml_parser_initialize(&parser_) == 1;
    if (initialized_) {
      yaml_parser_set_input_string(&parser_, reinterpret_cast<const unsigned char*>(text.data()),
                                   text.size());
    }
  }
  ~EventReader() {
    if (has_event_) {
      yaml_event_delete(&event_);
    }
    if (initialized_) {
      yaml_parser_delete(&parser_);
    }
  }
  EventReader(const EventReader&) = delete;
  EventReader& operator=(const EventReader&) = delete;

  // ReadStream reads every document, or with `one_document` refuses a second one.
  absl::StatusOr<std::vector<YamlNode>> ReadStream(bool one_document) {
    if (!initialized_) {
      return absl::ResourceExhaustedError("cannot set up the YAML parser");
    }
    std::vector<YamlNode> documents;
    MESHTLS_RETURN_IF_ERROR(Next());  // STREAM_START
    while (true) {
      MESHTLS_RETURN_IF_ERROR(Next());
      if (event_.type == YAML_STREAM_END_EVENT) {
        return documents;
      }
      if (one_document && !documents.empty()) {
        return LineError(LineOf(event_.start_mark), "only one YAML document is allowed");
      }
      // DOCUMENT_START; its node follows.
      MESHTLS_RETURN_IF_ERROR(Next());
      MESHTLS_ASSIGN_OR_RETURN(YamlNode root, ReadNode(0));
      documents.push_back(std::move(root));
      MESHTLS_RETURN_IF_ERROR(Next());  // DOCUMENT_END
    }
  }

 private:
  // Next replaces the current event with the next one, or returns libyaml's error with its line.
  absl::Status Next() {
    if (has_event_) {
      yaml_event_delete(&event_);
      has_event_ = false;
    }
    if (yaml_parser_parse(&parser_, &event_) != 1) {
      const int line = LineOf(parser_.problem_mark);
      std::string message = parser_.problem != nullptr ? parser_.problem : "invalid YAML";
      if (parser_.context != nullptr) {
        absl::StrAppend(&message, " (", parser_.context, ")");
      }
      if (IndentHasTab(line)) {
        absl::StrAppend(&message, "; tabs are not allowed for indentation, use spaces");
      }
      return LineError(line, message);
    }
    has_event_ = true;
    return absl::OkStatus();
  }

  // IndentHasTab tells whether the 1-based line's indentation holds a tab, libyaml's most
  // common "cannot start any token" in hand-written files.
  bool IndentHasTab(int line) const {
    size_t start = 0;
    for (int i = 1; i < line && start != absl::string_view::npos; ++i) {
      start = text_.find('\n', start);
      if (start != absl::string_view::npos) {
        ++start;
      }
    }
    if (start == absl::string_view::npos) {
      return false;
    }
    for (size_t i = start; i < text_.size() && (text_[i] == ' ' || text_[i] == '\t'); ++i) {
      if (text_[i] == '\t') {
        return true;
      }
    }
    return false;
  }

  static absl::Status RefuseAnchorOrTag(const yaml_char_t* anchor, const yaml_char_t* tag,
                                        int line) {
    if (anchor != nullptr || tag != nullptr) {
      return LineError(line, "anchors, aliases and tags are not supported");
    }
    return absl::OkStatus();
  }

  // ReadNode turns the current event, and for a collection the events up to its end, into a
  // node. Leaves the last event of the node current.
  absl::StatusOr<YamlNode> ReadNode(int depth) {
    YamlNode node;
    node.line = LineOf(event_.start_mark);
    if (nodes_left_ == 0) {
      return LineError(node.line, "too many nodes (values, lists and mappings) in the input");
    }
    --nodes_left_;
    switch (event_.type) {
      case YAML_ALIAS_EVENT:
        return LineError(node.line, "anchors, aliases and tags are not supported");
      case YAML_SCALAR_EVENT: {
        MESHTLS_RETURN_IF_ERROR(
            RefuseAnchorOrTag(event_.data.scalar.anchor, event_.data.scalar.tag, node.line));
        node.scalar.assign(reinterpret_cast<const char*>(event_.data.scalar.value),
                           event_.data.scalar.length);
        node.quoted = event_.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        const bool null =
            !node.quoted && (node.scalar.empty() || node.scalar == "~" || node.scalar == "null" ||
                             node.scalar == "Null" || node.scalar == "NULL");
        if (null) {
          node.scalar.clear();
        } else {
          node.kind = YamlNode::Kind::kScalar;
        }
        return node;
      }
      case YAML_SEQUENCE_START_EVENT: {
        MESHTLS_RETURN_IF_ERROR(RefuseAnchorOrTag(event_.data.sequence_start.anchor,
                                                  event_.data.sequence_start.tag, node.line));
        if (depth >= kMaxDepth) {
          return LineError(node.line, "nesting is too deep");
        }
        node.kind = YamlNode::Kind::kSequence;
        while (true) {
          MESHTLS_RETURN_IF_ERROR(Next());
          if (event_.type == YAML_SEQUENCE_END_EVENT) {
            return node;
          }
          MESHTLS_ASSIGN_OR_RETURN(YamlNode item, ReadNode(depth + 1));
          node.items.push_back(std::move(item));
        }
      }
      case YAML_MAPPING_START_EVENT: {
        MESHTLS_RETURN_IF_ERROR(RefuseAnchorOrTag(event_.data.mapping_start.anchor,
                                                  event_.data.mapping_start.tag, node.line));
        if (depth >= kMaxDepth) {
          return LineError(node.line, "nesting is too deep");
        }
        node.kind = YamlNode::Kind::kMapping;
        absl::flat_hash_set<std::string> keys;  // a set: a 1 MiB mapping must not cost n²
        while (true) {
          MESHTLS_RETURN_IF_ERROR(Next());
          if (event_.type == YAML_MAPPING_END_EVENT) {
            return node;
          }
          const int key_line = LineOf(event_.start_mark);
          if (event_.type != YAML_SCALAR_EVENT) {
            return LineError(key_line, "a key must be a plain or quoted string");
          }
          MESHTLS_ASSIGN_OR_RETURN(YamlNode key, ReadNode(depth + 1));
          if (key.kind != YamlNode::Kind::kScalar) {
            return LineError(key_line, "empty key");
          }
          if (!keys.insert(key.scalar).second) {
            return LineError(key_line, absl::StrCat("duplicate key \"", key.scalar, "\""));
          }
          MESHTLS_RETURN_IF_ERROR(Next());
          MESHTLS_ASSIGN_OR_RETURN(YamlNode value, ReadNode(depth + 1));
          node.entries.push_back(YamlEntry{std::move(key.scalar), key_line, std::move(value)});
        }
      }
      default:
        return LineError(node.line, "unexpected YAML event");
    }
  }

  absl::string_view text_;
  size_t nodes_left_;  // the node budget: each node costs about 100 bytes, its text aside
  yaml_parser_t parser_;
  yaml_event_t event_;
  bool initialized_ = false;
  bool has_event_ = false;
};

}  // namespace

namespace {

absl::StatusOr<std::vector<YamlNode>> ParseDocuments(absl::string_view text, size_t max_bytes,
                                                     size_t max_nodes, bool one_document) {
  if (text.size() > max_bytes) {
    return absl::InvalidArgumentError(
        max_bytes % (1 << 20) == 0
            ? absl::StrCat("document is larger than ", max_bytes >> 20, " MiB")
            : absl::StrCat("document is larger than ", max_bytes, " bytes"));
  }
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("document contains a NUL byte");
  }
  if (text.empty()) {
    return std::vector<YamlNode>{};
  }
  EventReader reader(text, max_nodes);
  return reader.ReadStream(one_document);
}

// KeyMayBePlain tells whether a plain `key` reads back as that string in YAML 1.1 and 1.2 alike:
// not empty, not null, a boolean (yes, on, y, ...) or anything starting like a number.
bool KeyMayBePlain(absl::string_view key) {
  if (key.empty() || absl::ascii_isdigit(static_cast<unsigned char>(key[0])) || key[0] == '-' ||
      key[0] == '+' || key[0] == '.' || key[0] == '~') {
    return false;
  }
  static constexpr absl::string_view kWords[] = {"null", "true", "false", "yes", "no",
                                                 "on",   "off",  "y",     "n"};
  for (absl::string_view word : kWords) {
    if (absl::EqualsIgnoreCase(key, word)) {
      return false;
    }
  }
  return true;
}

// EventWriter feeds libyaml's emitter one event at a time into a string. Owned by one thread.
class EventWriter {
 public:
  EventWriter() {
    initialized_ = yaml_emitter_initialize(&emitter_) == 1;
    if (initialized_) {
      yaml_emitter_set_output(&emitter_, &EventWriter::Append, &out_);
      yaml_emitter_set_unicode(&emitter_, 1);
      yaml_emitter_set_width(&emitter_, -1);  // no folding of long values
      yaml_emitter_set_indent(&emitter_, 2);
    }
  }
  ~EventWriter() {
    if (initialized_) {
      yaml_emitter_delete(&emitter_);
    }
  }
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // Write emits the stream; false if libyaml refused an event (a scalar that is not UTF-8; never
  // for a tree the parser made, whose input it checked).
  bool Write(const std::vector<YamlNode>& documents) {
    yaml_event_t event;
    if (!initialized_ || yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING) != 1 ||
        !Emit(&event)) {
      return false;
    }
    for (size_t i = 0; i < documents.size(); ++i) {
      if (yaml_document_start_event_initialize(&event, nullptr, nullptr, nullptr,
                                               /*implicit=*/i == 0 ? 1 : 0) != 1 ||
          !Emit(&event) || !WriteNode(documents[i]) ||
          yaml_document_end_event_initialize(&event, /*implicit=*/1) != 1 || !Emit(&event)) {
        return false;
      }
    }
    return yaml_stream_end_event_initialize(&event) == 1 && Emit(&event);
  }

  const std::string& out() const { return out_; }
  // problem is why Write failed.
  std::string problem() const {
    if (!problem_.empty()) {
      return problem_;
    }
    return initialized_ && emitter_.problem != nullptr ? emitter_.problem
                                                       : "cannot set up the YAML emitter";
  }

 private:
  static int Append(void* data, unsigned char* buffer, size_t size) {
    static_cast<std::string*>(data)->append(reinterpret_cast<const char*>(buffer), size);
    return 1;
  }

  bool Emit(yaml_event_t* event) { return yaml_emitter_emit(&emitter_, event) == 1; }

  bool Scalar(absl::string_view value, yaml_scalar_style_t style) {
    yaml_event_t event;
    const bool plain = style == YAML_PLAIN_SCALAR_STYLE;
    if (base::ValidUtf8(value) != value) {
      problem_ = "a key or value is not valid UTF-8";
      return false;
    }
    return yaml_scalar_event_initialize(
               &event, nullptr, nullptr,
               reinterpret_cast<yaml_char_t*>(const_cast<char*>(value.data())),
               static_cast<int>(value.size()), /*plain_implicit=*/plain ? 1 : 0,
               /*quoted_implicit=*/plain ? 0 : 1, style) == 1 &&
           Emit(&event);
  }

  bool WriteNode(const YamlNode& node) {
    yaml_event_t event;
    switch (node.kind) {
      case YamlNode::Kind::kNull:
        return Scalar("null", YAML_PLAIN_SCALAR_STYLE);
      case YamlNode::Kind::kScalar:
        if (!node.quoted) {
          return Scalar(node.scalar, YAML_PLAIN_SCALAR_STYLE);
        }
        return Scalar(node.scalar, node.scalar.find('\n') != std::string::npos
                                       ? YAML_LITERAL_SCALAR_STYLE
                                       : YAML_DOUBLE_QUOTED_SCALAR_STYLE);
      case YamlNode::Kind::kSequence:
        if (yaml_sequence_start_event_initialize(
                &event, nullptr, nullptr, 1,
                node.items.empty() ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE) != 1 ||
            !Emit(&event)) {
          return false;
        }
        for (const YamlNode& item : node.items) {
          if (!WriteNode(item)) {
            return false;
          }
        }
        return yaml_sequence_end_event_initialize(&event) == 1 && Emit(&event);
      case YamlNode::Kind::kMapping:
        if (yaml_mapping_start_event_initialize(
                &event, nullptr, nullptr, 1,
                node.entries.empty() ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE) != 1 ||
            !Emit(&event)) {
          return false;
        }
        for (const YamlEntry& entry : node.entries) {
          // Keys are strings here; quoted where a reader could take them for something else.
          if (!Scalar(entry.key, KeyMayBePlain(entry.key) ? YAML_PLAIN_SCALAR_STYLE
                                                          : YAML_DOUBLE_QUOTED_SCALAR_STYLE) ||
              !WriteNode(entry.value)) {
            return false;
          }
        }
        return yaml_mapping_end_event_initialize(&event) == 1 && Emit(&event);
    }
    return false;
  }

  yaml_emitter_t emitter_;
  bool initialized_ = false;
  std::string out_;
  std::string problem_;
};

// JsonLiteral is a plain scalar as JSON, typed as Kubernetes' YAML reader (YAML 1.1) types it:
// a boolean (true, yes, on in their three spellings, and their opposites), an integer (octal
// 0755 and 0o755, hex 0x1F, written in decimal) or a JSON number as itself; nothing when it must
// be a string.
std::optional<std::string> JsonLiteral(absl::string_view plain) {
  static constexpr std::pair<absl::string_view, absl::string_view> kBooleans[] = {
      {"true", "true"},   {"yes", "true"}, {"on", "true"},
      {"false", "false"}, {"no", "false"}, {"off", "false"}};
  for (const auto& [word, json] : kBooleans) {
    // YAML 1.1 spells each word three ways: "yes", "Yes", "YES" (not "yES").
    if (plain == word || plain == absl::AsciiStrToUpper(word) ||
        (plain.size() == word.size() && plain[0] == absl::ascii_toupper(word[0]) &&
         plain.substr(1) == word.substr(1))) {
      return std::string(json);
    }
  }
  // 0755 and 0o755 (octal), 0x1F (hex); 0.5 and 0e3 are left to the JSON number below.
  if (plain.size() > 1 && plain[0] == '0' &&
      (plain[1] == 'x' || plain[1] == 'o' ||
       absl::ascii_isdigit(static_cast<unsigned char>(plain[1])))) {
    absl::string_view digits = plain.substr(plain[1] == 'x' || plain[1] == 'o' ? 2 : 1);
    const int base = plain[1] == 'x' ? 16 : 8;
    uint64_t value = 0;
    const char* end = digits.data() + digits.size();
    if (!digits.empty() && std::from_chars(digits.data(), end, value, base).ptr == end) {
      return absl::StrCat(value);
    }
    return std::nullopt;
  }
  // JSON's number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  size_t i = 0;
  auto digits = [&] {
    const size_t start = i;
    while (i < plain.size() && absl::ascii_isdigit(static_cast<unsigned char>(plain[i]))) {
      ++i;
    }
    return i - start;
  };
  if (i < plain.size() && plain[i] == '-') {
    ++i;
  }
  const size_t int_start = i;
  const size_t int_digits = digits();
  if (int_digits == 0 || (int_digits > 1 && plain[int_start] == '0')) {
    return std::nullopt;
  }
  if (i < plain.size() && plain[i] == '.') {
    ++i;
    if (digits() == 0) {
      return std::nullopt;
    }
  }
  if (i < plain.size() && (plain[i] == 'e' || plain[i] == 'E')) {
    ++i;
    if (i < plain.size() && (plain[i] == '+' || plain[i] == '-')) {
      ++i;
    }
    if (digits() == 0) {
      return std::nullopt;
    }
  }
  if (i != plain.size()) {
    return std::nullopt;
  }
  return std::string(plain);
}

void AppendJson(const YamlNode& node, std::string& out) {
  switch (node.kind) {
    case YamlNode::Kind::kNull:
      out += "null";
      return;
    case YamlNode::Kind::kScalar:
      if (!node.quoted) {
        if (std::optional<std::string> literal = JsonLiteral(node.scalar)) {
          out += *literal;
          return;
        }
      }
      absl::StrAppend(&out, "\"", base::JsonEscape(node.scalar), "\"");
      return;
    case YamlNode::Kind::kSequence:
      out += '[';
      for (size_t i = 0; i < node.items.size(); ++i) {
        if (i > 0) {
          out += ',';
        }
        AppendJson(node.items[i], out);
      }
      out += ']';
      return;
    case YamlNode::Kind::kMapping:
      out += '{';
      for (size_t i = 0; i < node.entries.size(); ++i) {
        if (i > 0) {
          out += ',';
        }
        absl::StrAppend(&out, "\"", base::JsonEscape(node.entries[i].key), "\":");
        AppendJson(node.entries[i].value, out);
      }
      out += '}';
      return;
  }
}

}  // namespace

absl::StatusOr<YamlNode> ParseYamlTree(absl::string_view text) {
  MESHTLS_ASSIGN_OR_RETURN(std::vector<YamlNode> documents,
                           ParseDocuments(text, kMaxDocumentBytes, kMaxDocumentBytes,
                                          /*one_document=*/true));
  return documents.empty() ? YamlNode{} : std::move(documents.front());
}

absl::StatusOr<std::vector<YamlNode>> ParseYamlStream(absl::string_view text, size_t max_bytes,
                                                      size_t max_nodes) {
  return ParseDocuments(text, max_bytes, max_nodes, /*one_document=*/false);
}

absl::StatusOr<std::string> EmitYaml(const std::vector<YamlNode>& documents) {
  EventWriter writer;
  if (!writer.Write(documents)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write YAML: ", writer.problem()));
  }
  return writer.out();
}

std::string EmitJson(const YamlNode& node) {
  std::string out;
  AppendJson(node, out);
  return out;
}

const YamlNode* FindKey(const YamlNode* map, absl::string_view key) {
  if (map == nullptr || map->kind != YamlNode::Kind::kMapping) {
    return nullptr;
  }
  for (const YamlEntry& e : map->entries) {
    if (e.key == key) {
      return &e.value;
    }
  }
  return nullptr;
}

YamlNode* FindKey(YamlNode* map, absl::string_view key) {
  return const_cast<YamlNode*>(FindKey(static_cast<const YamlNode*>(map), key));
}

std::optional<std::string> ScalarAt(const YamlNode* map, absl::string_view key) {
  const YamlNode* value = FindKey(map, key);
  if (value == nullptr || value->kind != YamlNode::Kind::kScalar) {
    return std::nullopt;
  }
  return value->scalar;
}

YamlNode StringNode(std::string text) {
  YamlNode node;
  node.kind = YamlNode::Kind::kScalar;
  node.quoted = !KeyMayBePlain(text) || absl::StrContains(text, '\n');
  node.scalar = std::move(text);
  return node;
}

absl::string_view KindName(YamlNode::Kind kind) {
  switch (kind) {
    case YamlNode::Kind::kNull:
      return "empty";
    case YamlNode::Kind::kScalar:
      return "a value";
    case YamlNode::Kind::kMapping:
      return "a mapping";
    case YamlNode::Kind::kSequence:
      return "a list";
  }
  return "?";
}

}  // namespace meshtls::config

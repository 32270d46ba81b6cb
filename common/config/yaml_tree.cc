#include "common/config/yaml_tree.h"

#include <yaml.h>

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
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
  explicit EventReader(absl::string_view text) : text_(text) {
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

  absl::StatusOr<YamlNode> ReadDocument() {
    if (!initialized_) {
      return absl::ResourceExhaustedError("cannot set up the YAML parser");
    }
    MESHTLS_RETURN_IF_ERROR(Next());  // STREAM_START
    MESHTLS_RETURN_IF_ERROR(Next());
    if (event_.type == YAML_STREAM_END_EVENT) {
      return YamlNode{};
    }
    // DOCUMENT_START; its node follows.
    MESHTLS_RETURN_IF_ERROR(Next());
    MESHTLS_ASSIGN_OR_RETURN(YamlNode root, ReadNode(0));
    MESHTLS_RETURN_IF_ERROR(Next());  // DOCUMENT_END
    MESHTLS_RETURN_IF_ERROR(Next());
    if (event_.type != YAML_STREAM_END_EVENT) {
      return LineError(LineOf(event_.start_mark), "only one YAML document is allowed");
    }
    return root;
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
  yaml_parser_t parser_;
  yaml_event_t event_;
  bool initialized_ = false;
  bool has_event_ = false;
};

}  // namespace

absl::StatusOr<YamlNode> ParseYamlTree(absl::string_view text) {
  if (text.size() > kMaxDocumentBytes) {
    return absl::InvalidArgumentError("document is larger than 1 MiB");
  }
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("document contains a NUL byte");
  }
  if (text.empty()) {
    return YamlNode{};
  }
  EventReader reader(text);
  return reader.ReadDocument();
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

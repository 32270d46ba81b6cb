#include "common/base/yaml.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/base/host_port.h"
#include "common/base/status_macros.h"

namespace meshtls::base {
namespace {

constexpr size_t kMaxDocumentBytes = 1 << 20;
constexpr int kMaxDepth = 32;

absl::Status LineError(int line, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", message));
}

bool IsSpace(char c) { return c == ' ' || c == '\t'; }

// Line is one physical line of the document; `text` excludes the newline.
struct Line {
  absl::string_view text;
  int number = 0;
};

class Parser {
 public:
  explicit Parser(absl::string_view doc) {
    size_t start = 0;
    int number = 1;
    while (start <= doc.size()) {
      size_t end = doc.find('\n', start);
      if (end == absl::string_view::npos) {
        end = doc.size();
      }
      absl::string_view text = doc.substr(start, end - start);
      if (!text.empty() && text.back() == '\r') {
        text.remove_suffix(1);
      }
      lines_.push_back({text, number++});
      if (end == doc.size()) {
        break;
      }
      start = end + 1;
    }
  }

  absl::StatusOr<YamlNode> ParseDocument() {
    SkipBlank();
    if (at_ < lines_.size() && Content(at_) == "---") {
      ++at_;
      SkipBlank();
    }
    if (at_ >= lines_.size()) {
      return YamlNode{};
    }
    MESHTLS_ASSIGN_OR_RETURN(int indent, Indent(at_));
    MESHTLS_ASSIGN_OR_RETURN(YamlNode root, ParseBlock(indent, 0));
    SkipBlank();
    if (at_ < lines_.size()) {
      if (Content(at_) == "---") {
        return LineError(lines_[at_].number, "only one YAML document is allowed");
      }
      if (Content(at_) == "...") {
        ++at_;
        SkipBlank();
        if (at_ >= lines_.size()) {
          return root;
        }
        return LineError(lines_[at_].number, "only one YAML document is allowed");
      }
      return LineError(lines_[at_].number, "unexpected content (check the indentation)");
    }
    return root;
  }

 private:
  // Content returns the line without indentation, and without trailing spaces.
  absl::string_view Content(size_t i) const {
    absl::string_view t = lines_[i].text;
    size_t first = t.find_first_not_of(' ');
    if (first == absl::string_view::npos) {
      return {};
    }
    t.remove_prefix(first);
    while (!t.empty() && IsSpace(t.back())) {
      t.remove_suffix(1);
    }
    return t;
  }

  bool IsBlankOrComment(size_t i) const {
    absl::string_view c = Content(i);
    size_t first = c.find_first_not_of(" \t");
    return first == absl::string_view::npos || c[first] == '#';
  }

  void SkipBlank() {
    while (at_ < lines_.size() && IsBlankOrComment(at_)) {
      ++at_;
    }
  }

  absl::StatusOr<int> Indent(size_t i) const {
    absl::string_view t = lines_[i].text;
    size_t n = 0;
    while (n < t.size() && t[n] == ' ') {
      ++n;
    }
    if (n < t.size() && t[n] == '\t') {
      return LineError(lines_[i].number, "tabs are not allowed for indentation; use spaces");
    }
    return static_cast<int>(n);
  }

  // Column offsets let a "- key: value" item be parsed as a mapping starting mid-line.
  absl::string_view LineFrom(size_t i, size_t column) const {
    absl::string_view t = lines_[i].text;
    return column >= t.size() ? absl::string_view() : t.substr(column);
  }

  static bool StartsSequenceItem(absl::string_view content) {
    return content == "-" || (content.size() >= 2 && content[0] == '-' && content[1] == ' ');
  }

  // FindMappingColon returns the position of the ':' that ends a plain or quoted key, or npos.
  static size_t FindMappingColon(absl::string_view content) {
    if (content.empty()) {
      return absl::string_view::npos;
    }
    size_t i = 0;
    if (content[0] == '"' || content[0] == '\'') {
      char q = content[0];
      for (i = 1; i < content.size(); ++i) {
        if (q == '"' && content[i] == '\\') {
          ++i;
          continue;
        }
        if (content[i] == q) {
          if (q == '\'' && i + 1 < content.size() && content[i + 1] == '\'') {
            ++i;
            continue;
          }
          break;
        }
      }
      ++i;
      while (i < content.size() && content[i] == ' ') {
        ++i;
      }
      if (i < content.size() && content[i] == ':' &&
          (i + 1 == content.size() || content[i + 1] == ' ')) {
        return i;
      }
      return absl::string_view::npos;
    }
    if (content[0] == '[' || content[0] == '{' || content[0] == '#') {
      return absl::string_view::npos;
    }
    for (i = 0; i < content.size(); ++i) {
      if (content[i] == '#' && i > 0 && content[i - 1] == ' ') {
        return absl::string_view::npos;
      }
      if (content[i] == ':' && (i + 1 == content.size() || content[i + 1] == ' ')) {
        return i;
      }
    }
    return absl::string_view::npos;
  }

  // ParseBlock parses the block node whose first line is at_ with the given indent. `column`
  // is where the node starts on that first line (it differs from the indent for "- key: v").
  absl::StatusOr<YamlNode> ParseBlock(int indent, int depth, size_t column = std::string::npos) {
    if (depth > kMaxDepth) {
      return LineError(lines_[at_].number, "nesting is too deep");
    }
    if (column == std::string::npos) {
      column = static_cast<size_t>(indent);
    }
    absl::string_view content = LineFrom(at_, column);
    if (StartsSequenceItem(content)) {
      return ParseSequence(indent, depth, column);
    }
    if (FindMappingColon(content) != absl::string_view::npos) {
      return ParseMapping(indent, depth, column);
    }
    // A lone scalar or flow node as the whole block.
    const int number = lines_[at_].number;
    MESHTLS_ASSIGN_OR_RETURN(YamlNode node, ParseInlineValue(at_, column, depth));
    node.line = number;
    return node;
  }

  // NextSibling skips blank lines and tells whether the next line continues the block at
  // `indent`: a "- item" line for a sequence, a "key: value" line for a mapping. A shallower
  // line or a document marker ends the block; a deeper one is an error.
  absl::StatusOr<bool> NextSibling(int indent, bool sequence) {
    SkipBlank();
    if (at_ >= lines_.size() || Content(at_) == "---" || Content(at_) == "...") {
      return false;  // ParseDocument reports a second document
    }
    MESHTLS_ASSIGN_OR_RETURN(int line_indent, Indent(at_));
    if (line_indent < indent) {
      return false;
    }
    if (line_indent > indent) {
      return LineError(lines_[at_].number, "unexpected indentation");
    }
    // A sequence item at a mapping's level belongs to the parent ("key:\n- item").
    return StartsSequenceItem(Content(at_)) == sequence;
  }

  absl::StatusOr<YamlNode> ParseMapping(int indent, int depth, size_t first_column) {
    YamlNode node;
    node.kind = YamlNode::Kind::kMapping;
    node.line = lines_[at_].number;
    bool first = true;
    while (true) {
      if (!first) {
        MESHTLS_ASSIGN_OR_RETURN(bool more, NextSibling(indent, /*sequence=*/false));
        if (!more) {
          break;
        }
      }
      const size_t column = first ? first_column : static_cast<size_t>(indent);
      first = false;
      const int number = lines_[at_].number;
      absl::string_view content = LineFrom(at_, column);
      size_t colon = FindMappingColon(content);
      if (colon == absl::string_view::npos) {
        return LineError(number, "expected \"key: value\"");
      }
      std::string key;
      absl::string_view raw_key = content.substr(0, colon);
      while (!raw_key.empty() && raw_key.back() == ' ') {
        raw_key.remove_suffix(1);
      }
      if (!raw_key.empty() && (raw_key[0] == '"' || raw_key[0] == '\'')) {
        size_t pos = 0;
        MESHTLS_ASSIGN_OR_RETURN(key, ParseQuoted(raw_key, pos, number));
        if (pos != raw_key.size()) {
          return LineError(number, "unexpected text after a quoted key");
        }
      } else {
        key = std::string(raw_key);
        if (key.empty()) {
          return LineError(number, "empty key");
        }
        if (key[0] == '?' || key[0] == '&' || key[0] == '*' || key[0] == '!') {
          return LineError(number, "anchors, aliases, tags and complex keys are not supported");
        }
      }
      if (node.Find(key) != nullptr) {
        return LineError(number, absl::StrCat("duplicate key \"", key, "\""));
      }
      const size_t value_column = column + colon + 1;
      absl::string_view rest = StripComment(LineFrom(at_, value_column));
      YamlNode value;
      if (rest.empty()) {
        ++at_;
        SkipBlank();
        if (at_ < lines_.size()) {
          MESHTLS_ASSIGN_OR_RETURN(int next_indent, Indent(at_));
          if (next_indent > indent) {
            MESHTLS_ASSIGN_OR_RETURN(value, ParseBlock(next_indent, depth + 1));
          } else if (next_indent == indent && StartsSequenceItem(Content(at_))) {
            MESHTLS_ASSIGN_OR_RETURN(value, ParseSequence(indent, depth + 1, indent));
          } else {
            value.line = number;
          }
        } else {
          value.line = number;
        }
      } else {
        size_t start = value_column;
        absl::string_view t = lines_[at_].text;
        while (start < t.size() && t[start] == ' ') {
          ++start;
        }
        MESHTLS_ASSIGN_OR_RETURN(value, ParseInlineValue(at_, start, depth + 1));
        value.line = number;
      }
      node.entries.push_back(YamlEntry{std::move(key), std::move(value)});
      if (at_ >= lines_.size()) {
        break;
      }
    }
    return node;
  }

  absl::StatusOr<YamlNode> ParseSequence(int indent, int depth, size_t first_column) {
    YamlNode node;
    node.kind = YamlNode::Kind::kSequence;
    node.line = lines_[at_].number;
    bool first = true;
    while (true) {
      if (!first) {
        MESHTLS_ASSIGN_OR_RETURN(bool more, NextSibling(indent, /*sequence=*/true));
        if (!more) {
          break;
        }
      }
      const size_t column = first ? first_column : static_cast<size_t>(indent);
      first = false;
      const int number = lines_[at_].number;
      absl::string_view t = lines_[at_].text;
      size_t item_column = column + 1;
      while (item_column < t.size() && t[item_column] == ' ') {
        ++item_column;
      }
      absl::string_view rest = StripComment(LineFrom(at_, item_column));
      YamlNode item;
      if (rest.empty()) {
        ++at_;
        SkipBlank();
        item.line = number;
        if (at_ < lines_.size()) {
          MESHTLS_ASSIGN_OR_RETURN(int next_indent, Indent(at_));
          if (next_indent > indent) {
            MESHTLS_ASSIGN_OR_RETURN(item, ParseBlock(next_indent, depth + 1));
          }
        }
      } else if (StartsSequenceItem(rest) || FindMappingColon(rest) != absl::string_view::npos) {
        // "- key: value" or "- - x": a block node whose indent is the item's column.
        MESHTLS_ASSIGN_OR_RETURN(item,
                                 ParseBlock(static_cast<int>(item_column), depth + 1, item_column));
      } else {
        MESHTLS_ASSIGN_OR_RETURN(item, ParseInlineValue(at_, item_column, depth + 1));
        item.line = number;
      }
      node.items.push_back(std::move(item));
      if (at_ >= lines_.size()) {
        break;
      }
    }
    return node;
  }

  // StripComment removes a trailing " # comment" outside quotes and trailing spaces.
  static absl::string_view StripComment(absl::string_view s) {
    char quote = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      char c = s[i];
      if (quote != 0) {
        if (quote == '"' && c == '\\') {
          ++i;
        } else if (c == quote) {
          quote = 0;
        }
        continue;
      }
      if ((c == '"' || c == '\'') &&
          (i == 0 || s[i - 1] == ' ' || s[i - 1] == '[' || s[i - 1] == '{' || s[i - 1] == ',')) {
        quote = c;
      } else if (c == '#' && (i == 0 || IsSpace(s[i - 1]))) {
        s = s.substr(0, i);
        break;
      }
    }
    while (!s.empty() && IsSpace(s.back())) {
      s.remove_suffix(1);
    }
    while (!s.empty() && IsSpace(s.front())) {
      s.remove_prefix(1);
    }
    return s;
  }

  // ParseInlineValue parses a scalar or a flow collection starting at (line, column), and
  // leaves at_ on the line after it.
  absl::StatusOr<YamlNode> ParseInlineValue(size_t line, size_t column, int depth) {
    absl::string_view t = lines_[line].text;
    const int number = lines_[line].number;
    if (column < t.size() && (t[column] == '[' || t[column] == '{')) {
      flow_line_ = line;
      flow_col_ = column;
      MESHTLS_ASSIGN_OR_RETURN(YamlNode node, ParseFlow(depth));
      SkipFlowSpace();
      if (flow_line_ < lines_.size() && flow_col_ < lines_[flow_line_].text.size()) {
        return LineError(lines_[flow_line_].number, "unexpected text after a flow collection");
      }
      at_ = flow_line_ + 1;
      node.line = number;
      return node;
    }
    absl::string_view rest = StripComment(LineFrom(line, column));
    at_ = line + 1;
    return ScalarFromText(rest, number);
  }

  absl::StatusOr<YamlNode> ScalarFromText(absl::string_view rest, int number) {
    YamlNode node;
    node.line = number;
    if (rest.empty()) {
      return node;
    }
    char c = rest[0];
    if (c == '|' || c == '>') {
      return LineError(number, "block scalars (| and >) are not supported; use a quoted string");
    }
    if (c == '&' || c == '*' || c == '!') {
      return LineError(number, "anchors, aliases and tags are not supported");
    }
    if (c == '"' || c == '\'') {
      size_t pos = 0;
      MESHTLS_ASSIGN_OR_RETURN(node.scalar, ParseQuoted(rest, pos, number));
      if (pos != rest.size()) {
        return LineError(number, "unexpected text after a quoted string");
      }
      node.kind = YamlNode::Kind::kScalar;
      node.quoted = true;
      return node;
    }
    if (c == '@' || c == '`' || c == '%') {
      return LineError(number, absl::StrCat("a plain value may not start with '", rest.substr(0, 1),
                                            "'; quote it"));
    }
    if (rest == "~" || rest == "null" || rest == "Null" || rest == "NULL") {
      return node;
    }
    node.kind = YamlNode::Kind::kScalar;
    node.scalar = std::string(rest);
    return node;
  }

  // ParseQuoted reads a quoted string at s[pos], leaving pos after the closing quote.
  static absl::StatusOr<std::string> ParseQuoted(absl::string_view s, size_t& pos, int number) {
    const char q = s[pos];
    std::string out;
    size_t i = pos + 1;
    for (; i < s.size(); ++i) {
      char c = s[i];
      if (q == '\'') {
        if (c == '\'') {
          if (i + 1 < s.size() && s[i + 1] == '\'') {
            out += '\'';
            ++i;
            continue;
          }
          pos = i + 1;
          return out;
        }
        out += c;
        continue;
      }
      if (c == '"') {
        pos = i + 1;
        return out;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i >= s.size()) {
        break;
      }
      switch (s[i]) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case '"':
        case '\\':
        case '/':
          out += s[i];
          break;
        default:
          return LineError(number, absl::StrCat("unsupported escape \\", s.substr(i, 1)));
      }
    }
    return LineError(number, "unterminated quoted string");
  }

  // --- Flow collections: a character cursor (flow_line_, flow_col_) that may cross lines.

  void SkipFlowSpace() {
    while (flow_line_ < lines_.size()) {
      absl::string_view t = lines_[flow_line_].text;
      while (flow_col_ < t.size() && IsSpace(t[flow_col_])) {
        ++flow_col_;
      }
      if (flow_col_ < t.size() && t[flow_col_] == '#' &&
          (flow_col_ == 0 || IsSpace(t[flow_col_ - 1]))) {
        flow_col_ = t.size();
      }
      if (flow_col_ < t.size()) {
        return;
      }
      // At the end of the line: the caller decides whether crossing lines is allowed.
      return;
    }
  }

  // NextFlowChar skips spaces, comments and line ends inside a flow collection.
  absl::StatusOr<char> NextFlowChar() {
    while (true) {
      SkipFlowSpace();
      if (flow_line_ >= lines_.size()) {
        return LineError(lines_.back().number, "unterminated flow collection ([ or {)");
      }
      if (flow_col_ < lines_[flow_line_].text.size()) {
        return lines_[flow_line_].text[flow_col_];
      }
      ++flow_line_;
      flow_col_ = 0;
      if (flow_line_ < lines_.size()) {
        MESHTLS_ASSIGN_OR_RETURN(int unused, Indent(flow_line_));
        (void)unused;
      }
    }
  }

  int FlowLineNumber() const {
    return flow_line_ < lines_.size() ? lines_[flow_line_].number : lines_.back().number;
  }

  absl::StatusOr<YamlNode> ParseFlowScalar() {
    absl::string_view t = lines_[flow_line_].text;
    const int number = FlowLineNumber();
    if (t[flow_col_] == '"' || t[flow_col_] == '\'') {
      size_t pos = flow_col_;
      YamlNode node;
      node.line = number;
      node.kind = YamlNode::Kind::kScalar;
      node.quoted = true;
      MESHTLS_ASSIGN_OR_RETURN(node.scalar, ParseQuoted(t, pos, number));
      flow_col_ = pos;
      return node;
    }
    size_t end = flow_col_;
    while (end < t.size()) {
      char c = t[end];
      if (c == ',' || c == ']' || c == '}' || c == '[' || c == '{') {
        break;
      }
      if (c == ':' && (end + 1 == t.size() || t[end + 1] == ' ' || t[end + 1] == ',' ||
                       t[end + 1] == '}' || t[end + 1] == ']')) {
        break;
      }
      if (c == '#' && end > 0 && IsSpace(t[end - 1])) {
        break;
      }
      ++end;
    }
    absl::string_view text = t.substr(flow_col_, end - flow_col_);
    while (!text.empty() && IsSpace(text.back())) {
      text.remove_suffix(1);
    }
    flow_col_ = end;
    return ScalarFromText(text, number);
  }

  absl::StatusOr<YamlNode> ParseFlowValue(int depth) {
    MESHTLS_ASSIGN_OR_RETURN(char c, NextFlowChar());
    if (c == '[' || c == '{') {
      return ParseFlow(depth + 1);
    }
    if (c == ',' || c == ']' || c == '}' || c == ':') {
      return LineError(FlowLineNumber(),
                       absl::StrCat("expected a value before '", std::string(1, c), "'"));
    }
    return ParseFlowScalar();
  }

  absl::StatusOr<YamlNode> ParseFlow(int depth) {
    if (depth > kMaxDepth) {
      return LineError(FlowLineNumber(), "nesting is too deep");
    }
    const char open = lines_[flow_line_].text[flow_col_];
    const char close = open == '[' ? ']' : '}';
    YamlNode node;
    node.line = FlowLineNumber();
    node.kind = open == '[' ? YamlNode::Kind::kSequence : YamlNode::Kind::kMapping;
    ++flow_col_;
    MESHTLS_ASSIGN_OR_RETURN(char c, NextFlowChar());
    if (c == close) {
      ++flow_col_;
      return node;
    }
    while (true) {
      if (node.kind == YamlNode::Kind::kSequence) {
        MESHTLS_ASSIGN_OR_RETURN(YamlNode item, ParseFlowValue(depth));
        node.items.push_back(std::move(item));
      } else {
        MESHTLS_ASSIGN_OR_RETURN(YamlNode key, ParseFlowValue(depth));
        if (key.kind != YamlNode::Kind::kScalar) {
          return LineError(key.line, "a key must be a plain or quoted string");
        }
        MESHTLS_ASSIGN_OR_RETURN(char colon, NextFlowChar());
        if (colon != ':') {
          return LineError(FlowLineNumber(), "expected ':' after a key in {...}");
        }
        ++flow_col_;
        MESHTLS_ASSIGN_OR_RETURN(char next, NextFlowChar());
        YamlNode value;
        value.line = FlowLineNumber();
        if (next != ',' && next != '}') {
          MESHTLS_ASSIGN_OR_RETURN(value, ParseFlowValue(depth));
        }
        if (node.Find(key.scalar) != nullptr) {
          return LineError(key.line, absl::StrCat("duplicate key \"", key.scalar, "\""));
        }
        node.entries.push_back(YamlEntry{std::move(key.scalar), std::move(value)});
      }
      MESHTLS_ASSIGN_OR_RETURN(char sep, NextFlowChar());
      if (sep == close) {
        ++flow_col_;
        return node;
      }
      if (sep != ',') {
        return LineError(FlowLineNumber(),
                         absl::StrCat("expected ',' or '", std::string(1, close), "'"));
      }
      ++flow_col_;
      MESHTLS_ASSIGN_OR_RETURN(char after, NextFlowChar());
      if (after == close) {  // trailing comma
        ++flow_col_;
        return node;
      }
    }
  }

  std::vector<Line> lines_;
  size_t at_ = 0;
  size_t flow_line_ = 0;
  size_t flow_col_ = 0;
};

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

}  // namespace

const YamlNode* YamlNode::Find(absl::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

absl::StatusOr<YamlNode> ParseYaml(absl::string_view text) {
  if (text.size() > kMaxDocumentBytes) {
    return absl::InvalidArgumentError("document is larger than 1 MiB");
  }
  if (text.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("document contains a NUL byte");
  }
  return Parser(text).ParseDocument();
}

absl::StatusOr<ConfigMap> ConfigMap::Of(const YamlNode& node, std::string path) {
  if (node.kind != YamlNode::Kind::kMapping && node.kind != YamlNode::Kind::kNull) {
    return FieldError(path.empty() ? "(top level)" : path, node,
                      absl::StrCat("must be a mapping, not ", KindName(node.kind)));
  }
  return ConfigMap(node, std::move(path));
}

const YamlNode* ConfigMap::Take(absl::string_view key) {
  taken_.emplace_back(key);
  const YamlNode* value = node_->Find(key);
  return value;
}

std::string ConfigMap::FieldPath(absl::string_view key) const {
  return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
}

absl::Status ConfigMap::Finish() const {
  for (const auto& [key, value] : node_->entries) {
    if (std::find(taken_.begin(), taken_.end(), key) == taken_.end()) {
      return FieldError(FieldPath(key), value, "unknown field");
    }
  }
  return absl::OkStatus();
}

absl::Status FieldError(absl::string_view path, const YamlNode& node, absl::string_view message) {
  if (node.line > 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message, " (line ", node.line, ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

absl::StatusOr<std::string> ReadString(const YamlNode& node, absl::string_view path) {
  if (node.kind != YamlNode::Kind::kScalar) {
    return FieldError(path, node, absl::StrCat("must be a string, not ", KindName(node.kind)));
  }
  return node.scalar;
}

absl::StatusOr<bool> ReadBool(const YamlNode& node, absl::string_view path) {
  if (node.kind == YamlNode::Kind::kScalar && !node.quoted) {
    if (node.scalar == "true") return true;
    if (node.scalar == "false") return false;
  }
  return FieldError(path, node, "must be true or false");
}

absl::StatusOr<double> ReadNumber(const YamlNode& node, absl::string_view path) {
  double value = 0;
  if (node.kind != YamlNode::Kind::kScalar || node.quoted ||
      !absl::SimpleAtod(node.scalar, &value) || !std::isfinite(value)) {
    return FieldError(path, node, "must be a number");
  }
  return value;
}

absl::StatusOr<int64_t> ReadInt(const YamlNode& node, absl::string_view path, int64_t min,
                                int64_t max) {
  int64_t value = 0;
  if (node.kind != YamlNode::Kind::kScalar || node.quoted ||
      !absl::SimpleAtoi(node.scalar, &value) || value < min || value > max) {
    return FieldError(path, node, absl::StrCat("must be a whole number from ", min, " to ", max));
  }
  return value;
}

absl::StatusOr<absl::Duration> ReadDuration(const YamlNode& node, absl::string_view path) {
  absl::Duration d;
  if (node.kind != YamlNode::Kind::kScalar || !absl::ParseDuration(node.scalar, &d) ||
      d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return FieldError(path, node, "must be a positive duration such as 500ms, 10s, 2m or 24h");
  }
  return d;
}

absl::StatusOr<std::vector<std::string>> ReadStringList(const YamlNode& node,
                                                        absl::string_view path) {
  std::vector<std::string> out;
  if (node.kind == YamlNode::Kind::kScalar) {
    out.push_back(node.scalar);
    return out;
  }
  if (node.kind == YamlNode::Kind::kNull) {
    return out;
  }
  if (node.kind != YamlNode::Kind::kSequence) {
    return FieldError(path, node,
                      absl::StrCat("must be a list of strings, not ", KindName(node.kind)));
  }
  for (size_t i = 0; i < node.items.size(); ++i) {
    MESHTLS_ASSIGN_OR_RETURN(std::string s,
                             ReadString(node.items[i], absl::StrCat(path, "[", i, "]")));
    out.push_back(std::move(s));
  }
  return out;
}

absl::StatusOr<std::string> ReadListenAddress(const YamlNode& node, absl::string_view path) {
  MESHTLS_ASSIGN_OR_RETURN(std::string text, ReadString(node, path));
  absl::StatusOr<HostPort> hp = ParseHostPort(text, /*allow_port_zero=*/true);
  if (!hp.ok()) {
    return FieldError(path, node, hp.status().message());
  }
  if (!hp->host_is_ip) {
    return FieldError(path, node,
                      "a listen address must be an IP address (0.0.0.0, [::], 127.0.0.1)");
  }
  return hp->ToString();
}

absl::Status ReadLogSection(const YamlNode& node, absl::string_view path, LogLevel& level,
                            LogFormat& format) {
  MESHTLS_ASSIGN_OR_RETURN(ConfigMap log, ConfigMap::Of(node, std::string(path)));
  if (const YamlNode* v = log.Take("level")) {
    MESHTLS_ASSIGN_OR_RETURN(std::string text, ReadString(*v, log.FieldPath("level")));
    absl::StatusOr<LogLevel> parsed = ParseLogLevel(text);
    if (!parsed.ok()) {
      return FieldError(log.FieldPath("level"), *v, parsed.status().message());
    }
    level = *parsed;
  }
  if (const YamlNode* v = log.Take("format")) {
    MESHTLS_ASSIGN_OR_RETURN(std::string text, ReadString(*v, log.FieldPath("format")));
    absl::StatusOr<LogFormat> parsed = ParseLogFormat(text);
    if (!parsed.ok()) {
      return FieldError(log.FieldPath("format"), *v, parsed.status().message());
    }
    format = *parsed;
  }
  return log.Finish();
}

}  // namespace meshtls::base

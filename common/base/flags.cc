#include "common/base/flags.h"

#include <algorithm>
#include <cstddef>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/base/check.h"

namespace meshtls::base {
namespace {

// FlagOnLine is one "-..." argument as written, before the command is known.
struct FlagOnLine {
  std::string name;  // without "--"; the whole argument for "-x" or "--"
  std::optional<std::string> value;
  std::string arity_error;  // set when a known flag misses its value or has one it must not
  bool known = false;       // some command (or every one) has a flag of this name
};

const FlagSpec* FindFlag(const std::vector<FlagSpec>& flags, absl::string_view name) {
  for (const FlagSpec& flag : flags) {
    if (flag.name == name) {
      return &flag;
    }
  }
  return nullptr;
}

// FindAnyFlag looks `name` up in every command and the common flags. A name means the same
// (value or boolean) in every command that has it, so the first match tells how to read it.
const FlagSpec* FindAnyFlag(const CommandLineSpec& spec, absl::string_view name) {
  if (const FlagSpec* flag = FindFlag(spec.common_flags, name)) {
    return flag;
  }
  for (const CommandSpec& command : spec.commands) {
    if (const FlagSpec* flag = FindFlag(command.flags, name)) {
      return flag;
    }
  }
  return nullptr;
}

// CheckSpec crashes on a spec that would make a line ambiguous (a programming error).
void CheckSpec(const CommandLineSpec& spec) {
  MESHTLS_CHECK(spec.default_command < spec.commands.size(), "no such default command");
  for (const CommandSpec& command : spec.commands) {
    for (const FlagSpec& flag : command.flags) {
      const FlagSpec* first = FindAnyFlag(spec, flag.name);
      MESHTLS_CHECK(first->takes_value() == flag.takes_value(),
                    "a flag name takes a value in every command or in none");
    }
  }
}

bool StartsWithWords(const std::vector<std::string>& words, const std::vector<std::string>& head) {
  return head.size() <= words.size() && std::equal(head.begin(), head.end(), words.begin());
}

// Prefixed puts the command's name before a message ("serve: ..."); a binary without
// subcommands has no name to put.
std::string Prefixed(const CommandSpec& command, absl::string_view message) {
  const std::string name = command.name();
  return name.empty() ? std::string(message) : absl::StrCat(name, ": ", message);
}

// AppendFlagLines lists flags one per line: "  --name VALUE" padded to one column, then the help,
// its further lines indented to that column.
void AppendFlagLines(const std::vector<FlagSpec>& flags, std::string& out) {
  constexpr size_t kMaxColumn = 26;
  size_t column = 0;
  auto left = [](const FlagSpec& flag) {
    return flag.takes_value() ? absl::StrCat("  --", flag.name, " ", flag.value_name)
                              : absl::StrCat("  --", flag.name);
  };
  for (const FlagSpec& flag : flags) {
    column = std::max(column, std::min(left(flag).size() + 2, kMaxColumn));
  }
  const std::string indent(column, ' ');
  for (const FlagSpec& flag : flags) {
    std::string line = left(flag);
    if (line.size() + 2 > column) {
      absl::StrAppend(&out, line, "\n", indent);
    } else {
      absl::StrAppend(&out, line, std::string(column - line.size(), ' '));
    }
    const std::vector<absl::string_view> help_lines = absl::StrSplit(flag.help, '\n');
    absl::StrAppend(&out, absl::StrJoin(help_lines, "\n" + indent), "\n");
  }
}

std::string UsageLine(const CommandLineSpec& spec, const CommandSpec& command, bool overview) {
  std::vector<std::string> parts = {spec.program};
  if (!command.words.empty()) {
    const std::string name = command.name();
    const bool optional = overview && &command == &spec.commands[spec.default_command];
    parts.push_back(optional ? absl::StrCat("[", name, "]") : name);
  }
  parts.insert(parts.end(), command.arguments.begin(), command.arguments.end());
  if (!command.synopsis.empty()) {
    parts.push_back(command.synopsis);
  }
  return absl::StrJoin(parts, " ");
}

}  // namespace

std::string CommandSpec::name() const { return absl::StrJoin(words, " "); }

absl::StatusOr<ParsedCommandLine> ParseCommandLine(const CommandLineSpec& spec, int argc,
                                                   char** argv) {
  CheckSpec(spec);
  // First the words and flags, read with every command's flags: a value flag's value is not a
  // word whichever command owns the flag, so the command is found even when a flag is wrong.
  std::vector<std::string> words;
  std::vector<FlagOnLine> flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!absl::StartsWith(arg, "-") || arg == "-") {
      words.push_back(arg);
      continue;
    }
    FlagOnLine flag;
    if (!absl::StartsWith(arg, "--") || arg == "--") {
      flag.name = arg;
      flags.push_back(std::move(flag));
      continue;
    }
    flag.name = arg.substr(2);
    if (size_t eq = flag.name.find('='); eq != std::string::npos) {
      flag.value = flag.name.substr(eq + 1);
      flag.name.resize(eq);
    }
    const FlagSpec* known = FindAnyFlag(spec, flag.name);
    flag.known = known != nullptr;
    if (known != nullptr && !known->takes_value() && flag.value.has_value()) {
      flag.arity_error = absl::StrCat("flag --", flag.name, " takes no value");
    } else if (known != nullptr && known->takes_value() && !flag.value.has_value()) {
      if (i + 1 < argc) {
        flag.value = argv[++i];
      } else {
        flag.arity_error = absl::StrCat("flag --", flag.name, " needs a value");
      }
    }
    flags.push_back(std::move(flag));
  }
  auto display = [](const FlagOnLine& flag) {
    return absl::StartsWith(flag.name, "-") ? flag.name : absl::StrCat("--", flag.name);
  };

  // The command: the one whose words begin the line's words (the longest), else the default.
  ParsedCommandLine out;
  if (words.empty()) {
    out.command = &spec.commands[spec.default_command];
  } else {
    for (const CommandSpec& command : spec.commands) {
      if (StartsWithWords(words, command.words) &&
          (out.command == nullptr || command.words.size() > out.command->words.size())) {
        out.command = &command;
      }
    }
    if (out.command == nullptr) {
      // A flag nobody knows may have a value that was read as the command's word.
      for (const FlagOnLine& flag : flags) {
        if (!flag.known) {
          return absl::InvalidArgumentError(
              absl::StrCat("unknown flag ", display(flag), " (see --help)"));
        }
      }
      // "ca" or "ca frob": name the commands that start with the same word.
      std::vector<std::string> near;
      for (const CommandSpec& command : spec.commands) {
        if (!command.words.empty() && command.words[0] == words[0]) {
          near.push_back(command.name());
        }
      }
      if (!near.empty()) {
        const size_t shown = std::min(words.size(), size_t{2});
        return absl::InvalidArgumentError(absl::StrCat(
            "unknown command \"", absl::StrJoin(words.begin(), words.begin() + shown, " "), "\" (",
            absl::StrJoin(near, ", "), "; see --help)"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown command \"", words[0], "\" (see --help)"));
    }
    out.named = !out.command->words.empty();
  }
  const CommandSpec& command = *out.command;

  // Then each flag against the command's own.
  for (const FlagOnLine& flag : flags) {
    if (FindFlag(command.flags, flag.name) == nullptr &&
        FindFlag(spec.common_flags, flag.name) == nullptr) {
      std::vector<std::string> owners;
      for (const CommandSpec& other : spec.commands) {
        if (FindFlag(other.flags, flag.name) != nullptr) {
          // The command without words is the program run plainly ("meshtls-sidecar").
          owners.push_back(other.words.empty() ? spec.program : other.name());
        }
      }
      const std::string help =
          absl::StrCat(spec.program, command.words.empty() ? "" : " ", command.name(), " --help");
      return absl::InvalidArgumentError(
          Prefixed(command, owners.empty()
                                ? absl::StrCat("unknown flag ", display(flag), " (see ", help, ")")
                                : absl::StrCat("unknown flag ", display(flag), " (it belongs to ",
                                               absl::StrJoin(owners, ", "), ")")));
    }
    if (!flag.arity_error.empty()) {
      return absl::InvalidArgumentError(Prefixed(command, flag.arity_error));
    }
    out.flags.values[flag.name] = flag.value.value_or("");
  }

  // The positional arguments after the command's words (the default command's are not on the
  // line); --help needs none of them.
  const size_t command_words = out.named ? command.words.size() : 0;
  out.flags.words.assign(words.begin() + static_cast<ptrdiff_t>(command_words), words.end());
  if (out.flags.Has("help")) {
    return out;
  }
  // A last placeholder in brackets ending in "..." ("[FILE...]") takes zero or more words.
  const bool variadic = !command.arguments.empty() &&
                        absl::StartsWith(command.arguments.back(), "[") &&
                        absl::EndsWith(command.arguments.back(), "...]");
  const size_t required = command.arguments.size() - (variadic ? 1 : 0);
  if (out.flags.words.size() < required) {
    return absl::InvalidArgumentError(absl::StrCat(
        command.name(), " needs ", command.arguments[out.flags.words.size()], " (see --help)"));
  }
  if (!variadic && out.flags.words.size() > command.arguments.size()) {
    return absl::InvalidArgumentError(Prefixed(
        command, absl::StrCat("unexpected argument \"", out.flags.words[command.arguments.size()],
                              "\" (see --help)")));
  }
  return out;
}

std::string CommandHelp(const CommandLineSpec& spec, const CommandSpec& command) {
  std::string out = absl::StrCat("usage: ", UsageLine(spec, command, /*overview=*/false), "\n");
  if (!command.summary.empty()) {
    absl::StrAppend(&out, "\n", command.summary, "\n");
  }
  absl::StrAppend(&out, "\nflags:\n");
  std::vector<FlagSpec> flags = command.flags;
  flags.insert(flags.end(), spec.common_flags.begin(), spec.common_flags.end());
  AppendFlagLines(flags, out);
  return out;
}

std::string OverviewHelp(const CommandLineSpec& spec) {
  std::string out = "usage:\n";
  for (const CommandSpec& command : spec.commands) {
    absl::StrAppend(&out, "  ", UsageLine(spec, command, /*overview=*/true), "\n");
  }
  constexpr size_t kColumn = 14;
  const std::string indent(kColumn, ' ');
  absl::StrAppend(&out, "\n");
  for (const CommandSpec& command : spec.commands) {
    const std::string name = command.name();
    const std::vector<absl::string_view> summary_lines = absl::StrSplit(command.summary, '\n');
    absl::StrAppend(&out, name, std::string(kColumn - std::min(kColumn - 1, name.size()), ' '),
                    absl::StrJoin(summary_lines, "\n" + indent), "\n");
  }
  absl::StrAppend(&out, "\n", spec.program, " COMMAND --help lists the flags of COMMAND.\n");
  return out;
}

}  // namespace meshtls::base

#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::base {

// Flags is a parsed command line: "--name value" or "--name=value" pairs, boolean "--name"
// flags (value ""), and the positional words after the command's own words.
struct Flags {
  std::map<std::string, std::string> values;
  std::vector<std::string> words;

  bool Has(const std::string& name) const { return values.count(name) != 0; }
  std::optional<std::string> Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
};

// FlagSpec declares one flag: its name without "--", the placeholder of its value in help
// ("FILE"; empty for a boolean flag), and its help text (lines after the first indented by the
// writer).
struct FlagSpec {
  std::string name = {};
  std::string value_name = {};
  std::string help = {};

  bool takes_value() const { return !value_name.empty(); }
};

// CommandSpec declares one command of a binary: the words that name it ("ca", "rotate"; none
// for a binary without subcommands), the placeholders of the positional arguments after them,
// its flags, a one-line synopsis of its flags for usage lines, and what it does. (Every member
// has a default so a designated initializer may leave it out.)
struct CommandSpec {
  std::vector<std::string> words = {};
  std::vector<std::string> arguments = {};
  std::vector<FlagSpec> flags = {};
  std::string synopsis = {};
  std::string summary = {};

  // name is the words joined by spaces ("ca rotate"; "" without subcommands).
  std::string name() const;
};

// CommandLineSpec is a binary's whole command line: its commands, the flags every command
// accepts (--help, --version), and the command run when the line names none.
struct CommandLineSpec {
  std::string program = {};
  std::vector<CommandSpec> commands = {};
  std::vector<FlagSpec> common_flags = {};
  size_t default_command = 0;
};

// ParsedCommandLine is the command a line selects and the flags given to it; `command` points
// into the spec, which must outlive it. `named` tells whether the line named the command (or
// got the default).
struct ParsedCommandLine {
  const CommandSpec* command = nullptr;
  bool named = false;
  Flags flags;
};

// ParseCommandLine selects the command from argv's positional words and accepts only that
// command's flags (and the common ones), anywhere on the line. Errors are InvalidArgument with
// one line naming what is wrong: an unknown command, a flag the command does not take
// ("serve: unknown flag --force (it belongs to ca rotate)"), a missing or unexpected value, or
// a wrong number of positional arguments (not checked when --help is given; a last placeholder
// written "[NAME...]" takes any number, none included).
absl::StatusOr<ParsedCommandLine> ParseCommandLine(const CommandLineSpec& spec, int argc,
                                                   char** argv);

// CommandHelp is `command`'s --help text: its usage line, what it does, and its flags only.
std::string CommandHelp(const CommandLineSpec& spec, const CommandSpec& command);

// OverviewHelp is the --help text without a command: every command's usage line and summary.
std::string OverviewHelp(const CommandLineSpec& spec);

}  // namespace meshtls::base

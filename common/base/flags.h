#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace meshtls::base {

// Flags is a parsed command line: "--name value" or "--name=value" pairs, boolean "--name"
// flags, and positional words (subcommands).
struct Flags {
  std::map<std::string, std::string> values;
  std::vector<std::string> words;

  bool Has(const std::string& name) const { return values.count(name) != 0; }
  std::optional<std::string> Get(const std::string& name) const {
    auto it = values.find(name);
    return it == values.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
};

// ParseFlags accepts only the named flags; an unknown flag or a value flag without its value
// is an InvalidArgument error naming it.
absl::StatusOr<Flags> ParseFlags(int argc, char** argv, const std::vector<std::string>& value_flags,
                                 const std::vector<std::string>& bool_flags);

}  // namespace meshtls::base

// ParseCommandLine on a spec shaped like certmgr's: the command comes from the words, and each
// command accepts only its own flags (plus the common ones) wherever they stand on the line.

#include "common/base/flags.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace meshtls::base {
namespace {

using testing::IsOk;
using testing::StatusIs;

CommandLineSpec Spec() {
  return {
      .program = "prog",
      .commands = {{.words = {"serve"},
                    .flags = {{"config", "FILE", "the config"}, {"check", "", "check only"}},
                    .summary = "serve it"},
                   {.words = {"ca", "rotate"},
                    .arguments = {"STEP"},
                    .flags = {{"config", "FILE", "the config"}, {"force", "", "even early"}},
                    .summary = "one step"},
                   {.words = {"verify"},
                    .flags = {{"bundle", "ROOTS", "trusted\nroots"}},
                    .summary = "check a chain"}},
      .common_flags = {{"help", "", "print this help"}},
  };
}

// Parse runs ParseCommandLine on argv (without the program name).
absl::StatusOr<ParsedCommandLine> Parse(const CommandLineSpec& spec,
                                        std::vector<std::string> args) {
  args.insert(args.begin(), "prog");
  std::vector<char*> argv;
  for (std::string& arg : args) {
    argv.push_back(arg.data());
  }
  return ParseCommandLine(spec, static_cast<int>(argv.size()), argv.data());
}

TEST(ParseCommandLineTest, NoWordsIsTheDefaultCommand) {
  const CommandLineSpec spec = Spec();
  absl::StatusOr<ParsedCommandLine> parsed = Parse(spec, {"--config=c.yaml", "--check"});
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->command->name(), "serve");
  EXPECT_FALSE(parsed->named);
  EXPECT_EQ(parsed->flags.Get("config"), "c.yaml");
  EXPECT_TRUE(parsed->flags.Has("check"));
}

TEST(ParseCommandLineTest, FlagsMayStandBeforeTheWordsAndValuesAreNotWords) {
  const CommandLineSpec spec = Spec();
  // "verify" is --config's value, not a command.
  absl::StatusOr<ParsedCommandLine> parsed =
      Parse(spec, {"--config", "verify", "ca", "--force", "rotate", "prepare"});
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->command->name(), "ca rotate");
  EXPECT_TRUE(parsed->named);
  EXPECT_EQ(parsed->flags.Get("config"), "verify");
  EXPECT_EQ(parsed->flags.words, std::vector<std::string>{"prepare"});
}

TEST(ParseCommandLineTest, AnotherCommandsFlagNamesItsOwners) {
  const CommandLineSpec spec = Spec();
  EXPECT_THAT(Parse(spec, {"serve", "--force"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "serve: unknown flag --force (it belongs to ca rotate)"));
  EXPECT_THAT(Parse(spec, {"verify", "--bundle", "b", "--config", "c"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "verify: unknown flag --config (it belongs to serve, ca rotate)"));
  // Wrong before malformed: the flag is not verify's whatever its value.
  EXPECT_THAT(Parse(spec, {"verify", "--check=1"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "verify: unknown flag --check (it belongs to serve)"));
}

// A binary whose default command has no words (the sidecar: run it, or init-network): a flag of
// the plain command is said to belong to the program itself.
TEST(ParseCommandLineTest, TheCommandWithoutWordsIsNamedByTheProgram) {
  const CommandLineSpec spec = {
      .program = "prog",
      .commands = {{.flags = {{"config", "FILE", "the config"}, {"admin", "ADDR", "admin"}}},
                   {.words = {"init"},
                    .flags = {{"config", "FILE", "the config"}, {"clean", "", "remove"}}}},
  };
  EXPECT_THAT(Parse(spec, {"init", "--admin", "a"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "init: unknown flag --admin (it belongs to prog)"));
  EXPECT_THAT(Parse(spec, {"--clean"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                                 "unknown flag --clean (it belongs to init)"));
  absl::StatusOr<ParsedCommandLine> parsed = Parse(spec, {"--config", "c", "init", "--clean"});
  ASSERT_THAT(parsed, IsOk());
  EXPECT_EQ(parsed->command->name(), "init");
  EXPECT_TRUE(parsed->named);
}

TEST(ParseCommandLineTest, UnknownFlagsAndCommands) {
  const CommandLineSpec spec = Spec();
  EXPECT_THAT(Parse(spec, {"--bogus"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "serve: unknown flag --bogus (see prog serve --help)"));
  EXPECT_THAT(Parse(spec, {"verify", "-b", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "verify: unknown flag -b"));
  EXPECT_THAT(Parse(spec, {"verify", "--"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "verify: unknown flag --"));
  // The unknown flag's value may be what looks like a command, so the flag is named.
  EXPECT_THAT(Parse(spec, {"--bogus", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown flag --bogus (see --help)"));
  EXPECT_THAT(Parse(spec, {"frobnicate"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown command \"frobnicate\""));
  EXPECT_THAT(Parse(spec, {"ca"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                            "unknown command \"ca\" (ca rotate; see --help)"));
  EXPECT_THAT(Parse(spec, {"ca", "frob", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "unknown command \"ca frob\" (ca rotate; see --help)"));
}

TEST(ParseCommandLineTest, ValuesAndArguments) {
  const CommandLineSpec spec = Spec();
  EXPECT_THAT(Parse(spec, {"serve", "--check=yes"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "serve: flag --check takes no value"));
  EXPECT_THAT(Parse(spec, {"verify", "--bundle"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "verify: flag --bundle needs a value"));
  EXPECT_THAT(Parse(spec, {"ca", "rotate"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "ca rotate needs STEP"));
  EXPECT_THAT(Parse(spec, {"ca", "rotate", "a", "b"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "ca rotate: unexpected argument \"b\""));
  // --help needs no arguments; a flag given twice keeps the last value.
  absl::StatusOr<ParsedCommandLine> help = Parse(spec, {"ca", "rotate", "--help"});
  ASSERT_THAT(help, IsOk());
  EXPECT_TRUE(help->flags.Has("help"));
  absl::StatusOr<ParsedCommandLine> twice = Parse(spec, {"--config", "a", "--config", "b"});
  ASSERT_THAT(twice, IsOk());
  EXPECT_EQ(twice->flags.Get("config"), "b");
}

TEST(ParseCommandLineTest, BinaryWithoutSubcommands) {
  const CommandLineSpec spec = {
      .program = "side",
      .commands = {{.flags = {{"config", "FILE", "the config"}}}},
      .common_flags = {{"help", "", "print this help"}},
  };
  ASSERT_THAT(Parse(spec, {"--config", "c"}), IsOk());
  EXPECT_THAT(Parse(spec, {"--config", "c", "serve"}),
              StatusIs(absl::StatusCode::kInvalidArgument, "unexpected argument \"serve\""));
  EXPECT_THAT(
      Parse(spec, {"--token-file", "t"}),
      StatusIs(absl::StatusCode::kInvalidArgument, "unknown flag --token-file (see side --help)"));
}

TEST(CommandHelpTest, ListsOnlyTheCommandsFlags) {
  const CommandLineSpec spec = Spec();
  const std::string help = CommandHelp(spec, spec.commands[1]);
  EXPECT_EQ(help,
            "usage: prog ca rotate STEP\n"
            "\n"
            "one step\n"
            "\n"
            "flags:\n"
            "  --config FILE  the config\n"
            "  --force        even early\n"
            "  --help         print this help\n");
  EXPECT_EQ(CommandHelp(spec, spec.commands[2]).find("--config"), std::string::npos);
  EXPECT_NE(CommandHelp(spec, spec.commands[2])
                .find("  --bundle ROOTS  trusted\n"
                      "                  roots\n"),
            std::string::npos);
}

TEST(CommandHelpTest, OverviewNamesEveryCommand) {
  const CommandLineSpec spec = Spec();
  EXPECT_EQ(OverviewHelp(spec),
            "usage:\n"
            "  prog [serve]\n"
            "  prog ca rotate STEP\n"
            "  prog verify\n"
            "\n"
            "serve         serve it\n"
            "ca rotate     one step\n"
            "verify        check a chain\n"
            "\n"
            "prog COMMAND --help lists the flags of COMMAND.\n");
}

}  // namespace
}  // namespace meshtls::base

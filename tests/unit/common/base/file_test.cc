// WriteFileAtomically on a real directory: the result, its mode, no temporary file left
// behind, and no way for another user of the directory to redirect the write with a symlink
// planted where the temporary file would go.

#include "common/base/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::base {
namespace {

using testing::IsOk;

std::set<std::string> Names(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

TEST(WriteFileAtomicallyTest, WritesTheFileWithItsModeAndLeavesNoTemporaryFile) {
  testing::TempDir dir;
  const std::string path = dir.File("ca.key");
  const mode_t old_umask = ::umask(077);
  ASSERT_THAT(WriteFileAtomically(path, "first\n", 0644), IsOk());
  ::umask(old_umask);
  ASSERT_THAT(WriteFileAtomically(path, "second\n", 0600), IsOk());
  EXPECT_EQ(*ReadFileToString(path), "second\n");
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(Names(dir.path()), std::set<std::string>{"ca.key"});
}

// The temporary file must be a new file of the writer's own: a symlink waiting at the old
// predictable name (<path>.tmp.<pid>) was followed, which let anyone able to write the
// directory overwrite any file the writer could write, and left the symlink as `path`.
TEST(WriteFileAtomicallyTest, DoesNotFollowASymlinkPlantedAtTheTemporaryName) {
  testing::TempDir dir;
  const std::string victim = dir.Write("victim", "keep me\n", 0644);
  const std::string path = dir.File("bundle.seq");
  const std::string planted = absl::StrCat(path, ".tmp.", ::getpid());
  ASSERT_EQ(::symlink(victim.c_str(), planted.c_str()), 0);
  ASSERT_THAT(WriteFileAtomically(path, "7\n", 0644), IsOk());
  EXPECT_EQ(*ReadFileToString(victim), "keep me\n") << "the write went through the symlink";
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << path << " is not a regular file";
  EXPECT_EQ(*ReadFileToString(path), "7\n");
}

TEST(WriteFileAtomicallyTest, AFailedWriteNamesThePathAndLeavesNothing) {
  testing::TempDir dir;
  const std::string missing = dir.File("no-such-dir/file");
  absl::Status s = WriteFileAtomically(missing, "x", 0600);
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_NE(s.message().find(dir.File("no-such-dir")), absl::string_view::npos) << s;
  EXPECT_TRUE(Names(dir.path()).empty());
}

}  // namespace
}  // namespace meshtls::base

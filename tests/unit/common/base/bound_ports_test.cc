// The bound-ports file format: what the binaries write is what the test harness and scripts
// read back, and a damaged file is refused with the line that is wrong.

#include "common/base/bound_ports.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/base/file.h"
#include "tests/testing/harness.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::base {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

HostPort Address(absl::string_view text) { return *ParseHostPort(text); }

TEST(BoundPortsTest, FormatsOneLinePerListenerInOrder) {
  EXPECT_EQ(FormatBoundPorts({{"admin", Address("127.0.0.1:40321")},
                              {"inbound.http", Address("0.0.0.0:40323")},
                              {"grpc", Address("[::1]:8443")}}),
            "admin=127.0.0.1:40321\ninbound.http=0.0.0.0:40323\ngrpc=[::1]:8443\n");
}

TEST(BoundPortsTest, WrittenFileParsesBack) {
  testing::TempDir dir;
  const std::string path = dir.File("ports");
  ASSERT_THAT(WriteBoundPortsFile(path, {{"admin", Address("127.0.0.1:40321")},
                                         {"outbound.backend", Address("[::1]:40325")}}),
              IsOk());
  absl::StatusOr<std::map<std::string, HostPort>> parsed = ParseBoundPorts(*ReadFileToString(path));
  ASSERT_THAT(parsed, IsOk());
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ(parsed->at("admin").port, 40321);
  EXPECT_EQ(parsed->at("admin").host, "127.0.0.1");
  EXPECT_EQ(parsed->at("outbound.backend").port, 40325);
  EXPECT_TRUE(parsed->at("outbound.backend").is_ipv6);
}

TEST(BoundPortsTest, WriteNamesTheFlagWhenTheDirectoryIsMissing) {
  testing::TempDir dir;
  absl::Status s = WriteBoundPortsFile(dir.File("missing/ports"), {});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("--bound-ports-file"));
}

TEST(BoundPortsTest, RefusesDamagedLinesNamingThem) {
  for (const char* text : {"admin\n", "=127.0.0.1:1\n", "admin=127.0.0.1\n", "admin=localhost:80\n",
                           "admin=127.0.0.1:0\n", "admin=127.0.0.1:70000\n"}) {
    absl::StatusOr<std::map<std::string, HostPort>> parsed = ParseBoundPorts(text);
    EXPECT_THAT(parsed, StatusIs(absl::StatusCode::kInvalidArgument)) << text;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("line 1")) << text;
  }
  EXPECT_THAT(ParseBoundPorts("admin=127.0.0.1:1\nadmin=127.0.0.1:2\n"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(BoundPortsTest, EmptyFileHasNoListeners) {
  absl::StatusOr<std::map<std::string, HostPort>> parsed = ParseBoundPorts("");
  ASSERT_THAT(parsed, IsOk());
  EXPECT_TRUE(parsed->empty());
}

}  // namespace
}  // namespace meshtls::base

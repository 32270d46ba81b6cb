#include "common/base/host_port.h"

#include <gtest/gtest.h>

#include "tests/testing/status_matchers.h"

namespace meshtls::base {
namespace {

using testing::StatusIs;

TEST(HostPortTest, ParsesAndRejects) {
  EXPECT_EQ(ParseHostPort("127.0.0.1:80")->host, "127.0.0.1");
  EXPECT_TRUE(ParseHostPort("[::1]:15443")->is_ipv6);
  EXPECT_EQ(ParseHostPort("[::1]:15443")->ToString(), "[::1]:15443");
  EXPECT_FALSE(ParseHostPort("orders.default.svc:15443")->host_is_ip);
  EXPECT_THAT(ParseHostPort("127.0.0.1"),
              StatusIs(absl::StatusCode::kInvalidArgument, "host:port"));
  EXPECT_THAT(ParseHostPort("::1:80"), StatusIs(absl::StatusCode::kInvalidArgument, "brackets"));
  EXPECT_THAT(ParseHostPort("host:99999"), StatusIs(absl::StatusCode::kInvalidArgument, "port"));
  EXPECT_THAT(ParseHostPort("host:0"), StatusIs(absl::StatusCode::kInvalidArgument, "port 0"));
  EXPECT_THAT(ParseHostPort("ho st:1"), StatusIs(absl::StatusCode::kInvalidArgument, "host name"));
  EXPECT_THAT(ParseHostPort("[1.2.3.4]:1"), StatusIs(absl::StatusCode::kInvalidArgument, "IPv6"));
}

}  // namespace
}  // namespace meshtls::base

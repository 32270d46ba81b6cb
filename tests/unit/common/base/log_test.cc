#include "common/base/log.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>
#include <gtest/gtest.h>

#include "common/base/grpc_log.h"

namespace meshtls::base {
namespace {

using Clock = LogRateLimiter::Clock;

TEST(LogRateLimiterTest, BurstThenRateAndTheFirstLineAfterSaysHowManyWereDropped) {
  Clock::time_point now{};  // a fake clock: only differences matter
  LogRateLimiter limiter(/*per_second=*/10, /*burst=*/3, now);
  for (int i = 0; i < 3; ++i) {
    LogRateLimiter::Verdict v = limiter.Allow(now);
    EXPECT_TRUE(v.allowed) << i;
    EXPECT_EQ(v.suppressed_before, 0u);
  }
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(limiter.Allow(now).allowed) << i;
  }
  now += std::chrono::milliseconds(99);  // 0.99 of a token: still refused
  EXPECT_FALSE(limiter.Allow(now).allowed);
  now += std::chrono::milliseconds(2);
  LogRateLimiter::Verdict after = limiter.Allow(now);
  EXPECT_TRUE(after.allowed);
  EXPECT_EQ(after.suppressed_before, 6u);
  now += std::chrono::milliseconds(100);
  EXPECT_EQ(limiter.Allow(now).suppressed_before, 0u) << "the count restarts after it was told";
}

TEST(LogRateLimiterTest, AQuietPeriodRefillsOnlyUpToTheBurst) {
  Clock::time_point now{};
  LogRateLimiter limiter(10, 2, now);
  now += std::chrono::hours(1);
  int allowed = 0;
  for (int i = 0; i < 100; ++i) {
    allowed += limiter.Allow(now).allowed ? 1 : 0;
  }
  EXPECT_EQ(allowed, 2);
}

TEST(LogRateLimiterTest, ATimeBeforeTheLastOneIsNotARefill) {
  Clock::time_point now = Clock::time_point{} + std::chrono::seconds(10);
  LogRateLimiter limiter(10, 1, now);
  EXPECT_TRUE(limiter.Allow(now).allowed);
  EXPECT_FALSE(limiter.Allow(now - std::chrono::seconds(5)).allowed);
  EXPECT_FALSE(limiter.Allow(now).allowed);
}

TEST(JsonEscapeTest, QuotesControlsAndBackslashes) {
  EXPECT_EQ(JsonEscape("a\"b\\c\nd\te\x01\x7f"), "a\\\"b\\\\c\\nd\\te\\u0001\\u007f");
}

TEST(ValidUtf8Test, ReplacesEachByteOfAnInvalidSequenceAndKeepsTheRest) {
  EXPECT_EQ(ValidUtf8("caf\xc3\xa9 \xf0\x9f\x94\x92 \"x\"\n"),
            "caf\xc3\xa9 \xf0\x9f\x94\x92 \"x\"\n");
  EXPECT_EQ(ValidUtf8("a\xff-\xc3"), "a\xef\xbf\xbd-\xef\xbf\xbd")
      << "a stray byte, a cut sequence";
  EXPECT_EQ(ValidUtf8("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd")
      << "a UTF-16 surrogate is not UTF-8";
}

TEST(JsonEscapeTest, ValidUtf8PassesThrough) {
  EXPECT_EQ(JsonEscape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x92");
}

TEST(JsonEscapeTest, InvalidUtf8FromAPeerBecomesReplacementCharacters) {
  // A lone continuation byte, a truncated sequence at the end, an overlong '/', a surrogate,
  // and a byte that never appears in UTF-8.
  EXPECT_EQ(JsonEscape("a\x80z"), "a\\ufffdz");
  EXPECT_EQ(JsonEscape("spiffe://x\xe2\x82"), "spiffe://x\\ufffd\\ufffd");
  EXPECT_EQ(JsonEscape("\xc0\xaf"), "\\ufffd\\ufffd");
  EXPECT_EQ(JsonEscape("\xed\xa0\x80"), "\\ufffd\\ufffd\\ufffd");
  EXPECT_EQ(JsonEscape("\xff"), "\\ufffd");
}

TEST(TruncateForLogTest, LongPeerChosenFieldsAreCutAndMarked) {
  EXPECT_EQ(TruncateForLog("short"), "short");
  EXPECT_EQ(TruncateForLog(std::string(256, 'a')), std::string(256, 'a'));
  EXPECT_EQ(TruncateForLog(std::string(5000, 'a')), std::string(256, 'a') + "...");
}

// With log.format json, a line gRPC itself logs is JSON too.
TEST(RouteGrpcLogsTest, GrpcLinesBecomeMeshtlsLinesInTheConfiguredFormat) {
  SetLogOptions(LogLevel::kInfo, LogFormat::kJson);
  RouteGrpcLogs();
  grpc_init();  // gRPC prints nothing before it has read its verbosity
  ::testing::internal::CaptureStderr();
  gpr_log(GPR_ERROR, "connect failed: \"%s\"", "127.0.0.1:1");
  const std::string out = ::testing::internal::GetCapturedStderr();
  grpc_shutdown();
  SetLogOptions(LogLevel::kInfo, LogFormat::kText);
  EXPECT_EQ(out.front(), '{') << out;
  EXPECT_NE(out.find(R"("level":"error")"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("msg":"connect failed: \"127.0.0.1:1\"")"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("source":"grpc:)"), std::string::npos) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "one line: " << out;
}

}  // namespace
}  // namespace meshtls::base

// EventLoop's cross-thread calls and timers, as the admin server and the sidecar's workers use
// them: Stop() and Post() from another thread, timers in deadline order, cancelled ones never.

#include "common/net/event_loop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "tests/testing/status_matchers.h"

namespace meshtls::net {
namespace {

using ::meshtls::testing::IsOk;
using ::testing::ElementsAre;

TEST(EventLoopTest, StopAndPostFromAnotherThreadReachTheRunningLoop) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  ASSERT_THAT(loop, IsOk());
  EventLoop& l = **loop;
  absl::Notification returned;
  std::thread::id ran_on;
  std::thread runner([&] {
    l.Run();
    returned.Notify();
  });
  absl::Notification posted;
  l.Post([&] {
    ran_on = std::this_thread::get_id();
    posted.Notify();
  });
  EXPECT_TRUE(posted.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // No timer is due: only the wake-up can end the loop's wait before its one-second cap.
  const auto start = std::chrono::steady_clock::now();
  l.Stop();
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(absl::Seconds(5)));
  const std::thread::id runner_id = runner.get_id();
  runner.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  EXPECT_EQ(ran_on, runner_id);
}

TEST(EventLoopTest, TimersFireInDeadlineOrderAndCancelledOnesNever) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create();
  ASSERT_THAT(loop, IsOk());
  EventLoop& l = **loop;
  std::vector<int> fired;
  l.AddTimer(std::chrono::milliseconds(60), [&] { fired.push_back(60); });
  l.AddTimer(std::chrono::milliseconds(20), [&] { fired.push_back(20); });
  const EventLoop::TimerId cancelled =
      l.AddTimer(std::chrono::milliseconds(40), [&] { fired.push_back(40); });
  l.CancelTimer(cancelled);
  l.CancelTimer(cancelled);  // a second cancel, or one of a fired timer, is harmless
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (int i = 0; i < 1000 && fired.size() < 2 && std::chrono::steady_clock::now() < deadline;
       ++i) {
    ASSERT_TRUE(l.RunOnce(/*max_wait_ms=*/100));
  }
  // One more batch past the cancelled deadline would have run it.
  ASSERT_TRUE(l.RunOnce(/*max_wait_ms=*/0));
  EXPECT_THAT(fired, ElementsAre(20, 60));
}

}  // namespace
}  // namespace meshtls::net

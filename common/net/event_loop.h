#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/base/fd.h"

namespace meshtls::net {

using MonoTime = std::chrono::steady_clock::time_point;
using MonoDuration = std::chrono::steady_clock::duration;

// EventHandler receives epoll events for one fd. Called on the loop's thread.
class EventHandler {
 public:
  virtual ~EventHandler() = default;
  virtual void OnEvents(uint32_t events) = 0;
};

// EventLoop is one worker's epoll loop (level-triggered) with timers and a cross-thread task
// queue. Everything except Post() and Stop() must be called on the loop's thread. Work given to
// Defer() runs after the current batch of events, so an object may schedule its own deletion
// from inside its handler without later events in the batch touching freed memory.
class EventLoop {
 public:
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();

  absl::Status Add(int fd, uint32_t events, EventHandler* handler);
  absl::Status Modify(int fd, uint32_t events, EventHandler* handler);
  void Remove(int fd);

  using TimerId = uint64_t;
  TimerId AddTimer(MonoDuration delay, absl::AnyInvocable<void()> callback);
  void CancelTimer(TimerId id);

  void Defer(absl::AnyInvocable<void()> work);
  // Post runs `task` on the loop's thread soon. Thread-safe.
  void Post(absl::AnyInvocable<void()> task);
  // Run processes events until Stop(). Call on the thread that owns the loop.
  void Run();
  // RunOnce processes one batch: waits up to `max_wait_ms` (less if a timer is due sooner) for
  // events, handles them, then runs posted tasks, due timers and deferred work. For drivers
  // that step the loop themselves (the relay fuzz target); Run() is a loop of these. False
  // only if epoll itself failed (a bug in this class), after which the loop is unusable.
  bool RunOnce(int max_wait_ms);
  // Stop makes Run() return after the current batch. Thread-safe.
  void Stop();

  static MonoTime Now() { return std::chrono::steady_clock::now(); }

 private:
  EventLoop(base::UniqueFd epoll_fd, base::UniqueFd wake_fd)
      : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}
  int NextTimeoutMs() const;
  void RunTimers();
  void RunPosted();

  base::UniqueFd epoll_fd_;
  base::UniqueFd wake_fd_;
  std::map<std::pair<MonoTime, TimerId>, absl::AnyInvocable<void()>> timers_;
  std::unordered_map<TimerId, MonoTime> timer_deadlines_;
  TimerId next_timer_id_ = 1;
  std::vector<absl::AnyInvocable<void()>> deferred_;

  // std::mutex (not absl::Mutex) so ThreadSanitizer sees this cross-thread handoff: Debian's
  // Abseil is not built with TSan annotations. Held only to push or swap the queue.
  std::mutex post_mu_;
  std::vector<absl::AnyInvocable<void()>> posted_;  // guarded by post_mu_
  bool stop_ = false;                               // guarded by post_mu_
};

}  // namespace meshtls::net

#pragma once

#include <cstddef>
#include <functional>
#include <list>
#include <mutex>
#include <thread>

namespace meshtls::base {

// ThreadSet runs tasks that block (on a peer, an app) each on a thread of its own, at most
// `max_running` at once, so that one slow task never delays another. Finished threads are
// joined on the next TryRun; the destructor joins every thread, so each task must end by
// itself (a deadline of its own, or a stop signal its owner sends first). Thread-safe.
class ThreadSet {
 public:
  explicit ThreadSet(size_t max_running) : max_running_(max_running) {}
  ~ThreadSet();
  ThreadSet(const ThreadSet&) = delete;
  ThreadSet& operator=(const ThreadSet&) = delete;

  // TryRun starts `task` on a new thread; false (and `task` not run) at the cap, or when no
  // thread can be made.
  bool TryRun(std::function<void()> task);

 private:
  struct Running {
    std::thread thread;
    bool done = false;  // guarded by mu_
  };

  const size_t max_running_;
  std::mutex mu_;
  std::list<Running> running_;  // guarded by mu_
};

}  // namespace meshtls::base

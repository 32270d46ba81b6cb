#include "common/base/thread_set.h"

#include <system_error>
#include <utility>

namespace meshtls::base {

ThreadSet::~ThreadSet() {
  std::list<Running> running;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running.swap(running_);
  }
  for (Running& r : running) {
    r.thread.join();  // its `done` write lands in `running`, alive until here
  }
}

bool ThreadSet::TryRun(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = running_.begin(); it != running_.end();) {
    if (it->done) {
      it->thread.join();  // returned already, or about to
      it = running_.erase(it);
    } else {
      ++it;
    }
  }
  if (running_.size() >= max_running_) {
    return false;
  }
  Running& slot = running_.emplace_back();
  // `slot` stays put (a list node) until joined; `done` is set under mu_, which this call
  // holds until `slot.thread` is assigned.
  try {
    slot.thread = std::thread([this, task = std::move(task), &slot] {
      task();
      std::lock_guard<std::mutex> lock(mu_);
      slot.done = true;
    });
  } catch (const std::system_error&) {
    running_.pop_back();  // no thread (out of threads or memory): refused like the cap
    return false;
  }
  return true;
}

}  // namespace meshtls::base

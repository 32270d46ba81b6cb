#include "common/net/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace meshtls::net {
namespace {

// A distinct address marks the wake eventfd in epoll's data.
class WakeMarker final : public EventHandler {
 public:
  void OnEvents(uint32_t) override {}
};
WakeMarker g_wake_marker;

absl::Status ErrnoStatus(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create() {
  base::UniqueFd epoll_fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd.valid()) {
    return ErrnoStatus("epoll_create1");
  }
  base::UniqueFd wake_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd.valid()) {
    return ErrnoStatus("eventfd");
  }
  auto loop = std::unique_ptr<EventLoop>(new EventLoop(std::move(epoll_fd), std::move(wake_fd)));
  absl::Status s = loop->Add(loop->wake_fd_.get(), EPOLLIN, &g_wake_marker);
  if (!s.ok()) {
    return s;
  }
  return loop;
}

EventLoop::~EventLoop() = default;

absl::Status EventLoop::Add(int fd, uint32_t events, EventHandler* handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = handler;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(ADD)");
  }
  return absl::OkStatus();
}

absl::Status EventLoop::Modify(int fd, uint32_t events, EventHandler* handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = handler;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return ErrnoStatus("epoll_ctl(MOD)");
  }
  return absl::OkStatus();
}

void EventLoop::Remove(int fd) { ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr); }

EventLoop::TimerId EventLoop::AddTimer(MonoDuration delay, absl::AnyInvocable<void()> callback) {
  const TimerId id = next_timer_id_++;
  const MonoTime deadline = Now() + delay;
  timers_.emplace(std::make_pair(deadline, id), std::move(callback));
  timer_deadlines_.emplace(id, deadline);
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_deadlines_.find(id);
  if (it == timer_deadlines_.end()) {
    return;
  }
  timers_.erase(std::make_pair(it->second, id));
  timer_deadlines_.erase(it);
}

void EventLoop::Defer(absl::AnyInvocable<void()> work) { deferred_.push_back(std::move(work)); }

void EventLoop::Post(absl::AnyInvocable<void()> task) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(task));
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void EventLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

int EventLoop::NextTimeoutMs() const {
  if (!deferred_.empty()) {
    return 0;
  }
  if (timers_.empty()) {
    return 1000;
  }
  auto wait =
      std::chrono::duration_cast<std::chrono::milliseconds>(timers_.begin()->first.first - Now());
  if (wait.count() <= 0) {
    return 0;
  }
  return static_cast<int>(std::min<int64_t>(wait.count() + 1, 1000));
}

void EventLoop::RunTimers() {
  const MonoTime now = Now();
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadlines_.erase(node.key().second);
    node.mapped()();
  }
}

void EventLoop::RunPosted() {
  std::vector<absl::AnyInvocable<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) {
    task();
  }
}

void EventLoop::Run() {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      if (stop_) {
        break;
      }
    }
    if (!RunOnce(/*max_wait_ms=*/1000)) {
      break;
    }
  }
}

bool EventLoop::RunOnce(int max_wait_ms) {
  constexpr int kMaxEvents = 128;
  epoll_event events[kMaxEvents];
  int n = ::epoll_wait(epoll_fd_.get(), events, kMaxEvents, std::min(NextTimeoutMs(), max_wait_ms));
  if (n < 0 && errno != EINTR) {
    return false;  // only EBADF/EINVAL, which would be a bug in this class
  }
  for (int i = 0; i < n; ++i) {
    auto* handler = static_cast<EventHandler*>(events[i].data.ptr);
    if (handler == &g_wake_marker) {
      uint64_t value;
      [[maybe_unused]] ssize_t r = ::read(wake_fd_.get(), &value, sizeof(value));
      continue;
    }
    handler->OnEvents(events[i].events);
  }
  RunPosted();
  RunTimers();
  // Deferred work (mostly deletions) runs once no event of this batch can reach it.
  while (!deferred_.empty()) {
    std::vector<absl::AnyInvocable<void()>> work;
    work.swap(deferred_);
    for (auto& w : work) {
      w();
    }
  }
  return true;
}

}  // namespace meshtls::net

#include "common/base/file_watcher.h"

#include <sys/stat.h>

namespace meshtls::base {

FileWatcher::FileWatcher(std::vector<std::string> paths, absl::Duration interval,
                         std::function<void()> on_change)
    : paths_(std::move(paths)), interval_(interval), on_change_(std::move(on_change)) {
  seen_ = Snapshot();
  thread_ = std::thread([this] { Run(); });
}

FileWatcher::~FileWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::vector<FileVersion> FileWatcher::Snapshot() const {
  std::vector<FileVersion> out;
  for (const std::string& path : paths_) {
    out.push_back(StatFileVersion(path));
  }
  return out;
}

void FileWatcher::Run() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, absl::ToChronoNanoseconds(interval_), [this] { return stopping_; });
      if (stopping_) {
        return;
      }
    }
    std::vector<FileVersion> now = Snapshot();
    if (now != seen_) {
      seen_ = std::move(now);
      on_change_();
    }
  }
}

}  // namespace meshtls::base

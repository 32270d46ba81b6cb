#include "certmgr/base/file_watcher.h"

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
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

std::vector<FileWatcher::Version> FileWatcher::Snapshot() const {
  std::vector<Version> out;
  for (const std::string& path : paths_) {
    struct stat st;
    Version v;
    if (::stat(path.c_str(), &st) == 0) {
      v = {st.st_dev, st.st_ino, st.st_size,
           static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
    }
    out.push_back(v);
  }
  return out;
}

void FileWatcher::Run() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval_);
      if (stopping_) {
        return;
      }
    }
    std::vector<Version> now = Snapshot();
    if (now != seen_) {
      seen_ = std::move(now);
      on_change_();
    }
  }
}

}  // namespace meshtls::base

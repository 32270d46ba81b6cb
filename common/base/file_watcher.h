#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/base/file.h"

namespace meshtls::base {

// FileWatcher calls `on_change` on its own thread whenever any of `paths` changes: another
// inode, size or modification time, following symlinks. Polling stat() (rather than inotify)
// sees the Kubernetes Secret-volume update, an atomic swap of a `..data` symlink that never
// touches the files themselves, and works on every volume type. The callback decides what a
// change means; a change it rejects is not retried until the files change again.
class FileWatcher {
 public:
  FileWatcher(std::vector<std::string> paths, absl::Duration interval,
              std::function<void()> on_change);
  ~FileWatcher();  // stops and joins

 private:
  std::vector<FileVersion> Snapshot() const;
  void Run();

  const std::vector<std::string> paths_;
  const absl::Duration interval_;
  const std::function<void()> on_change_;
  std::vector<FileVersion> seen_;  // touched only by the watcher thread (and the constructor)
  // std::mutex so ThreadSanitizer sees the stop handoff (Debian's Abseil has no TSan hooks).
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace meshtls::base

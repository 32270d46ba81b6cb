#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace meshtls::base {

// ReadFileToString reads a whole file of at most `max_bytes`. Errors name the path:
// NotFound, PermissionDenied, InvalidArgument (too large), Internal.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes = 1 << 20);

// WriteFileAtomically writes `contents` to a new temporary file beside `path` with `mode` (a
// random name, created exclusively, never through a symlink), fsyncs it, renames it over `path`
// and fsyncs the directory, so readers see the old or the new file, never half of one, and the
// new one survives a crash once this returns. On error the temporary file is removed; only a
// failure to sync the directory comes after the rename (its message says the file was replaced).
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents,
                                 unsigned mode);

bool FileExists(const std::string& path);

// FileVersion identifies one version of a file (following symlinks): a rewrite, an atomic
// rename or a Kubernetes `..data` swap all change it. A missing file has the default version.
struct FileVersion {
  dev_t device = 0;
  ino_t inode = 0;
  off_t size = -1;
  int64_t mtime_ns = -1;
  mode_t mode = 0;  // a chmod alone is a change too (the join token file's mode is checked)
  bool operator==(const FileVersion&) const = default;
};
FileVersion StatFileVersion(const std::string& path);

}  // namespace meshtls::base

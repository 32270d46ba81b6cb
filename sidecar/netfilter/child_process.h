#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace meshtls::sidecar {

// ChildResult is how a finished child process ended and what it wrote.
struct ChildResult {
  int exit_code = 0;  // 128 + N when it was killed by signal N
  std::string out;
  std::string err;
};

// FindOnPath returns the absolute path of the executable `name` in the directories of
// `path_env` (a PATH value, colon-separated), or "" when none has it. Relative directories are
// skipped: the tools init-network runs must not depend on the working directory.
std::string FindOnPath(absl::string_view name, absl::string_view path_env);

// RunChildProcess runs `argv` (argv[0] an absolute path; no shell) with `input` on its stdin,
// collecting stdout and stderr (each up to 16 MiB; more is an error). The child inherits the
// environment. If it has not exited within `timeout` it is killed (SIGKILL) and the result is
// DeadlineExceeded; failing to start it is Unavailable. The caller must ignore SIGPIPE (a
// child that exits without reading its input would otherwise kill the caller). Thread-safe:
// it touches no shared state besides the process table.
absl::StatusOr<ChildResult> RunChildProcess(const std::vector<std::string>& argv,
                                            absl::string_view input, absl::Duration timeout);

}  // namespace meshtls::sidecar

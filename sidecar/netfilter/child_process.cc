#include "sidecar/netfilter/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/base/fd.h"

extern char** environ;

namespace meshtls::sidecar {
namespace {

constexpr size_t kMaxOutput = 16 << 20;

absl::Status ErrnoError(absl::string_view what, int error) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(error)));
}

// MakePipe returns {read end, write end}, both close-on-exec: the child sees only the ends
// posix_spawn's file actions dup onto its 0, 1 and 2.
absl::Status MakePipe(base::UniqueFd& read_end, base::UniqueFd& write_end) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return ErrnoError("pipe2", errno);
  }
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
  return absl::OkStatus();
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) {
    return WEXITSTATUS(wait_status);
  }
  return WIFSIGNALED(wait_status) ? 128 + WTERMSIG(wait_status) : -1;
}

// SpawnFileActions owns a posix_spawn_file_actions_t.
class SpawnFileActions {
 public:
  SpawnFileActions() { posix_spawn_file_actions_init(&actions_); }
  ~SpawnFileActions() { posix_spawn_file_actions_destroy(&actions_); }
  SpawnFileActions(const SpawnFileActions&) = delete;
  SpawnFileActions& operator=(const SpawnFileActions&) = delete;
  posix_spawn_file_actions_t* get() { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
};

}  // namespace

std::string FindOnPath(absl::string_view name, absl::string_view path_env) {
  for (absl::string_view dir : absl::StrSplit(path_env, ':', absl::SkipEmpty())) {
    if (dir.front() != '/') {
      continue;
    }
    std::string candidate = absl::StrCat(dir, "/", name);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

absl::StatusOr<ChildResult> RunChildProcess(const std::vector<std::string>& argv,
                                            absl::string_view input, absl::Duration timeout) {
  if (argv.empty() || argv[0].empty() || argv[0][0] != '/') {
    return absl::InvalidArgumentError("RunChildProcess needs an absolute program path");
  }
  base::UniqueFd stdin_read, stdin_write, stdout_read, stdout_write, stderr_read, stderr_write;
  if (absl::Status s = MakePipe(stdin_read, stdin_write); !s.ok()) {
    return s;
  }
  if (absl::Status s = MakePipe(stdout_read, stdout_write); !s.ok()) {
    return s;
  }
  if (absl::Status s = MakePipe(stderr_read, stderr_write); !s.ok()) {
    return s;
  }
  SpawnFileActions actions;
  posix_spawn_file_actions_adddup2(actions.get(), stdin_read.get(), 0);
  posix_spawn_file_actions_adddup2(actions.get(), stdout_write.get(), 1);
  posix_spawn_file_actions_adddup2(actions.get(), stderr_write.get(), 2);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = 0;
  if (int error = posix_spawn(&pid, argv[0].c_str(), actions.get(), nullptr, args.data(), environ);
      error != 0) {
    return ErrnoError(absl::StrCat("cannot start ", argv[0]), error);
  }
  stdin_read.reset();
  stdout_write.reset();
  stderr_write.reset();
  if (input.empty()) {
    stdin_write.reset();
  }
  for (int fd : {stdin_write.get(), stdout_read.get(), stderr_read.get()}) {
    if (fd >= 0) {
      SetNonBlocking(fd);
    }
  }

  // One poll loop feeds stdin and drains stdout and stderr, so a child that writes much
  // before reading all its input cannot deadlock against us.
  ChildResult result;
  size_t written = 0;
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status failure = absl::OkStatus();
  while (stdin_write.valid() || stdout_read.valid() || stderr_read.valid()) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      failure = absl::DeadlineExceededError(
          absl::StrCat(argv[0], " did not finish within ", absl::FormatDuration(timeout)));
      break;
    }
    pollfd fds[3] = {{stdin_write.get(), POLLOUT, 0},
                     {stdout_read.get(), POLLIN, 0},
                     {stderr_read.get(), POLLIN, 0}};
    const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    if (poll(fds, 3, wait_ms) < 0) {
      if (errno == EINTR) {
        continue;
      }
      failure = ErrnoError("poll", errno);
      break;
    }
    if (fds[0].fd >= 0 && fds[0].revents != 0) {
      const ssize_t n = write(stdin_write.get(), input.data() + written, input.size() - written);
      if (n > 0) {
        written += static_cast<size_t>(n);
      }
      // EPIPE: the child stopped reading; what it says about that comes on its stderr.
      if (written == input.size() || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        stdin_write.reset();
      }
    }
    for (auto [index, fd, sink] :
         {std::tuple<int, base::UniqueFd*, std::string*>{1, &stdout_read, &result.out},
          {2, &stderr_read, &result.err}}) {
      if (fds[index].fd < 0 || fds[index].revents == 0) {
        continue;
      }
      char buffer[16384];
      const ssize_t n = read(fd->get(), buffer, sizeof buffer);
      if (n > 0) {
        sink->append(buffer, static_cast<size_t>(n));
        if (sink->size() > kMaxOutput) {
          failure = absl::ResourceExhaustedError(
              absl::StrCat(argv[0], " wrote more than ", kMaxOutput, " bytes"));
        }
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        fd->reset();
      }
    }
    if (!failure.ok()) {
      break;
    }
  }
  if (!failure.ok()) {
    kill(pid, SIGKILL);
  }
  // The child has closed its output (or was killed): it exits promptly, but bound the wait
  // anyway, since a child that closed its stdout and stderr may still run.
  int wait_status = 0;
  while (true) {
    const pid_t waited = waitpid(pid, &wait_status, failure.ok() ? WNOHANG : 0);
    if (waited == pid) {
      break;
    }
    if (waited < 0 && errno != EINTR) {
      return ErrnoError("waitpid", errno);
    }
    if (waited == 0) {
      if (absl::Now() >= deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &wait_status, 0);
        return absl::DeadlineExceededError(
            absl::StrCat(argv[0], " did not exit within ", absl::FormatDuration(timeout)));
      }
      poll(nullptr, 0, 10);  // a short pause between checks of a child that is exiting
    }
  }
  if (!failure.ok()) {
    return failure;
  }
  result.exit_code = ExitCode(wait_status);
  return result;
}

}  // namespace meshtls::sidecar

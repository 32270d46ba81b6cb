#include "common/base/file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/base/fd.h"

namespace meshtls::base {
namespace {

absl::Status ErrnoError(int err, const std::string& what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ErrnoError(errno, absl::StrCat("cannot open ", path));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::string out;
  char buf[16384];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return ErrnoError(errno, absl::StrCat("cannot read ", path));
    }
    if (n == 0) {
      break;
    }
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents,
                                 unsigned mode) {
  // A name nobody can guess (64 random bits), created here and now (O_EXCL) and never through
  // a symlink (O_NOFOLLOW): whoever else may write the directory cannot plant a file or a link
  // at it and have us write, chmod or rename something of theirs.
  unsigned char random[8];
  if (::getrandom(random, sizeof(random), 0) != static_cast<ssize_t>(sizeof(random))) {
    return ErrnoError(errno, absl::StrCat("cannot name a temporary file for ", path));
  }
  const std::string tmp = absl::StrCat(path, ".tmp.",
                                       absl::BytesToHexString(absl::string_view(
                                           reinterpret_cast<const char*>(random), sizeof(random))));
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd.valid()) {
    return ErrnoError(errno, absl::StrCat("cannot create ", tmp));
  }
  auto fail = [&tmp](int err, const std::string& what) {
    ::unlink(tmp.c_str());
    return ErrnoError(err, what);
  };
  // The umask may have narrowed `mode`; never widened, but set it exactly.
  if (::fchmod(fd.get(), mode) != 0) {
    return fail(errno, absl::StrCat("cannot chmod ", tmp));
  }
  size_t written = 0;
  while (written < contents.size()) {
    ssize_t n = ::write(fd.get(), contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return fail(errno, absl::StrCat("cannot write ", tmp));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    return fail(errno, absl::StrCat("cannot fsync ", tmp));
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail(errno, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  // The rename is durable only once the directory is: without this, a crash can bring back
  // the old file (or none) after callers were told the new one was written.
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd.valid()) {
    return ErrnoError(errno, absl::StrCat(path, " was replaced, but its directory ", dir,
                                          " cannot be opened to make that durable"));
  }
  // EINVAL: a file system that cannot sync directories (it has nothing more to make durable).
  if (::fsync(dir_fd.get()) != 0 && errno != EINVAL) {
    return ErrnoError(errno, absl::StrCat(path, " was replaced, but fsync of its directory ", dir,
                                          " failed: the change may not survive a crash"));
  }
  return absl::OkStatus();
}

FileVersion StatFileVersion(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return {};
  }
  return {st.st_dev, st.st_ino, st.st_size,
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec, st.st_mode};
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace meshtls::base

#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::base {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText, kJson };

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// LogSettings is the `log` section of both binaries' configs.
struct LogSettings {
  LogLevel level{};
  LogFormat format{};
};

// SetLogOptions is called once by main() before other threads start.
void SetLogOptions(LogLevel min_level, LogFormat format);
bool LogEnabled(LogLevel level);

struct LogField {
  absl::string_view key;
  std::string value;
};

// Log writes one line to stderr: text (`ts level msg key=value ...`) or one JSON object.
// Thread-safe: each line is one write(2), so lines from different threads never interleave.
void Log(LogLevel level, absl::string_view message, std::initializer_list<LogField> fields = {});

inline void LogInfo(absl::string_view message, std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kInfo, message, fields);
}
inline void LogWarning(absl::string_view message, std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kWarning, message, fields);
}
inline void LogError(absl::string_view message, std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kError, message, fields);
}
inline void LogDebug(absl::string_view message, std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kDebug, message, fields);
}

// JsonEscape returns `s` as the body of a JSON string (without the quotes). Peer-controlled
// bytes end up in log lines (a claimed SPIFFE ID, a reason string), so the result is valid
// UTF-8 whatever `s` holds: each byte of an invalid UTF-8 sequence becomes U+FFFD.
std::string JsonEscape(absl::string_view s);

// ValidUtf8 returns `s` with each byte of an invalid UTF-8 sequence replaced by U+FFFD, for
// text that goes where only UTF-8 is allowed (a protobuf string field, a JSON body) but may hold
// bytes someone else chose (an error message relayed from certmgr).
std::string ValidUtf8(absl::string_view s);

// TruncateForLog bounds a field that a peer chooses (its certificate's URI SAN can be kilobytes
// long): at most `max` bytes, marked with "..." when cut.
std::string TruncateForLog(absl::string_view s, size_t max = 256);

// LogRateLimiter is a token bucket for lines an attacker can provoke (one per failed
// handshake): `burst` lines at once, then `per_second`. Allow() says whether a line may be
// written now and, on the first line allowed after some were refused, how many were refused
// since the last allowed one, so that the caller can say so. The caller passes the time (a
// fake clock in tests). Not thread-safe: one per thread (each sidecar worker has its own).
class LogRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  struct Verdict {
    bool allowed = false;
    uint64_t suppressed_before = 0;  // lines refused since the last allowed one
  };

  LogRateLimiter(double per_second, double burst, Clock::time_point now)
      : per_second_(per_second), burst_(burst), tokens_(burst), refilled_(now) {}
  Verdict Allow(Clock::time_point now);

 private:
  double per_second_;
  double burst_;
  double tokens_;
  Clock::time_point refilled_;
  uint64_t suppressed_ = 0;
};

}  // namespace meshtls::base

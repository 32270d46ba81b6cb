#pragma once

#include <initializer_list>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace meshtls::base {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText, kJson };

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

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

// JsonEscape returns `s` as the body of a JSON string (without the quotes).
std::string JsonEscape(absl::string_view s);

}  // namespace meshtls::base

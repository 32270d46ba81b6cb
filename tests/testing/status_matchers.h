#pragma once

// GoogleTest matchers for absl::Status and absl::StatusOr (Abseil 20220623 ships none).

#include <gmock/gmock.h>

#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meshtls::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) {
    *result_listener << "status is " << s.ToString();
  }
  return s.ok();
}

MATCHER_P(StatusIs, code, "has status code " + absl::StatusCodeToString(code)) {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code;
}

MATCHER_P2(StatusIs, code, message_substring,
           "has status code " + absl::StatusCodeToString(code) + " and a message containing \"" +
               std::string(message_substring) + "\"") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s.ToString();
  return s.code() == code &&
         std::string(s.message()).find(std::string(message_substring)) != std::string::npos;
}

}  // namespace meshtls::testing

// MESHTLS_ASSERT_OK_AND_MOVE(lhs, expr): fails the test (instead of aborting the binary) when
// the StatusOr `expr` holds an error; otherwise moves its value into `lhs`.
#define MESHTLS_ASSERT_OK_AND_MOVE(lhs, expr)          \
  do {                                                 \
    auto statusor_ = (expr);                           \
    ASSERT_TRUE(statusor_.ok()) << statusor_.status(); \
    lhs = *std::move(statusor_);                       \
  } while (0)

#pragma once

// Local status macros: Abseil 20220623 (Debian 12) has no ABSL_RETURN_IF_ERROR.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// MESHTLS_RETURN_IF_ERROR(expr) returns the status of `expr` from the enclosing function if it
// is not OK.
#define MESHTLS_RETURN_IF_ERROR(expr)                   \
  do {                                                  \
    if (absl::Status status_ = (expr); !status_.ok()) { \
      return status_;                                   \
    }                                                   \
  } while (0)

#define MESHTLS_STATUS_CONCAT_INNER_(a, b) a##b
#define MESHTLS_STATUS_CONCAT_(a, b) MESHTLS_STATUS_CONCAT_INNER_(a, b)

// MESHTLS_ASSIGN_OR_RETURN(auto csr, pki::ParseCsr(der)); declares `csr` or returns the error.
#define MESHTLS_ASSIGN_OR_RETURN(lhs, expr) \
  MESHTLS_ASSIGN_OR_RETURN_IMPL_(MESHTLS_STATUS_CONCAT_(statusor_, __LINE__), lhs, expr)
#define MESHTLS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) {                                     \
    return std::move(statusor).status();                    \
  }                                                         \
  lhs = std::move(statusor).value()

#pragma once

// MESHTLS_CHECK(cond, message): for broken invariants only (never for peer or operator input,
// which get a Status). Prints where and why, then aborts.

#include <cstdio>
#include <cstdlib>

#define MESHTLS_CHECK(cond, message)                                                               \
  do {                                                                                             \
    if (!(cond)) [[unlikely]] {                                                                    \
      std::fprintf(stderr, "%s:%d: check failed: %s: %s\n", __FILE__, __LINE__, #cond, (message)); \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)

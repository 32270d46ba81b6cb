#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every ctest test (unit and
# integration: real processes, real handshakes, certificates minted at test time) in an
# ASan+UBSan build (leaks included, in the real binaries too: the integration tests stop them
# with SIGTERM and fail on any sanitizer report); before that, in the normal build, the unit
# tests, the main job (scripts/demo.sh) and the tests of capacity and latency (label
# `optimized`). MESHTLS_SKIP_SANITIZERS=1 runs every test in the normal build instead.
#
#   scripts/test.sh --quick   the inner loop: the normal build and the unit tests only (label
#                             unit; no integration tests, no sanitizer build)
#
# Integration tests run in parallel with the rest: every binary they start listens on port 0
# and reports its ports (--bound-ports-file), so no two tests can be handed the same port.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
if [ $# -gt 0 ]; then
  echo "usage: scripts/test.sh [--quick]" >&2
  exit 2
fi
scripts/setup.sh
# The npm tools of the dashboard and manifest checks, pinned by each directory's
# package-lock.json; installed again only when the lockfile changed. The unit tests need only
# the manifest check's (tests/deploy).
npm_dirs=(tests/observability tests/deploy)
if [ $quick = 1 ]; then npm_dirs=(tests/deploy); fi
for npm_dir in "${npm_dirs[@]}"; do
  if ! cmp -s "$npm_dir/package-lock.json" "$npm_dir/node_modules/.installed-lock.json" 2>/dev/null; then
    echo "== npm ci ($npm_dir)"
    npm ci --prefix "$npm_dir" --no-audit --no-fund --loglevel=error
    cp "$npm_dir/package-lock.json" "$npm_dir/node_modules/.installed-lock.json"
  fi
done

# Line tables only (-g1): sanitizer reports and backtraces keep file:line, and the two builds
# take about a quarter less time than with full debug info (measured: 382 s instead of 520 s
# for the ASan build on 2 cores).
test_flags=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG")

# Three at a time on the normal build: most integration tests spend their time waiting on
# timers, not on the CPU; the heaviest are RUN_SERIAL or PROCESSORS 2 (tests/CMakeLists.txt).
echo "== build and test (RelWithDebInfo)"
BUILD_DIR=build scripts/build.sh "${test_flags[@]}"
if [ $quick = 1 ]; then
  (cd build && ctest --output-on-failure --timeout 300 -j3 -L unit)
  exit 0
fi
if [ "${MESHTLS_SKIP_SANITIZERS:-0}" = "1" ]; then
  (cd build && ctest --output-on-failure --timeout 300 -j3)
  exit 0
fi
# Every test runs once under the sanitizers (below); here, the unit tests and those whose point
# is capacity or latency, which the sanitizers' slowdown blurs (label `optimized`).
(cd build && ctest --output-on-failure --timeout 300 -j3 -L '^(unit|optimized)$')

echo "== build and test (ASan + UBSan)"
# -O1, as AddressSanitizer's documentation advises: exact reports, and the instrumented code
# compiles a third faster than at -O2 (pooled.cc: 7.8 s instead of 11.3 s).
BUILD_DIR=build-asan scripts/build.sh -DMESHTLS_SANITIZE=address,undefined \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(cd build-asan && ctest --output-on-failure --timeout 600 -j2)

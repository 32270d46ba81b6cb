#!/usr/bin/env bash
# Configures and builds meshtls into ${BUILD_DIR:-build}. Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
# Quiet on success; on failure, the whole compiler output.
if ! ninja -C "$build_dir" >"$build_dir/ninja.log" 2>&1; then
  cat "$build_dir/ninja.log"
  echo "build failed in $build_dir" >&2
  exit 1
fi

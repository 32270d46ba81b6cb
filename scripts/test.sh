#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every ctest test (unit and
# integration: real processes, real handshakes, certificates minted at test time).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=build scripts/build.sh
cd build
ctest --output-on-failure --timeout 300 -j2

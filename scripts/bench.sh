#!/usr/bin/env bash
# The benchmark (not part of CI): meshtls beside HAProxy, nginx (stream) and stunnel as mTLS
# proxy pairs, plus a no-proxy baseline, in one run on loopback. Installs the peers from Debian,
# builds meshtls in Release mode into build-release/, and prints one table (also written to
# ${BENCH_OUT:-build-release/bench-results.md}). Extra arguments go to tests/bench/bench.py
# (--reps N, --duration S, --only ROW,...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh haproxy nginx-light libnginx-mod-stream stunnel4 wrk
BUILD_DIR=build-release BUILD_TYPE=Release scripts/build.sh
exec python3 tests/bench/bench.py --sidecar build-release/sidecar/meshtls-sidecar \
  --out "${BENCH_OUT:-build-release/bench-results.md}" "$@"

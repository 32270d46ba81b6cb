#!/usr/bin/env bash
# The benchmark (not part of CI): meshtls beside HAProxy, nginx (stream) and stunnel as mTLS
# proxy pairs, plus a no-proxy baseline, in one run on loopback. Installs the peers from Debian,
# builds meshtls in Release mode into build-release/, and prints one table (also written to
# ${BENCH_OUT:-build-release/bench-results.md}), then the in-process handshake benchmark
# (tests/bench/handshake_bench.cc: CPU per handshake and its pieces), appended to the same file.
# The pods-* columns (explicit listeners against transparent mode, between two network
# namespaces the run makes and removes) need root; leave them out with --only otherwise.
# Extra arguments go to tests/bench/bench.py (--reps N, --duration S, --only COLUMN,...).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh haproxy nginx-light libnginx-mod-stream stunnel4 wrk
BUILD_DIR=build-release BUILD_TYPE=Release scripts/build.sh
out="${BENCH_OUT:-build-release/bench-results.md}"
python3 tests/bench/bench.py --sidecar build-release/sidecar/meshtls-sidecar --out "$out" "$@"
{
  echo
  echo "in-process handshakes (tests/bench/handshake_bench.cc), medians of 3:"
  build-release/tests/meshtls-handshake-bench --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=true 2>/dev/null | grep -E '^BM_.*_median'
} | tee -a "$out"

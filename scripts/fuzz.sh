#!/usr/bin/env bash
# Runs every libFuzzer target for real (the README's test command only replays their corpora).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target (default: all) for SECONDS (default 60)
#
# Builds with clang 14, libFuzzer and ASan+UBSan into build-fuzz/ (Debian's clang-14 and
# libclang-rt-14-dev, installed by scripts/setup.sh), then fuzzes each target starting from its
# seeds in tests/fuzz/<name>_corpus. New inputs go to build-fuzz/corpus/<name>, crashers to
# build-fuzz/crashes/. A crasher is a bug: fix it, then copy it into tests/fuzz/<name>_corpus/
# (named crash-<what>) so the ctest replay (fuzz_<name>) keeps it fixed. Exit 1 if any target
# crashed, leaked, timed out or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
scripts/setup.sh clang-14 libclang-rt-14-dev
targets=(spiffe_id svid_chain csr jwt config relay pooled)
if [ $# -gt 1 ]; then
  targets=("${@:2}")
fi
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMESHTLS_FUZZ=ON -DMESHTLS_SANITIZE=address,undefined >/dev/null
ninja -C build-fuzz "${targets[@]/%/_fuzz}" >build-fuzz/ninja.log 2>&1 || {
  cat build-fuzz/ninja.log
  exit 1
}
mkdir -p build-fuzz/crashes
failed=()
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "== fuzz $t for ${seconds}s"
  if ! ASAN_OPTIONS=detect_leaks=1 "build-fuzz/tests/fuzz/${t}_fuzz" \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/crashes/$t-" "build-fuzz/corpus/$t" "tests/fuzz/${t}_corpus" \
      >"build-fuzz/$t.log" 2>&1; then
    failed+=("$t")
    grep -E "ERROR|SUMMARY|Test unit written" "build-fuzz/$t.log" | head -5
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "build-fuzz/$t.log" | tr '\n' ' '
  echo
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in build-fuzz/crashes/, logs in build-fuzz/<name>.log)"
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} (${seconds}s each)"

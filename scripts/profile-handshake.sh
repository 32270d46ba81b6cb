#!/usr/bin/env bash
# Where a meshtls handshake's CPU goes: runs the in-process handshake benchmark
# (tests/bench/handshake_bench.cc) under callgrind and prints, per handshake (both sides), the
# instructions spent inside the main libssl/libcrypto entry points. Instruction counts are
# deterministic, so before/after comparisons hold on a noisy machine; callgrind is used rather
# than perf because Debian's libcrypto has neither frame pointers nor symbols for its static
# functions, which leaves perf's call graphs unattributed. Not part of CI; needs build-release/
# (scripts/bench.sh builds it). Usage: scripts/profile-handshake.sh [MODE] (0 full between
# peers that met before, 1 resumed, 2 full on first contact; default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-0}"
scripts/setup.sh valgrind
BUILD_DIR=build-release BUILD_TYPE=Release scripts/build.sh >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --toggle-collect='*OneConnection*' --callgrind-out-file="$out/cg" \
  build-release/tests/meshtls-handshake-bench --benchmark_filter="BM_Handshake/mode:$mode/" \
  --benchmark_min_time=0.2 >/dev/null 2>"$out/log"
callgrind_annotate --inclusive=yes --tree=caller "$out/cg" >"$out/tree" 2>/dev/null
calls="$(grep -E '\* .*OneConnection' -B1 "$out/tree" | grep -oE '\(([0-9]+)x\)' | head -1 |
  tr -dc 0-9)"
if [ -z "$calls" ]; then
  echo "profile-handshake: no handshake was profiled; valgrind said:" >&2
  cat "$out/log" >&2
  exit 1
fi
total="$(grep -oE 'Collected : [0-9]+' "$out/log" | tr -dc 0-9)"
echo "mode $mode: $calls connections, $((total / calls)) instructions per handshake (both sides)"
callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null |
  grep -E ' \?\?\?:(SSL_do_handshake|d2i_X509|d2i_SSL_SESSION|OSSL_DECODER_CTX_new_for_pkey|X509_verify_cert|ECDSA_do_verify|ECDSA_do_sign_ex|EVP_PKEY_keygen|EVP_PKEY_derive|EVP_KDF_derive|SSL_new|SSL_free|CRYPTO_malloc|CRYPTO_free) ' |
  awk -v calls="$calls" -v total="$total" '{
    n = $1; gsub(",", "", n)
    if (match($0, /\?\?\?:[A-Za-z0-9_]+/)) name = substr($0, RSTART + 4, RLENGTH - 4)
    printf "  %-32s %9d instructions per handshake (%4.1f%%)\n", name, n / calls, 100 * n / total
  }'

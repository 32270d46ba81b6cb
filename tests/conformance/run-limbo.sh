#!/usr/bin/env bash
# X.509 path-validation conformance (ctest x509_limbo): runs the x509-limbo selection of
# tests/conformance/x509-limbo (a copy of the public selection) against scripts/limbo-verify.sh (meshtls-certmgr verify)
# and requires that the cases meshtls decides differently are exactly those listed, with their
# reasons, in tests/conformance/limbo-differences.txt.
#
#   tests/conformance/run-limbo.sh CERTMGR_BINARY
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
suite=${MESHTLS_LIMBO_DIR:-$root/tests/conformance/x509-limbo}
if [ ! -f "$suite/limbo_harness.py" ]; then
  echo "run-limbo: no x509-limbo suite at $suite (set MESHTLS_LIMBO_DIR)" >&2
  exit 1
fi
export MESHTLS_CERTMGR=$1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The harness exits 1 when a core case differs; the comparison below decides.
python3 "$suite/limbo_harness.py" --verifier "$root/scripts/limbo-verify.sh" --tier all --jobs 2 \
  >"$out" 2>&1 || true
grep -E '^tier |passed' "$out"
actual=$(sed -n 's/^FAIL \([a-z]*\) *\(.*\): expected .*/\1 \2/p' "$out" | sort)
listed=$(grep -vE '^(#|$)' "$root/tests/conformance/limbo-differences.txt" | awk '{print $1, $2}' | sort)
if ! grep -qE '^tier core: [0-9]+ passed' "$out"; then
  echo "run-limbo: the harness did not run:" >&2
  cat "$out" >&2
  exit 1
fi
new=$(comm -23 <(printf '%s\n' "$actual") <(printf '%s\n' "$listed") | sed '/^$/d')
gone=$(comm -13 <(printf '%s\n' "$actual") <(printf '%s\n' "$listed") | sed '/^$/d')
status=0
if [ -n "$new" ]; then
  echo "run-limbo: cases that differ and are not in limbo-differences.txt (a regression, or list them with why):"
  printf "  %s\n" "$new"
  status=1
fi
if [ -n "$gone" ]; then
  echo "run-limbo: listed in limbo-differences.txt but no longer differing (delete these lines):"
  printf '  %s\n' "$gone"
  status=1
fi
[ $status -eq 0 ] && echo "run-limbo: every difference is listed with its reason ($(printf '%s\n' "$actual" | sed '/^$/d' | wc -l) cases)"
exit $status

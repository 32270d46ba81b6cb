#!/usr/bin/env bash
# Regenerates the generated seeds of the fuzz corpora (gen-* files: certificates, CSRs and
# tokens valid at the targets' fixed time) with the make_fuzz_seeds program. Hand-written seeds
# and crashers in the corpora are kept.
#   tests/fuzz/make-seeds.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
ninja -C "$build" make_fuzz_seeds >/dev/null
"$build/tests/fuzz/make_fuzz_seeds" tests/fuzz

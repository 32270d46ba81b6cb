#!/usr/bin/env bash
# Adapter from the x509-limbo runner's verifier contract
#   --roots R --intermediates I --leaf L --time T --purpose client|server
# to `meshtls-certmgr verify --profile svid-shape`: the certification path the sidecar validates,
# plus the X.509-SVID leaf rules that do not need a SPIFFE ID (CA:FALSE, no keyCertSign or
# cRLSign). The limbo cases are not SPIFFE certificates, so the ID and usage rules stay out.
set -euo pipefail
bin="${MESHTLS_CERTMGR:-$(dirname "$0")/../build/certmgr/meshtls-certmgr}"
roots="" ints="" leaf="" time="" purpose="client"
while [ $# -gt 0 ]; do
  case "$1" in
    --roots) roots="$2"; shift 2 ;;
    --intermediates) ints="$2"; shift 2 ;;
    --leaf) leaf="$2"; shift 2 ;;
    --time) time="$2"; shift 2 ;;
    --purpose) purpose="$2"; shift 2 ;;
    *) echo "limbo-verify: unknown argument $1" >&2; exit 2 ;;
  esac
done
chain=$(mktemp)
trap 'rm -f "$chain"' EXIT
cat "$leaf" > "$chain"
[ -n "$ints" ] && cat "$ints" >> "$chain"
exec "$bin" verify --profile svid-shape --bundle "$roots" --chain "$chain" --purpose "$purpose" \
  ${time:+--at "$time"} >/dev/null

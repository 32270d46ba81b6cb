#!/usr/bin/env bash
# The main job: a local mesh on loopback. certmgr with a fresh CA, a small app, two sidecars
# (frontend with an outbound listener, backend with an inbound listener in front of the app),
# traffic through the mesh, then an intruder identity that the backend refuses.
# Everything it starts is stopped on exit; its files live in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/setup.sh
BUILD_DIR=build scripts/build.sh >/dev/null
certmgr_bin="$root/build/certmgr/meshtls-certmgr"
sidecar_bin="$root/build/sidecar/meshtls-sidecar"

work=$(mktemp -d /tmp/meshtls-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Every listener takes a port of the kernel's choice (port 0); the binaries report theirs in
# a --bound-ports-file, so the demo runs beside anything else on the machine, itself included.
td=demo.meshtls.local

wait_ready() {  # url, name: poll with a deadline, never a blind sleep
  local deadline=$((SECONDS + 20))
  until curl -sf "$1" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "demo: $2 did not become ready; its log:"; cat "$work/$2.log"; exit 1; fi
    sleep 0.1
  done
}
wait_ports() {  # ports file, name, pid: poll for the file with a deadline
  local deadline=$((SECONDS + 20))
  until [ -s "$1" ]; do
    if ! kill -0 "$3" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "demo: $2 did not report its ports; its log:"; cat "$work/$2.log"; exit 1
    fi
    sleep 0.1
  done
}
port_of() {  # ports file, listener: its port (the file has <listener>=<ip>:<port> lines)
  sed -n "s/^$2=.*://p" "$1"
}
metric() {  # admin port, metric line prefix
  curl -s "http://127.0.0.1:$1/metrics" | grep -F "$2" | awk '{print $2}' | head -1
}

cat > "$work/certmgr.yaml" <<YAML
trust_domain: $td
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
ca: {dir: $work/ca}
authenticators:
  join_tokens: {file: $work/join-tokens}
YAML
"$certmgr_bin" --config "$work/certmgr.yaml" --bound-ports-file "$work/certmgr.ports" \
  2>"$work/certmgr.log" & pids+=($!)
wait_ports "$work/certmgr.ports" certmgr "$!"
p_certmgr=$(port_of "$work/certmgr.ports" grpc)
p_certmgr_admin=$(port_of "$work/certmgr.ports" admin)
wait_ready "http://127.0.0.1:$p_certmgr_admin/readyz" certmgr
echo "== certmgr is up with a new root CA ($(openssl x509 -in "$work/ca/ca.pem" -noout -subject))"

for sa in frontend backend intruder; do
  "$certmgr_bin" token create --config "$work/certmgr.yaml" \
    --spiffe-id "spiffe://$td/ns/default/sa/$sa" > "$work/$sa.token"
done

mkdir -p "$work/www"
echo "hello from the backend app, delivered over mutual TLS" > "$work/www/index.html"
head -c $((4 * 1024 * 1024)) /dev/urandom > "$work/www/blob"
# Unbuffered, so its first line, "Serving HTTP on 127.0.0.1 port N ...", names the port at once.
(cd "$work/www" && exec python3 -u -m http.server 0 --bind 127.0.0.1) >"$work/app.log" 2>&1 & pids+=($!)
app_pid=$!
deadline=$((SECONDS + 20))
until p_app=$(sed -n 's/^Serving HTTP on .* port \([0-9]*\) .*/\1/p' "$work/app.log") && [ -n "$p_app" ]; do
  if ! kill -0 "$app_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "demo: the app did not start; its log:"; cat "$work/app.log"; exit 1
  fi
  sleep 0.1
done
wait_ready "http://127.0.0.1:$p_app/index.html" app

sidecar_config() {  # sa, listeners yaml
  cat <<YAML
trust_domain: $td
identity:
  certmgr:
    address: 127.0.0.1:$p_certmgr
    server_ca: $work/ca/ca.pem
    token_file: $work/$1.token
admin: {listen: 127.0.0.1:0}
workers: 1
$2
YAML
}
start_sidecar() {  # name: runs it on $work/<name>.yaml and waits for its ports file
  "$sidecar_bin" --config "$work/$1.yaml" --bound-ports-file "$work/$1.ports" \
    2>"$work/$1.log" & pids+=($!)
  wait_ports "$work/$1.ports" "$1" "$!"
}
# The backend first: the other two connect to the port its inbound listener was given.
sidecar_config backend "inbound:
  - name: http
    listen: 127.0.0.1:0
    forward: 127.0.0.1:$p_app
    allow: [spiffe://$td/ns/default/sa/frontend]" > "$work/backend.yaml"
start_sidecar backend
p_backend_in=$(port_of "$work/backend.ports" inbound.http)
for who in frontend intruder; do
  sidecar_config "$who" "outbound:
  - name: backend
    listen: 127.0.0.1:0
    connect: 127.0.0.1:$p_backend_in
    expect: [spiffe://$td/ns/default/sa/backend]" > "$work/$who.yaml"
  start_sidecar "$who"
done
p_backend_admin=$(port_of "$work/backend.ports" admin)
p_frontend_admin=$(port_of "$work/frontend.ports" admin)
p_frontend_out=$(port_of "$work/frontend.ports" outbound.backend)
p_intruder_admin=$(port_of "$work/intruder.ports" admin)
p_intruder_out=$(port_of "$work/intruder.ports" outbound.backend)
for who in backend frontend intruder; do
  admin_var="p_${who}_admin"
  wait_ready "http://127.0.0.1:${!admin_var}/readyz" "$who"
done

echo
echo "== identities issued by certmgr (from each sidecar's /certs)"
for who in frontend backend; do
  admin_var="p_${who}_admin"
  curl -s "http://127.0.0.1:${!admin_var}/certs" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("  %-45s serial %s... valid until %s, renewal due %s" % (c["identity"], c["serial"][:12], c["not_after"], c["renewal_due"]))'
done

echo
echo "== app -> frontend sidecar (plain, 127.0.0.1:$p_frontend_out) -> mTLS 1.3 -> backend sidecar -> app"
echo "  response: $(curl -s -m 10 "http://127.0.0.1:$p_frontend_out/index.html")"
curl -s -m 20 "http://127.0.0.1:$p_frontend_out/blob" -o "$work/blob.copy"
if cmp -s "$work/www/blob" "$work/blob.copy"; then
  echo "  4 MiB download through the mesh arrived byte-identical"
else
  echo "  4 MiB download through the mesh DIFFERS"; exit 1
fi
hs=$(metric "$p_backend_admin" 'meshtls_tls_handshakes_total{direction="inbound",result="success"}')
count=$(metric "$p_backend_admin" 'meshtls_tls_handshake_duration_seconds_count{direction="inbound",resumed="false"}')
sum=$(metric "$p_backend_admin" 'meshtls_tls_handshake_duration_seconds_sum{direction="inbound",resumed="false"}')
rx=$(metric "$p_backend_admin" 'meshtls_bytes_total{direction="inbound",flow="sent"}')
echo "  backend: $hs successful inbound handshakes, mean $(python3 -c "print(f'{1000*$sum/max($count,1):.2f}')") ms; $rx bytes sent to the frontend"

echo
echo "== an identity that is not in the backend's allow list (sa/intruder)"
if out=$(curl -s -m 10 "http://127.0.0.1:$p_intruder_out/index.html"); [ -n "$out" ]; then
  echo "  intruder got an answer: this must not happen"; exit 1
fi
denied=$(metric "$p_backend_admin" 'meshtls_tls_handshakes_total{direction="inbound",result="identity_denied"}')
echo "  refused: backend counted meshtls_tls_handshakes_total{result=\"identity_denied\"} = $denied"
grep -m1 'identity_denied' "$work/backend.log" | sed 's/^/  backend log: /'
[ "${denied:-0}" -ge 1 ] || { echo "  expected an identity_denied count"; exit 1; }

echo
echo "== done; stopping every process the demo started"

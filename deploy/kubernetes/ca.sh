#!/usr/bin/env bash
# The CA of a meshtls installation in Kubernetes lives in one Secret (meshtls-ca in
# meshtls-system) that every certmgr replica mounts read-only. This script makes it and takes
# each rotation step on it, from the operator's machine (deploy/kubernetes/README.md):
#
#   deploy/kubernetes/ca.sh init                 create the root CA and the Secret (once)
#   deploy/kubernetes/ca.sh prepare              add the next root to the trust bundle
#   deploy/kubernetes/ca.sh activate             the next root becomes the signer
#   deploy/kubernetes/ca.sh retire [--force]     drop the previous root from the bundle
#   deploy/kubernetes/ca.sh bundle NAMESPACE...  write the trust bundle (every root) to the
#                                                meshtls-ca-bundle ConfigMap of each namespace
#   deploy/kubernetes/ca.sh webhook              write the trust bundle to the caBundle of the
#                                                meshtls-injector webhook (after init, prepare)
#
# Each step copies the Secret's files into a private temporary directory, runs
# `meshtls-certmgr ca ... --ca-dir` on the copy (the same code and checks as on a CA directory),
# and replaces the Secret with the result. Kubelet then updates every replica's volume (within
# about a minute), and each replica applies the change live; nothing restarts.
#
# Environment: MESHTLS_CERTMGR (default meshtls-certmgr; or, for example,
# "docker run --rm -i -u $(id -u) -v /tmp:/tmp --entrypoint /usr/local/bin/meshtls-certmgr
# meshtls:0.1.0"), MESHTLS_CONFIG (default: this directory's base/certmgr-config.yaml, for the
# trust domain and CA lifetime), MESHTLS_NAMESPACE (meshtls-system), MESHTLS_SECRET
# (meshtls-ca), KUBECTL (kubectl).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
certmgr=${MESHTLS_CERTMGR:-meshtls-certmgr}
config=${MESHTLS_CONFIG:-$here/base/certmgr-config.yaml}
ns=${MESHTLS_NAMESPACE:-meshtls-system}
secret=${MESHTLS_SECRET:-meshtls-ca}
kubectl=${KUBECTL:-kubectl}

usage() {
  sed -n '6,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -ge 1 ] || usage
step=$1
shift

work=$(mktemp -d)
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT
ca_dir="$work/ca"

# export_secret copies the Secret's keys into $ca_dir, one file each (the key file 0600).
export_secret() {
  mkdir -m 700 "$ca_dir"
  # shellcheck disable=SC2016  # a Go template, not shell
  $kubectl -n "$ns" get secret "$secret" \
    -o go-template='{{range $k, $v := .data}}{{$k}} {{$v}}{{"\n"}}{{end}}' >"$work/data"
  local key value
  while read -r key value; do
    case "$key" in
      "" | */* | . | ..) echo "ca.sh: the Secret has a key '$key' that is not a file name" >&2; exit 1 ;;
    esac
    (umask 077 && printf '%s' "$value" | base64 -d >"$ca_dir/$key")
  done <"$work/data"
  [ -s "$ca_dir/ca.pem" ] || { echo "ca.sh: Secret $ns/$secret holds no ca.pem" >&2; exit 1; }
}

# write_secret makes the Secret hold exactly the files of $ca_dir (`replace`, so a key a step
# removed, such as next.pem after activate, leaves the Secret too).
write_secret() {
  local verb=$1
  rm -f "$ca_dir/.lock"  # certmgr's lock for the copy; not CA state
  $kubectl -n "$ns" create secret generic "$secret" --from-file="$ca_dir" \
    --dry-run=client -o json >"$work/secret.json"
  $kubectl -n "$ns" "$verb" -f "$work/secret.json" >/dev/null
}

case "$step" in
  init)
    if $kubectl -n "$ns" get secret "$secret" >/dev/null 2>&1; then
      echo "ca.sh: Secret $ns/$secret exists already; init makes a CA only once" >&2
      exit 1
    fi
    $certmgr ca init --config "$config" --ca-dir "$ca_dir"
    write_secret create
    echo "ca.sh: Secret $ns/$secret created"
    ;;
  prepare | activate | retire)
    export_secret
    $certmgr ca rotate "$step" --config "$config" --ca-dir "$ca_dir" "$@"
    write_secret replace
    echo "ca.sh: Secret $ns/$secret updated; every certmgr replica applies it once kubelet" \
      "has updated its volume (about a minute)"
    ;;
  bundle)
    [ $# -ge 1 ] || usage
    export_secret
    cat "$ca_dir/ca.pem" "$ca_dir"/next.pem "$ca_dir"/previous.pem >"$work/bundle.pem" 2>/dev/null || true
    for target in "$@"; do
      $kubectl -n "$target" create configmap meshtls-ca-bundle --from-file=ca.pem="$work/bundle.pem" \
        --dry-run=client -o json >"$work/bundle.json"
      $kubectl -n "$target" apply -f "$work/bundle.json" >/dev/null
      echo "ca.sh: $target/meshtls-ca-bundle holds $(grep -c 'BEGIN CERTIFICATE' "$work/bundle.pem") root(s)"
    done
    ;;
  webhook)
    # The API server trusts these roots for certmgr's webhook certificate (in each of the three
    # webhooks of base/injector.yaml). Every root, so the
    # webhook keeps working across a rotation: run it after prepare, before activate.
    export_secret
    cat "$ca_dir/ca.pem" "$ca_dir"/next.pem "$ca_dir"/previous.pem >"$work/bundle.pem" 2>/dev/null || true
    bundle=$(base64 -w0 <"$work/bundle.pem")
    patch='['
    for i in 0 1 2; do
      patch+="{\"op\":\"replace\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
      [ $i = 2 ] || patch+=','
    done
    patch+=']'
    $kubectl patch mutatingwebhookconfiguration meshtls-injector --type=json -p "$patch" >/dev/null
    echo "ca.sh: meshtls-injector trusts $(grep -c 'BEGIN CERTIFICATE' "$work/bundle.pem") root(s)"
    ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# Installs the Debian 12 packages meshtls needs. Idempotent and non-interactive: installs only
# what is missing.
#
#   scripts/setup.sh           build, test and demo (the README's two commands)
#   scripts/setup.sh --build   only what compiling the two binaries needs (the image's build
#                              stage, deploy/docker/Dockerfile)
#   scripts/setup.sh PKG...    also PKG (the benchmark's peers)
set -euo pipefail

# What compiling meshtls-sidecar and meshtls-certmgr needs (cmake -DBUILD_TESTING=OFF).
build_packages=(
  g++ cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libssl-dev libc-ares-dev libyaml-dev libnghttp2-dev
)
# What the tests and the demo add: GoogleTest and Benchmark, openssl and curl for real peers,
# Prometheus (with promtool) for the observability test, util-linux's unshare for the
# read-only Secret-volume test, and for the transparent-mode tests' pods in network namespaces
# iproute2 (ip netns, veth, bridge), iptables and tcpdump (util-linux's setpriv runs a pod's
# programs as their own user); python3-h2 and nghttp2-client are the independent HTTP/2
# implementations the pooled transport's interoperability tests talk to.
test_packages=(
  openssl libgtest-dev libgmock-dev libbenchmark-dev
  curl python3 util-linux
  prometheus
  iproute2 iptables tcpdump
  python3-h2 nghttp2-client
)

packages=("${build_packages[@]}")
if [ "${1:-}" = "--build" ]; then
  shift
else
  packages+=("${test_packages[@]}")
  # Node.js and npm run the dashboard and manifest checks (tests/observability, tests/deploy).
  # Machines of this project's kind come with a newer Node.js; Debian's is enough (Node.js 18).
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
  fi
  # kubectl renders the kustomize manifests (deploy/kubernetes). Machines of this project's
  # kind come with kubectl 1.32; elsewhere Debian's kubernetes-client (1.20) is enough: the
  # manifests use only kustomize fields that both know.
  if ! command -v kubectl >/dev/null 2>&1; then
    packages+=(kubernetes-client)
  fi
fi
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

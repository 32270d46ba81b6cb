#!/usr/bin/env bash
# Installs the Debian 12 packages meshtls needs to build, test and run its demo.
# Idempotent and non-interactive: installs only what is missing. prometheus (with promtool) is
# for the observability test and for watching the demo. Arguments name extra packages
# (the benchmark's peers).
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libcivetweb-dev libssl-dev openssl
  libgtest-dev libgmock-dev libbenchmark-dev
  curl python3
  prometheus
)
# Node.js and npm run the dashboard checks (tests/observability). Machines of this project's
# kind come with a newer Node.js; Debian's is enough (Node.js 18, npm 9).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
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

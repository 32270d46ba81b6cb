#!/usr/bin/env bash
# Builds the meshtls image (deploy/docker/Dockerfile) and prints its size and packages:
#
#   scripts/image.sh [TAG]          (default meshtls:0.1.0)
#
# With a Docker engine that answers (`docker info`) it uses docker; otherwise podman, installed
# from Debian when missing, run as root with runc, the cgroupfs cgroup manager and the vfs
# storage driver (no daemon, no overlay mounts needed), on the host network. When no registry
# answers for the Debian base images, it makes them here: `debootstrap` of bookworm (minbase)
# from the Debian archive apt already uses, imported as debian:12 and debian:12-slim. Takes
# minutes; not part of the tests (deploy/docker/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-meshtls:0.1.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if docker info >/dev/null 2>&1; then
  engine=(docker)
  build_flags=()
  run_flags=()
else
  if ! command -v podman >/dev/null 2>&1; then
    echo "image.sh: no Docker engine answers; installing podman from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman runc uidmap >/dev/null
  fi
  engine=(podman --runtime runc --cgroup-manager cgroupfs --storage-driver vfs)
  # The hard limit on open files here may be 20,000, and runc may not raise the process limit
  # to the host's: ask for no more than that.
  build_flags=(--network host --ulimit nofile=1024:20000
               --ignorefile deploy/docker/Dockerfile.dockerignore)
  run_flags=(--ulimit nofile=1024:20000 --ulimit nproc=4096:4096)
fi

# The base images: from a registry if one answers, else made with debootstrap.
have_image() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }
if ! have_image debian:12 || ! have_image debian:12-slim; then
  if "${engine[@]}" pull -q docker.io/library/debian:12 >/dev/null 2>&1 &&
     "${engine[@]}" pull -q docker.io/library/debian:12-slim >/dev/null 2>&1; then
    echo "image.sh: base images pulled from docker.io"
  else
    echo "image.sh: no registry answers; making debian:12 with debootstrap" >&2
    command -v debootstrap >/dev/null 2>&1 || {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    # The archive apt uses here (a mirror or proxy the machine can reach).
    # (deb822 `URIs:` lines and one-line `deb` entries; comments skipped).
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
               2>/dev/null | awk '/^URIs:/ {print $2} /^deb / {print $2}' | grep -v security |
             sed -n 1p || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -20 "$work/debootstrap.log" >&2
      exit 1
    }
    # As the official images: the archive in sources, no apt lists or caches kept.
    echo "deb $mirror bookworm main" >"$work/rootfs/etc/apt/sources.list"
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
    tar -C "$work/rootfs" -c . | "${engine[@]}" import - debian:12 >/dev/null
    "${engine[@]}" tag debian:12 debian:12-slim
  fi
fi

start=$(date +%s)
"${engine[@]}" build "${build_flags[@]}" -f deploy/docker/Dockerfile -t "$tag" . >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  exit 1
}
echo "image.sh: built $tag in $(( $(date +%s) - start )) s with ${engine[0]}"

size=$("${engine[@]}" image inspect --format '{{.Size}}' "$tag")
echo "size: $(( size / 1024 / 1024 )) MiB"
echo "user: $("${engine[@]}" image inspect --format '{{.Config.User}}' "$tag")"
run=("${engine[@]}" run --rm --network host "${run_flags[@]}")
echo "runs as: $("${run[@]}" --entrypoint /usr/bin/id "$tag" -u)"
"${run[@]}" "$tag" --version
"${run[@]}" --entrypoint /usr/local/bin/meshtls-certmgr "$tag" --version
echo "packages:"
"${run[@]}" --entrypoint /usr/bin/dpkg-query "$tag" -W -f '  ${Package} ${Version}\n'

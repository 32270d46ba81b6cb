#!/usr/bin/env bash
# Checks deploy/docker/Dockerfile against scripts/setup.sh and the binaries it would build,
# since no container engine runs here (ctest: image_consistency).
#
#   tests/deploy/check-image.sh SIDECAR_BINARY CERTMGR_BINARY
#
# - The build stage installs its packages with `scripts/setup.sh --build` (one package list,
#   kept in setup.sh) and builds with scripts/build.sh.
# - The runtime stage's apt packages are exactly the Debian packages that own the shared
#   libraries the two binaries load (ldd + dpkg -S), less the ones debian:12-slim already has,
#   and each of them is a dependency of setup.sh's build packages: no missing library (the
#   container would not start) and nothing extra.
# - The runtime stage installs iptables, which `meshtls-sidecar init-network` runs.
# - The image runs as a numeric non-root user and needs no shell (exec-form ENTRYPOINT/CMD).
set -euo pipefail
cd "$(dirname "$0")/../.."
dockerfile=deploy/docker/Dockerfile
sidecar=$1 certmgr=$2
fail=0
problem() { echo "check-image: $*" >&2; fail=1; }

# The libraries every debian:12-slim image has (Priority: required, or apt's own dependencies).
base_image_packages="libc6 libgcc-s1 libstdc++6 zlib1g"

stages=$(grep -cE '^FROM ' "$dockerfile")
[ "$stages" -eq 2 ] || problem "expected a build and a runtime stage, found $stages FROM lines"
grep -qE '^FROM debian:12 AS build$' "$dockerfile" || problem "the build stage is not FROM debian:12 AS build"
grep -qE '^FROM debian:12-slim$' "$dockerfile" || problem "the runtime stage is not FROM debian:12-slim"
grep -qE '^RUN scripts/setup.sh --build( |$)' "$dockerfile" ||
  problem "the build stage does not install its packages with scripts/setup.sh --build"
grep -qE 'scripts/build.sh -DBUILD_TESTING=OFF' "$dockerfile" ||
  problem "the build stage does not build with scripts/build.sh -DBUILD_TESTING=OFF"

# The runtime stage: everything after the second FROM.
runtime=$(awk '/^FROM /{n++} n==2' "$dockerfile")
listed=$(printf '%s\n' "$runtime" |
  sed -n '/apt-get install/,/rm -rf/p' | tr ' \\' '\n\n' | grep -E '^lib[a-z0-9.+-]+$' | sort -u)
[ -n "$listed" ] || problem "found no runtime packages in the runtime stage's apt-get install"
# init-network (the transparent-mode init container, same image) runs iptables-restore.
printf '%s\n' "$runtime" | sed -n '/apt-get install/,/rm -rf/p' | grep -qE '^ +iptables \\$' ||
  problem "the runtime stage does not install iptables (meshtls-sidecar init-network runs it)"

needed=$(for b in "$sidecar" "$certmgr"; do ldd "$b"; done | awk '/=>/ {print $3}' | sort -u |
  while read -r lib; do dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib"; done |
  cut -d: -f1 | sort -u)
[ -n "$needed" ] || problem "ldd found no libraries in $sidecar and $certmgr"
for p in $base_image_packages; do needed=$(printf '%s\n' "$needed" | grep -vx "$p" || true); done

missing=$(comm -23 <(printf '%s\n' "$needed") <(printf '%s\n' "$listed"))
extra=$(comm -13 <(printf '%s\n' "$needed") <(printf '%s\n' "$listed"))
[ -z "$missing" ] || problem "the binaries load libraries of packages the runtime stage lacks: $(echo $missing)"
[ -z "$extra" ] || problem "the runtime stage installs packages the binaries do not load: $(echo $extra)"

eval "$(sed -n '/^build_packages=(/,/^)/p' scripts/setup.sh)"
[ ${#build_packages[@]} -gt 0 ] || problem "no build_packages list in scripts/setup.sh"
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
  --no-replaces --no-enhances "${build_packages[@]}" 2>/dev/null | grep -E '^[a-z0-9]' | sort -u)
for p in $listed; do
  printf '%s\n' "$closure" | grep -qx "$p" ||
    problem "runtime package $p is not a dependency of setup.sh's build packages"
done

user=$(printf '%s\n' "$runtime" | awk '/^USER /{print $2}' | tail -1)
case "$user" in
  "" | 0 | 0:* | root*) problem "the runtime stage does not set a non-root USER (found '${user}')" ;;
  *[!0-9:]*) problem "USER $user is not numeric (runAsNonRoot cannot verify a name)" ;;
esac
for directive in ENTRYPOINT CMD; do
  line=$(printf '%s\n' "$runtime" | grep -E "^$directive " | tail -1)
  [ -n "$line" ] || { [ "$directive" = CMD ] && continue; problem "no $directive"; continue; }
  [[ "$line" =~ ^$directive\ \[ ]] || problem "$directive is in shell form (needs /bin/sh): $line"
done
entry=$(printf '%s\n' "$runtime" | sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p')
copied=$(printf '%s\n' "$runtime" | grep -E '^COPY --from=build' || true)
case "$copied" in
  *meshtls-sidecar*meshtls-certmgr* | *meshtls-certmgr*meshtls-sidecar*) ;;
  *) problem "the runtime stage does not copy both binaries from the build stage" ;;
esac
[ "$entry" = /usr/local/bin/meshtls-sidecar ] || problem "ENTRYPOINT is '$entry', not /usr/local/bin/meshtls-sidecar"

if [ $fail -ne 0 ]; then exit 1; fi
echo "check-image: ok: runtime packages $(echo $listed) cover every library of both binaries; user $user"

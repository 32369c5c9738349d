#!/usr/bin/env bash
# Setup: installs the real-peer Debian packages (root, Debian 12), the npm dependencies and builds; idempotent and fast when done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PACKAGES=(
  qemu-system-x86 qemu-utils busybox-static linux-image-amd64 cpio kmod
  dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
  iproute2 strace
)

step() { printf 'setup: %s\n' "$*"; }

# 1. Debian packages: ask dpkg first; apt-get only when something is missing.
missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  step "debian packages: all ${#PACKAGES[@]} present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  step "debian packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  step "debian packages: installed ${#missing[@]}"
fi

# 2. npm dependencies: only when node_modules is missing or older than the manifests. The stamp file
#    records the last successful install; without it, node_modules' own mtime stands in.
command -v node >/dev/null && command -v npm >/dev/null || { echo "setup: node and npm (Node 20) are required" >&2; exit 1; }
STAMP=node_modules/.vhost-lens-setup-stamp
need_npm=0
if [ ! -d node_modules ]; then
  need_npm=1
else
  ref=$STAMP; [ -f "$STAMP" ] || ref=node_modules
  for f in package.json package-lock.json; do
    if [ -f "$f" ] && [ "$f" -nt "$ref" ]; then need_npm=1; fi
  done
fi
if [ "$need_npm" -eq 1 ]; then
  if [ -f package-lock.json ]; then
    step "npm: npm ci"
    npm ci --no-audit --no-fund --loglevel=error
  else
    step "npm: npm install (no package-lock.json)"
    npm install --no-audit --no-fund --loglevel=error
  fi
  touch "$STAMP"
else
  [ -f "$STAMP" ] || touch "$STAMP"
  step "npm: node_modules up to date"
fi

# 3. Build (transpile to out/, bundle to dist/).
step "build: node scripts/build.mjs"
node scripts/build.mjs

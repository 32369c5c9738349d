#!/usr/bin/env bash
# Setup: installs the real-peer and VS Code test Debian packages (root, Debian 12), the npm dependencies, code-server for
# the real-VS-Code test (own prefix under node_modules/.cache) and builds; idempotent and fast when done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PACKAGES=(
  qemu-system-x86 qemu-system-common qemu-utils busybox-static linux-image-amd64 cpio kmod
  dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
  iproute2 strace
  chromium ripgrep libkrb5-dev build-essential python3
)
# test/vscode: code-server from npm is the VS Code server and extension host (4.100.3 = VS Code 1.100.3, the last
# one on Node 20), driven by Debian's chromium through playwright-core (a pinned devDependency, no browser download).
CODE_SERVER_VERSION=4.100.3
CODE_SERVER_PREFIX=node_modules/.cache/vhost-lens/code-server
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

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

# 3. code-server in its own prefix, inside node_modules so that vsce's file walk skips it (npm ci starts it afresh).
#    Its postinstall runs `npm install` in lib/vscode, building VS Code's native modules with node-gyp against the
#    installed Node's headers (unsafe-perm as root). npm's install-script policy is kept: only the packages named
#    here run theirs (argon2, loaded at start, builds from source once its prebuilt download fails; the Windows-only
#    modules run nothing). @vscode/ripgrep's postinstall would download rg from GitHub: its cache gets Debian's rg.
CS_DIR=$CODE_SERVER_PREFIX/node_modules/code-server
CS_STAMP=$CODE_SERVER_PREFIX/.installed-$CODE_SERVER_VERSION
if [ -f "$CS_STAMP" ] && [ -x "$CODE_SERVER_PREFIX/node_modules/.bin/code-server" ]; then
  step "code-server: $CODE_SERVER_VERSION present"
else
  step "code-server: installing $CODE_SERVER_VERSION into $CODE_SERVER_PREFIX"
  nodedir=$(dirname "$(dirname "$(command -v node)")")
  [ -f "$nodedir/include/node/node_version.h" ] || { echo "setup: no Node headers in $nodedir/include/node (node-gyp must not download them)" >&2; exit 1; }
  rm -rf "$CODE_SERVER_PREFIX"
  mkdir -p "$CODE_SERVER_PREFIX/tmp"
  cs_log=$CODE_SERVER_PREFIX/install.log
  cs_tmp=$(cd "$CODE_SERVER_PREFIX/tmp" && pwd)
  printf '{ "name": "vhost-lens-code-server", "private": true, "allowScripts": { "code-server": true, "argon2": true } }\n' > "$CODE_SERVER_PREFIX/package.json"
  cs_fail() { tail -40 "$cs_log" >&2; echo "setup: code-server install failed: $1 (log: $cs_log)" >&2; exit 1; }
  npm install --prefix "$CODE_SERVER_PREFIX" --ignore-scripts --no-audit --no-fund "code-server@$CODE_SERVER_VERSION" > "$cs_log" 2>&1 || cs_fail "npm install"
  for d in "$CS_DIR/lib/vscode" "$CS_DIR/lib/vscode/extensions"; do
    printf 'allow-scripts=@parcel/watcher,@vscode/deviceid,@vscode/ripgrep,@vscode/spdlog,kerberos,native-watchdog,node-pty\n' > "$d/.npmrc"
  done
  rg_version=$(node -p 'require(process.argv[1]).packages["node_modules/@vscode/ripgrep"]?.version ?? ""' "$(pwd)/$CS_DIR/lib/vscode/npm-shrinkwrap.json")
  if [ -n "$rg_version" ]; then
    ( cd "$cs_tmp"
      npm pack --silent "@vscode/ripgrep@$rg_version" >/dev/null
      tar xzf "vscode-ripgrep-$rg_version.tgz" package/lib/postinstall.js
      rg_tag=$(sed -n "s/^const VERSION = '\([^']*\)'.*/\1/p" package/lib/postinstall.js)
      mkdir -p "vscode-ripgrep-cache-$rg_version" rgbin
      cp "$(command -v rg)" rgbin/rg
      tar czf "vscode-ripgrep-cache-$rg_version/ripgrep-$rg_tag-x86_64-unknown-linux-musl.tar.gz" -C rgbin rg ) >> "$cs_log" 2>&1 \
      || cs_fail "seeding @vscode/ripgrep $rg_version with Debian's rg"
  fi
  TMPDIR=$cs_tmp npm_config_nodedir=$nodedir npm_config_unsafe_perm=true npm_config_yes=true \
    npm rebuild --prefix "$CODE_SERVER_PREFIX" --foreground-scripts code-server argon2 >> "$cs_log" 2>&1 || cs_fail "its postinstall"
  # (a first run writes a default config file under $XDG_CONFIG_HOME, and says so on stdout: kept in the scratch folder)
  cs_version=$(HOME=$cs_tmp XDG_CONFIG_HOME=$cs_tmp XDG_DATA_HOME=$cs_tmp "$CODE_SERVER_PREFIX/node_modules/.bin/code-server" --version 2>&1) \
    && grep -q "^$CODE_SERVER_VERSION " <<< "$cs_version" || { echo "$cs_version" >> "$cs_log"; cs_fail "code-server --version"; }
  rm -rf "$cs_tmp"
  touch "$CS_STAMP"
  step "code-server: $CODE_SERVER_VERSION installed"
fi

# 4. Build (transpile to out/, bundle to dist/).
step "build: node scripts/build.mjs"
node scripts/build.mjs

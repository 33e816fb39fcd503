#!/usr/bin/env bash
# Installs what Nimbus needs to build, run and test on a Debian host. Idempotent: it only
# installs what is missing. Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Host packages: the container runtime, networking, the image tools the tests and builds use.
packages=(crun runc nftables conntrack iproute2 e2fsprogs buildah docker-registry skopeo umoci busybox-static podman apache2-utils golang-github-docker-docker-dev openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the plugins are WebAssembly components built for wasm32-wasip2 by the normal build.
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

# The TypeScript SDK's build and test tools (dev dependencies only).
if command -v npm >/dev/null; then
  if [ ! -d sdk/typescript/node_modules ] || [ sdk/typescript/package-lock.json -nt sdk/typescript/node_modules ]; then
    echo "setup: installing the SDK's dev dependencies"
    (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "setup: node/npm not found; the TypeScript SDK cannot be built or tested" >&2
  exit 1
fi

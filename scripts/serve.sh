#!/usr/bin/env bash
# Installs what Nimbus needs, builds it, and runs `nimbus serve` with the embedded defaults:
# SQLite under ~/.local/share/nimbus, a `demo` tenant, and an admin credential written to
# ~/.config/nimbus/application_default_credentials.json for the SDK to discover.
# Extra arguments go to `nimbus serve` (e.g. --listen 127.0.0.1:9090 --config nimbus.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# nimbus-monitor, beside nimbus, is the per-sandbox monitor: a small executable starts in about
# half the time the server's own binary would (docs/runtime.md).
cargo build --release -p nimbus -p nimbus-runtime --bins
# Where cargo put them: ./target, or $CARGO_TARGET_DIR (or a target-dir in cargo's config).
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
nimbus="$target_dir/release/nimbus"
[ -x "$nimbus" ] || { echo "serve: $nimbus was not built; see the cargo output above" >&2; exit 1; }
"$nimbus" doctor --fix || echo "serve: the host is not fit for container sandboxes yet; see above" >&2
exec "$nimbus" serve "$@"

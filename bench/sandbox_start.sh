#!/usr/bin/env bash
# Sandbox start latency (create -> first byte of output, image already pulled) through the API
# (a real `nimbus serve`: POST the sandbox, follow its logs), through the runtime alone, raw
# `crun run` of an equivalent bundle and `podman run`, with ratios; then 50 concurrent creates
# (p50/p99). Needs root, crun, podman, docker-registry, busybox-static (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p nimbus -p nimbus-runtime --bins --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export NIMBUS_BIN="$target_dir/release/nimbus"
exec cargo bench -p nimbus-runtime --bench sandbox_start "$@"

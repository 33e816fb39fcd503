#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: setup, formatting, lints, every Rust test
# (unit, integration, end-to-end against the real server, crun, a loopback registry) and the
# TypeScript SDK's tests against a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build"
cargo build --workspace --bins --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export NIMBUS_BIN="$target_dir/debug/nimbus"

# Sandboxes need crun to work on this host (e.g. the hybrid-cgroup hugetlb fix); doctor says
# what is wrong and --fix applies what it safely can.
"$NIMBUS_BIN" doctor --fix || true

echo "== cargo test"
cargo test --workspace --no-fail-fast --quiet
echo "== SDK tests"
(cd sdk/typescript && npm test)

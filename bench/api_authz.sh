#!/usr/bin/env bash
# Cost of the WebAssembly authorization policy on real API requests: the same server and
# request mix with `[server] authorizer = "plugin"` (grants-policy.wasm) and `"native"` (the
# same rules compiled in), side by side, printing requests/s and the ratio. Target: the plugin
# costs under 10% more than native. Needs `wrk` (apt-get install wrk) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
cargo build --release -p nimbus --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
bin="$target_dir/release/nimbus"
duration=${DURATION:-10}
work=$(mktemp -d)
# Servers are started from inside $(…) subshells, so they are tracked by pid file, not as jobs.
cleanup() { for p in "$work"/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

run() { # $1 = authorizer kind, $2 = port
  local dir="$work/$1"
  mkdir -p "$dir/home"
  if curl -s "127.0.0.1:$2/healthz" >/dev/null; then
    echo "port $2 is already serving; stop that server first" >&2
    exit 1
  fi
  printf '[server]\nsandbox_driver = "none"\nauthorizer = "%s"\n' "$1" > "$dir/nimbus.toml"
  HOME="$dir/home" "$bin" serve --listen "127.0.0.1:$2" --data-dir "$dir/data" --config "$dir/nimbus.toml" > "$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  until curl -sf "127.0.0.1:$2/healthz" >/dev/null; do sleep 0.1; done
  local token
  token=$(python3 -c "import json;print(json.load(open('$dir/home/.config/nimbus/application_default_credentials.json'))['token'])")
  curl -sf -XPOST "127.0.0.1:$2/v1/tenants/demo/services" -H "Authorization: Bearer $token" \
    -d '{"name":"worker","backend":{"kind":"builtIn","provider":"browser"}}' >/dev/null
  wrk -t1 -c8 -d"${duration}s" -H "Authorization: Bearer $token" "http://127.0.0.1:$2/v1/tenants/demo/services/worker" \
    | awk '/Requests\/sec/ {print $2}'
  kill "$(cat "$dir/pid")"
}

native=$(run native 18931)
plugin=$(run plugin 18932)
python3 - "$native" "$plugin" <<'PY'
import sys
native, plugin = float(sys.argv[1]), float(sys.argv[2])
print(f"GET service, authorized by grants-policy.wasm: {plugin:10.0f} req/s")
print(f"GET service, authorized natively:              {native:10.0f} req/s")
print(f"cost of the plugin per request: {native / plugin:.3f}x native (target < 1.10x)")
PY

#!/usr/bin/env bash
# Cost of the WebAssembly authorization policy on real API requests: the same server and
# request (GET one service) with `[server] authorizer = "plugin"` (grants-policy.wasm, a fresh
# instance per decision), `"native"` (the same grant rules in Rust) and
# `"allow-all-benchmark-only"` (no policy at all), side by side. Target: the plugin costs under
# 10% more than the native allow-all baseline; the ratio to the native rules is printed too.
#
# Two measures per run: requests/s under wrk, and the server's own CPU time per request (user +
# system, from /proc/<pid>/stat). On a shared machine requests/s moves with whatever else runs;
# CPU time per request is the steadier one. The plugin runs also report the mean wall time of one
# decision inside the server, from its call-duration histogram (`metrics_listen`, on the API's
# port + 1000). ROUNDS (default 3) runs allow-all, native and plugin once per round, in an order
# that rotates from round to round, and prints the median of each, the median of the per-round
# ratios and a drift-corrected ratio. CONNS
# (default 8) sets wrk's connections; CONNS=1 sends one request at a time. Needs `wrk`
# (apt-get install wrk) and a release build.
#
# PERF=1 instead samples one plugin server under wrk with `perf record` (DWARF call graphs) and
# prints the share of its CPU samples spent inside the authorizer's call, children included
# (wasmtime, the guest's code, the allocator, the kernel on its behalf). The policy's cost per
# request against allow-all is then 1 / (1 - share). It is measured within one run, so the
# machine's drift between runs, which dominates the side-by-side figures on a shared VM, does
# not enter it; it misses effects outside the call (e.g. caches the policy evicts for the rest
# of the request).
#
# NIMBUS_BIN=path measures that server binary instead of building the release one (e.g. to
# compare two builds).
#
# KEEP=1 keeps the servers' work directory (logs, perf data) instead of removing it.
#
# CALLGRIND=1 instead runs each server under `valgrind --tool=callgrind` and counts the
# instructions the whole server executes per request over REQUESTS (default 1000) sequential
# requests after a warm-up: deterministic, unaffected by other load, but blind to cache misses
# (and it counts each byte of a `rep stosb` memset as an instruction).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
if [ -n "${NIMBUS_BIN:-}" ]; then
  bin=$NIMBUS_BIN
else
  cargo build --release -p nimbus --quiet
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  bin="$target_dir/release/nimbus"
fi
duration=${DURATION:-10}
rounds=${ROUNDS:-3}
conns=${CONNS:-8}
work=$(mktemp -d)
# Servers are started from inside $(…) subshells, so they are tracked by pid file, not as jobs.
cleanup() { for p in "$work"/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

cpu_ticks() { # user + system clock ticks of a process
  awk '{print $14 + $15}' "/proc/$1/stat"
}

start_server() { # $1 = authorizer kind, $2 = port, $3 = dir, then an optional launcher
  # (e.g. valgrind …); sets pid, token and url (a service to GET) for the caller
  local kind=$1 port=$2 dir=$3
  shift 3
  mkdir -p "$dir/home"
  if curl -s "127.0.0.1:$port/healthz" >/dev/null; then
    echo "port $port is already serving; stop that server first" >&2
    exit 1
  fi
  # Plugin metrics (the decision's duration inside the server) on the port 1000 above.
  printf '[server]\nsandbox_driver = "none"\nauthorizer = "%s"\nmetrics_listen = "127.0.0.1:%s"\n' \
    "$kind" "$((port + 1000))" > "$dir/nimbus.toml"
  HOME="$dir/home" "$@" "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --config "$dir/nimbus.toml" > "$dir/log" 2>&1 &
  pid=$!
  echo "$pid" > "$dir/pid"
  until curl -sf "127.0.0.1:$port/healthz" >/dev/null; do sleep 0.2; done
  token=$(python3 -c "import json;print(json.load(open('$dir/home/.config/nimbus/application_default_credentials.json'))['token'])")
  curl -sf -XPOST "127.0.0.1:$port/v1/tenants/demo/services" -H "Authorization: Bearer $token" \
    -d '{"name":"worker","backend":{"kind":"builtIn","provider":"browser"}}' >/dev/null
  url="http://127.0.0.1:$port/v1/tenants/demo/services/worker"
}

stop_server() { # $1 = dir
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$1/pid"
}

decision_us() { # $1 = metrics port; mean µs per authz plugin call so far, or - if none
  curl -sf "127.0.0.1:$1/metrics" | awk '
    /^nimbus_plugin_call_duration_seconds_sum\{slot="authz"/ { sum += $NF }
    /^nimbus_plugin_call_duration_seconds_count\{slot="authz"/ { n += $NF }
    END { if (n > 0) printf "%.1f\n", sum / n * 1e6; else print "-" }'
}

run() { # $1 = authorizer kind, $2 = port, $3 = round; prints "req/s cpu-µs-per-request decision-µs"
  local dir="$work/$1-$3" pid token url
  start_server "$1" "$2" "$dir"
  wrk -t1 -c"$conns" -d2s -H "Authorization: Bearer $token" "$url" >/dev/null # warm-up
  local before after out
  before=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$conns" -d"${duration}s" -H "Authorization: Bearer $token" "$url")
  after=$(cpu_ticks "$pid")
  local decision
  decision=$(decision_us "$(($2 + 1000))")
  stop_server "$dir"
  python3 - "$out" "$before" "$after" "$(getconf CLK_TCK)" "$decision" <<'PY'
import re, sys
out, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
print(f"{rps:.0f} {(after - before) / hz / n * 1e6:.1f} {sys.argv[5]}")
PY
}

callgrind_run() { # $1 = authorizer kind, $2 = port; prints instructions per request
  local dir="$work/cg-$1" n=${REQUESTS:-1000} pid token url
  start_server "$1" "$2" "$dir" valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out"
  local get="import http.client, sys
c = http.client.HTTPConnection('127.0.0.1:$2')
for _ in range(int(sys.argv[1])):
    c.request('GET', '/v1/tenants/demo/services/worker', headers={'Authorization': 'Bearer $token'})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status"
  python3 -c "$get" 200 # warm-up
  callgrind_control -z "$pid" >/dev/null
  python3 -c "$get" "$n"
  callgrind_control -d "$pid" >/dev/null
  stop_server "$dir"
  callgrind_annotate "$dir/cg.out.1" 2>/dev/null | awk -v n="$n" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.0f\n", $1 / n}'
}

perf_run() { # $1 = port; prints the percentage of samples inside the authorizer's call
  local dir="$work/perf" pid token url
  start_server plugin "$1" "$dir"
  wrk -t1 -c8 -d2s -H "Authorization: Bearer $token" "$url" >/dev/null # warm-up
  perf record --call-graph dwarf,16384 -F 500 -p "$pid" -o "$dir/perf.data" -- sleep "$duration" 2>"$dir/perf.log" &
  local rec=$!
  wrk -t1 -c8 -d"${duration}s" -H "Authorization: Bearer $token" "$url" >/dev/null
  wait "$rec" || { echo "perf record failed: $(cat "$dir/perf.log")" >&2; exit 1; }
  stop_server "$dir"
  perf report -i "$dir/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    awk '/PluginAuthorizer as nimbus_core::authz::Authorizer>::authorize/ && !found { sub("%", "", $1); share = $1; found = 1 }
      END { if (!found) exit 1; print share }' ||
    { echo "no samples inside the authorizer's call (see $dir/perf.log)" >&2; exit 1; }
}

if [ -n "${PERF:-}" ]; then
  command -v perf >/dev/null || { echo "PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 2; }
  share=$(perf_run 18934)
  python3 - "$share" "$duration" <<'PY'
import sys
share, secs = float(sys.argv[1]) / 100, sys.argv[2]
print(f"GET service through the plugin server, {secs}s under wrk: {share:.1%} of the server's CPU samples inside the authorizer's call")
print(f"cost of the plugin per request against allow-all: {1 / (1 - share):.3f}x (target < 1.10x), by CPU samples")
PY
  exit 0
fi

if [ -n "${CALLGRIND:-}" ]; then
  command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
  allow=$(callgrind_run allow-all-benchmark-only 18933)
  native=$(callgrind_run native 18931)
  plugin=$(callgrind_run plugin 18932)
  python3 - "$allow" "$native" "$plugin" <<'PY'
import sys
allow, native, plugin = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print("GET service, instructions executed by the server per request (callgrind)")
print(f"  authorized by grants-policy.wasm               {plugin:10d}")
print(f"  authorized natively (grant rules in Rust)      {native:10d}")
print(f"  allowed without a policy (native allow-all)    {allow:10d}")
print(f"cost of the plugin per request: {plugin / allow:.3f}x of allow-all (target < 1.10x), {plugin / native:.3f}x of the native rules, by instructions")
PY
  exit 0
fi

results="$work/results"
kinds=(allow native plugin)
for r in $(seq "$rounds"); do
  # The order rotates from round to round, so that no kind always runs first, or always right
  # after another; each line records its round.
  for k in 0 1 2; do
    kind=${kinds[$(((r + k) % 3))]}
    case $kind in
      allow) echo "allow $r $(run allow-all-benchmark-only 18933 "$r")" >> "$results" ;;
      native) echo "native $r $(run native 18931 "$r")" >> "$results" ;;
      plugin) echo "plugin $r $(run plugin 18932 "$r")" >> "$results" ;;
    esac
  done
done
python3 - "$results" "$duration" <<'PY'
import statistics, sys
# kind round req/s cpu-µs-per-request decision-µs, in the order they ran
rows = [l.split() for l in open(sys.argv[1])]
def med(kind, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == kind)
for kind in ("allow", "native", "plugin"):
    runs = ", ".join(f"{float(r[2]):.0f}/{float(r[3]):.1f}" for r in rows if r[0] == kind)
    print(f"  {kind} runs (req/s / server CPU µs per request): {runs}")
a_rps, n_rps, p_rps = med("allow", 2), med("native", 2), med("plugin", 2)
a_cpu, n_cpu, p_cpu = med("allow", 3), med("native", 3), med("plugin", 3)
n_rounds = len({r[1] for r in rows})
print(f"GET service ({n_rounds} rounds of {sys.argv[2]}s, medians)     req/s   server CPU µs/request")
print(f"  authorized by grants-policy.wasm               {p_rps:8.0f}   {p_cpu:8.1f}")
print(f"  authorized natively (grant rules in Rust)      {n_rps:8.0f}   {n_cpu:8.1f}")
print(f"  allowed without a policy (native allow-all)    {a_rps:8.0f}   {a_cpu:8.1f}")
print(f"cost of the plugin per request against allow-all: {a_rps / p_rps:.3f}x by req/s, {p_cpu / a_cpu:.3f}x by server CPU (target < 1.10x)")
print(f"against the native rules: {n_rps / p_rps:.3f}x by req/s, {p_cpu / n_cpu:.3f}x by server CPU")
decisions = [float(r[4]) for r in rows if r[0] == "plugin" and len(r) > 4 and r[4] != "-"]
if decisions:
    print(f"one decision inside the plugin server (its call-duration histogram): {statistics.median(decisions):.1f} µs wall, median of the runs' means")
# The runs of a round follow each other, so a ratio within a round cancels the machine's drift
# between rounds, which a ratio of medians does not.
by_round = {}
for r in rows:
    by_round.setdefault(r[1], {})[r[0]] = r
pairs = [(k["allow"], k["plugin"]) for k in by_round.values() if "allow" in k and "plugin" in k]
if pairs:
    by_rps = statistics.median(float(a[2]) / float(p[2]) for a, p in pairs)
    by_cpu = statistics.median(float(p[3]) / float(a[3]) for a, p in pairs)
    print(f"median of per-round ratios, plugin against allow-all: {by_rps:.3f}x by req/s, {by_cpu:.3f}x by server CPU")
# A machine that drifts steadily (e.g. a VM whose neighbours get busier) still biases a ratio
# within a round. Against the allow-all CPU interpolated at the plugin run's place in the
# sequence, from the allow-all runs just before and just after it, a linear drift cancels.
allow_at = [(i, float(r[3])) for i, r in enumerate(rows) if r[0] == "allow"]
interpolated = []
for i, r in enumerate(rows):
    if r[0] != "plugin":
        continue
    before = [a for a in allow_at if a[0] < i]
    after = [a for a in allow_at if a[0] > i]
    if before and after:
        (i0, c0), (i1, c1) = before[-1], after[0]
        interpolated.append(float(r[3]) / (c0 + (c1 - c0) * (i - i0) / (i1 - i0)))
if interpolated:
    print(f"median of plugin against allow-all interpolated between the runs around it: {statistics.median(interpolated):.3f}x by server CPU")
PY

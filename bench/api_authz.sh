#!/usr/bin/env bash
# Cost of the WebAssembly authorization policy on real API requests: the same server and
# request (GET one service) with `[server] authorizer = "plugin"` (grants-policy.wasm, as the
# server runs it by default: its decisions memoized, so the same request asked again is
# answered without a call), the same with `memoize_decisions = false` ("fresh": every decision
# a fresh instance and a call), `"native"` (the same grant rules in Rust) and
# `"allow-all-benchmark-only"` (no policy at all), side by side. Target: the plugin costs under
# 10% more than the native allow-all baseline; the ratio to the native rules is printed too.
#
# The three servers run at the same time, and the load moves between them in slices: ROUNDS
# (default 10) rounds in which each server gets DURATION seconds (default 3) of wrk, in an order
# that rotates from round to round. Slices of one round lie within seconds of each other, so the
# machine's drift (on a shared VM, as large as the effect measured) hits the three alike, and no
# server restarts between its measures. Two measures per slice: requests/s, and the server's own
# CPU time per request (the sum of its threads' run time, from /proc/<pid>/task/*/schedstat,
# ns precision). The script prints each server's medians, the median and
# quartiles of the per-round ratios (the figure to read), and the mean wall time of one decision
# inside the fresh plugin server, from its call-duration histogram (`metrics_listen`, on the API's
# port + 1000). CONNS (default 8) sets wrk's connections; CONNS=1 sends one request at a time.
# EMPTY=1 adds a fourth server whose authz slot holds the bench-only empty policy
# (plugins/testdata/empty-policy: the same world, no logic, allows everything): what wasmtime's
# fresh instance per call costs on the API before any policy logic runs.
# Needs `wrk` (apt-get install wrk) and a release build.
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
# ALTERNATE=1 instead sends the GETs one at a time and moves to the next server after every
# request (allow, native, plugin[, empty], in an order that rotates), REQUESTS (default 30000)
# per server in blocks of 1000. Each server is idle between two of its requests, so every
# request finds the caches cold, as on a lightly loaded server; and since the servers take
# turns within microseconds, the machine's drift hits them alike, which makes the ratios far
# steadier than the slices' (quartiles within a few percent). Prints each server's median
# latency (as the client sees it) and server CPU per request, and the median and quartiles of
# the per-block CPU ratios.
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
duration=${DURATION:-}
rounds=${ROUNDS:-10}
conns=${CONNS:-8}
work=$(mktemp -d)
# Servers are started from inside $(…) subshells, so they are tracked by pid file, not as jobs.
cleanup() { for p in "$work"/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

cpu_ns() { # nanoseconds a process's threads have run (first field of each schedstat)
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'
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
    "${kind%%:*}" "$((port + 1000))" > "$dir/nimbus.toml"
  if [ "$kind" = plugin:empty-policy ]; then
    # The bench-only policy without logic, installed into this server's store and put in the
    # authz slot: what any policy costs on the API before its logic runs, on every request.
    "$bin" plugin install "$empty_policy_wasm" --data-dir "$dir/data" >/dev/null
    printf '[plugins.authz]\nplugin = "empty-policy"\nmemoize_decisions = false\n' >> "$dir/nimbus.toml"
  fi
  if [ "$kind" = plugin:fresh ]; then
    printf '[plugins.authz]\nmemoize_decisions = false\n' >> "$dir/nimbus.toml"
  fi
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

decision_us_raw() { # $1 = metrics port; "sum-seconds count" of the authz plugin's calls so far
  curl -sf "127.0.0.1:$1/metrics" | awk '
    /^nimbus_plugin_call_duration_seconds_sum\{slot="authz"/ { sum += $NF }
    /^nimbus_plugin_call_duration_seconds_count\{slot="authz"/ { n += $NF }
    END { printf "%.9f %d\n", sum, n }'
}

slice() { # $1 = kind, $2 = round; one slice of load on that kind's running server; prints
  # "req/s cpu-µs-per-request"
  local pid token url before after out
  pid=$(cat "$work/$1/pid") token=$(cat "$work/$1/token") url=$(cat "$work/$1/url")
  before=$(cpu_ns "$pid")
  out=$(wrk -t1 -c"$conns" -d"${duration}s" -H "Authorization: Bearer $token" "$url")
  after=$(cpu_ns "$pid")
  python3 - "$out" "$before" "$after" <<'PY'
import re, sys
out, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
print(f"{rps:.0f} {(after - before) / n / 1e3:.1f}")
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
  duration=${duration:-10}
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
  fresh=$(callgrind_run plugin:fresh 18935)
  python3 - "$allow" "$native" "$plugin" "$fresh" <<'PY'
import sys
allow, native, plugin, fresh = (int(a) for a in sys.argv[1:5])
print("GET service, instructions executed by the server per request (callgrind)")
print(f"  authorized by grants-policy.wasm               {plugin:10d}")
print(f"  the same, every decision a call (no memo)      {fresh:10d}")
print(f"  authorized natively (grant rules in Rust)      {native:10d}")
print(f"  allowed without a policy (native allow-all)    {allow:10d}")
print(f"cost of the plugin per request: {plugin / allow:.3f}x of allow-all (target < 1.10x), {plugin / native:.3f}x of the native rules, by instructions")
print(f"every decision a call: {fresh / allow:.3f}x of allow-all")
PY
  exit 0
fi

duration=${duration:-3}
results="$work/results"
kinds=(allow native plugin fresh)
declare -A kind_of=([allow]=allow-all-benchmark-only [native]=native [plugin]=plugin [fresh]=plugin:fresh [empty]=plugin:empty-policy)
declare -A port_of=([allow]=18933 [native]=18931 [plugin]=18932 [fresh]=18935 [empty]=18934)
if [ -n "${EMPTY:-}" ]; then
  kinds+=(empty)
  empty_policy_wasm="$(dirname "$(dirname "$bin")")/nimbus-plugins-wasm/wasm32-wasip2/release/empty_policy.wasm"
  [ -f "$empty_policy_wasm" ] || { echo "EMPTY=1 needs $empty_policy_wasm (built with the server)" >&2; exit 2; }
fi
for k in "${kinds[@]}"; do
  start_server "${kind_of[$k]}" "${port_of[$k]}" "$work/$k"
  echo "$token" > "$work/$k/token"
  echo "$url" > "$work/$k/url"
  wrk -t1 -c"$conns" -d2s -H "Authorization: Bearer $token" "$url" >/dev/null # warm-up
done
if [ -n "${ALTERNATE:-}" ]; then
  args=()
  for k in "${kinds[@]}"; do args+=("$k" "${port_of[$k]}" "$(cat "$work/$k/token")" "$(cat "$work/$k/pid")"); done
  python3 - "${REQUESTS:-30000}" "${args[@]}" <<'PY'
import glob, http.client, statistics, sys, time
per_server, specs = int(sys.argv[1]), sys.argv[2:]
servers = [dict(kind=specs[i], port=int(specs[i + 1]), token=specs[i + 2], pid=specs[i + 3], latency=[])
           for i in range(0, len(specs), 4)]
for s in servers:
    s["conn"] = http.client.HTTPConnection("127.0.0.1", s["port"])
def cpu_ns(pid):  # run time of all the server's threads so far
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(open(f).read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total
def get(s):
    s["conn"].request("GET", "/v1/tenants/demo/services/worker", headers={"Authorization": "Bearer " + s["token"]})
    r = s["conn"].getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{s['kind']}: GET answered {r.status}")
block, blocks, n = 1000, [], len(servers)
for _ in range(max(1, per_server // block)):
    before = [cpu_ns(s["pid"]) for s in servers]
    for i in range(block):
        for j in range(n):  # the order rotates, so that no server always follows the same one
            s = servers[(i + j) % n]
            t = time.perf_counter_ns()
            get(s)
            s["latency"].append(time.perf_counter_ns() - t)
    blocks.append([(cpu_ns(s["pid"]) - b) / block / 1e3 for s, b in zip(servers, before)])
print(f"GET service, one request at a time, alternating servers ({len(blocks) * block} per server)   latency µs   server CPU µs/request")
for j, s in enumerate(servers):
    print(f"  {s['kind']:8} {statistics.median(s['latency']) / 1e3:27.1f} {statistics.median(b[j] for b in blocks):23.1f}")
allow = next(j for j, s in enumerate(servers) if s["kind"] == "allow")
for j, s in enumerate(servers):
    if j == allow:
        continue
    ratios = [b[j] / b[allow] for b in blocks]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    lat = statistics.median(s["latency"]) / statistics.median(servers[allow]["latency"])
    target = " (target < 1.10x)" if s["kind"] == "plugin" else ""
    print(f"{s['kind']} against allow-all: {statistics.median(ratios):.3f}x [{q[0]:.3f}-{q[2]:.3f}] by server CPU (median of per-block ratios [quartiles]){target}, {lat:.3f}x by median latency")
PY
  exit 0
fi
decisions_before=$(decision_us_raw "$((port_of[fresh] + 1000))")
for r in $(seq "$rounds"); do
  # The order rotates from round to round, so that no kind always runs first, or always right
  # after another; each line records its round.
  for i in "${!kinds[@]}"; do
    k=${kinds[$(((r + i) % ${#kinds[@]}))]}
    echo "$k $r $(slice "$k" "$r")" >> "$results"
  done
done
decisions_after=$(decision_us_raw "$((port_of[fresh] + 1000))")
python3 - "$results" "$duration" "$decisions_before" "$decisions_after" <<'PY'
import statistics, sys
# kind round req/s cpu-µs-per-request, in the order they ran
rows = [l.split() for l in open(sys.argv[1])]
def med(kind, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == kind)
def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]
kinds = [k for k in ("allow", "native", "plugin", "fresh", "empty") if any(r[0] == k for r in rows)]
for kind in kinds:
    runs = ", ".join(f"{float(r[2]):.0f}/{float(r[3]):.1f}" for r in rows if r[0] == kind)
    print(f"  {kind} slices (req/s / server CPU µs per request): {runs}")
n_rounds = len({r[1] for r in rows})
print(f"GET service ({n_rounds} rounds, {sys.argv[2]}s per server per round, medians)     req/s   server CPU µs/request")
for kind, label in (("plugin", "authorized by grants-policy.wasm           "),
                    ("fresh", "the same, every decision a call (no memo)   "),
                    ("empty", "authorized by the empty policy (no logic)   "),
                    ("native", "authorized natively (grant rules in Rust)  "),
                    ("allow", "allowed without a policy (native allow-all)")):
    if kind not in kinds:
        continue
    print(f"  {label}   {med(kind, 2):8.0f}   {med(kind, 3):8.1f}")
# Each round's slices follow each other within seconds, so a ratio within a round cancels the
# machine's drift between rounds; its median over the rounds is the figure to read.
by_round = {}
for r in rows:
    by_round.setdefault(r[1], {})[r[0]] = (float(r[2]), float(r[3]))
def ratios(kind):
    cpu = [b[kind][1] / b["allow"][1] for b in by_round.values() if kind in b and "allow" in b]
    rps = [b["allow"][0] / b[kind][0] for b in by_round.values() if kind in b and "allow" in b]
    return quartiles(cpu), quartiles(rps)
for kind, name in (("plugin", "the plugin"), ("fresh", "the plugin, every decision a call"), ("empty", "the empty policy"), ("native", "the native rules")):
    if kind not in kinds:
        continue
    (c1, c2, c3), (r1, r2, r3) = ratios(kind)
    target = " (target < 1.10x)" if kind == "plugin" else ""
    print(f"{name} against allow-all, median of per-round ratios [quartiles]: {c2:.3f}x [{c1:.3f}-{c3:.3f}] by server CPU{target}, {r2:.3f}x [{r1:.3f}-{r3:.3f}] by req/s")
(before, after) = (sys.argv[3].split(), sys.argv[4].split())
if len(before) == 2 and len(after) == 2 and float(after[1]) > float(before[1]):
    mean = (float(after[0]) - float(before[0])) / (float(after[1]) - float(before[1]))
    print(f"one decision inside the fresh plugin server (its call-duration histogram, over the slices): {mean * 1e6:.1f} µs wall")
PY

#!/usr/bin/env bash
# Interleaved A/B of sandbox start latency through the API between two builds of Nimbus: two
# servers run side by side (bridges and subnets of their own), and each pair of creates (one on
# each, order alternating) is followed to the first byte of output. Prints both medians and the
# median of the per-pair ratios B/A, which cancels the machine's drift between pairs. The same
# build on both sides shows the harness's own spread (about ±4% on the 2-core VM).
#
#   bench/start_ab.sh DIR_A DIR_B [PAIRS]
#
# DIR_A and DIR_B each hold a release `nimbus` and `nimbus-monitor` (copy them out of
# target/release before and after a change). Sandboxes run busybox-static from a prepared
# root filesystem (`root.kind = "rootfs"`), so no registry is needed. Needs root, crun, nftables.
set -euo pipefail
a=$(realpath "${1:?DIR_A}") b=$(realpath "${2:?DIR_B}") pairs=${3:-40}
for d in "$a" "$b"; do
  [ -x "$d/nimbus" ] && [ -x "$d/nimbus-monitor" ] || { echo "$d needs nimbus and nimbus-monitor" >&2; exit 2; }
done
busybox=$(command -v busybox) || { echo "needs busybox (apt-get install busybox-static)" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The servers' bridges and tables: left behind, they slow every later `nft` call on the host.
  for n in 1 2; do
    nft delete table inet "nimbus_nmbab$n" 2>/dev/null || true
    nft delete table bridge "nimbus_nmbab$n" 2>/dev/null || true
    ip link delete "nmbab$n" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/rootfs/bin"
cp "$busybox" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/echo"
n=0
for side in A B; do
  n=$((n + 1))
  dir="$work/$side" bin=$([ "$side" = A ] && echo "$a" || echo "$b")
  mkdir -p "$dir/home"
  printf '[runtime]\nbridge = "nmbab%s"\nsubnet = "10.229.%s.0/24"\n' "$n" "$n" > "$dir/nimbus.toml"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$port" > "$dir/port"
  HOME="$dir/home" RUST_LOG=warn "$bin/nimbus" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" \
    --config "$dir/nimbus.toml" > "$dir/log" 2>&1 &
  pids+=($!)
done
for side in A B; do
  until [ -f "$work/$side/home/.config/nimbus/application_default_credentials.json" ] &&
    curl -sf "127.0.0.1:$(cat "$work/$side/port")/healthz" >/dev/null; do sleep 0.1; done
done
sleep 2 # the warm pools fill after start
python3 - "$work" "$pairs" <<'PY'
import http.client, json, statistics, sys, time
work, pairs = sys.argv[1], int(sys.argv[2])
servers = {}
for side in "AB":
    token = json.load(open(f"{work}/{side}/home/.config/nimbus/application_default_credentials.json"))["token"]
    servers[side] = (int(open(f"{work}/{side}/port").read()), {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
body = json.dumps({"profile": "worker", "spec": {
    "owner": {"kind": "standalone", "displayName": "ab"}, "backend": "container",
    "root": {"kind": "rootfs", "path": f"{work}/rootfs"}, "process": {"argv": ["echo", "hi"]}}})

def first_byte(side):
    port, headers = servers[side]
    api, logs = http.client.HTTPConnection("127.0.0.1", port), http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    api.request("POST", "/v1/tenants/demo/sandboxes", body=body, headers=headers)
    created = api.getresponse()
    record = json.loads(created.read())
    assert created.status == 201, record
    sid = record["metadata"]["id"]
    logs.request("GET", f"/v1/tenants/demo/sandboxes/{sid}/logs?follow=true", headers=headers)
    assert logs.getresponse().read(1), f"no output from {sid}"
    took = time.perf_counter() - start
    logs.close()
    api.request("DELETE", f"/v1/tenants/demo/sandboxes/{sid}", headers=headers)
    api.getresponse().read()
    api.close()
    return took

for _ in range(3):
    for side in "AB":
        first_byte(side)  # warm-up
        time.sleep(0.15)
times, ratios = {"A": [], "B": []}, []
for i in range(pairs):
    pair = {}
    for side in ("AB" if i % 2 == 0 else "BA"):
        pair[side] = first_byte(side)
        times[side].append(pair[side])
        time.sleep(0.15)  # let the sandbox go away before the next create
    ratios.append(pair["B"] / pair["A"])
print(f"create -> first byte through the API, {pairs} interleaved pairs")
for side in "AB":
    print(f"  {side}: median {statistics.median(times[side]) * 1e3:.1f} ms")
print(f"  B/A: median of per-pair ratios {statistics.median(ratios):.3f}")
PY

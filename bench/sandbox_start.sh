#!/usr/bin/env bash
# Sandbox start latency (create -> first byte of output, image already pulled) for Nimbus,
# raw `crun run` of an equivalent bundle and `podman run`, with ratios; then 50 concurrent
# creates (p50/p99). Needs root, crun, podman, docker-registry, busybox-static (tests/setup-host.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p nimbus-runtime --bench sandbox_start "$@"

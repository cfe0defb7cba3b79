#!/usr/bin/env bash
# B5, no timing oracle: how much longer a revoked key takes to refuse than an unknown one, both
# uncached (one Redis lookup each), on a release node with one event loop. SAMPLES keys of each
# kind, sent interleaved over one keep-alive connection; prints p50 and p90 of each and their ratio.
#
#   benchmarks/refusal-timing.sh [SAMPLES, default 2000] [KEYGATE_BIN, default: a release build]
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh
ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools python3 curl

samples=${1:-2000}
keygate=${2:-$(../scripts/build-release.sh 2>/dev/null)}
work=$(mktemp -d -t keygate-b5.XXXXXX)
redis_port=$(free_port); data_port=$(free_port); control_port=$(free_port)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# Servers on core 0, the client on core 1, as every benchmark here.
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
export KEYGATE_REDIS_URL="redis://127.0.0.1:$redis_port" KEYGATE_NAMESPACE=b5
admin=$("$keygate" keys create --user ops --scope keygate:admin --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
# A long negative TTL keeps nothing from the setup cached: every timed key is looked up once.
taskset -c 0 "$keygate" serve --data-port "$data_port" --control-port "$control_port" --threads 1 \
    --log-level warning > "$work/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$data_port/health/ready" >/dev/null && break; sleep 0.1; done
taskset -c 1 python3 scripts/refusal_timing.py "$data_port" "$control_port" "$admin" "$redis_port" b5 "$samples"

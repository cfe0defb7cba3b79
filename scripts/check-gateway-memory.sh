#!/usr/bin/env bash
# Gateway mode's memory under a slow client (called by scripts/test.sh): a real node with
# --upstream, a real upstream and client on loopback (scripts/check-gateway-memory.py), the node's
# RSS measured from /proc while a 10 MiB response waits for a client that reads slowly.
#
#   scripts/check-gateway-memory.sh KEYGATE_BIN REDIS_URL
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/packages.sh
source scripts/lib/check-node.sh
bin=$1 redis_url=$2

upstream_port=$(free_port)
start_check_node "$bin" "$redis_url" gateway-memory --upstream "http://127.0.0.1:$upstream_port"
key=$("$bin" keys create --user memory-check --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
python3 scripts/check-gateway-memory.py --upstream-port "$upstream_port" --data-port "$data_port" --node-pid "$node_pid" --key "$key" \
    || { echo "node log:" >&2; tail -20 "$workdir/node.log" >&2; exit 1; }

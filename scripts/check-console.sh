#!/usr/bin/env bash
# The console in a real headless Chromium (called by scripts/test.sh): a real node and Redis, keys
# made with the CLI, then scripts/check-console.py drives the pages as an operator and as a user
# who opens a console link. Screenshots go to $KEYGATE_CONSOLE_SCREENSHOTS (default
# .build/console-screenshots), kept as test artifacts.
#
#   scripts/check-console.sh KEYGATE_BIN REDIS_URL
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/packages.sh
bin=$1 redis_url=$2
repo=$(pwd)

ensure_packages chromium chromium-driver
venv="$repo/.venv"
ensure_python_tools "$venv"

workdir=$(mktemp -d -t keygate-console.XXXXXX)
node_pid=""
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
    rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

data_port=$(free_port) control_port=$(free_port)
while [ "$control_port" = "$data_port" ]; do control_port=$(free_port); done
export KEYGATE_REDIS_URL=$redis_url KEYGATE_NAMESPACE="console-$$-$RANDOM"
"$bin" serve --data-port "$data_port" --control-port "$control_port" --usage-spill-path "$workdir/spill.jsonl" \
    > "$workdir/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$control_port/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$control_port/health/ready" >/dev/null || { echo "error: the node did not become ready; log:" >&2; cat "$workdir/node.log" >&2; exit 1; }

field_of() { python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
admin=$("$bin" keys create --user ops --scope keygate:admin --json | field_of key)
"$bin" keys create --user alice --name '<img src=x onerror=alert(1)>' --scope keygate:self >/dev/null
other=$("$bin" keys create --user bob --name bobs-key --json | field_of id)

shots=${KEYGATE_CONSOLE_SCREENSHOTS:-$repo/.build/console-screenshots}
"$venv/bin/python" scripts/check-console.py --control "http://127.0.0.1:$control_port" --data "http://127.0.0.1:$data_port" \
    --admin-key "$admin" --other-key-id "$other" --screenshots "$shots" \
    || { echo "node log:" >&2; tail -50 "$workdir/node.log" >&2; exit 1; }
echo "screenshots: $shots"

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
source scripts/lib/check-node.sh
bin=$1 redis_url=$2
repo=$(pwd)

ensure_packages chromium chromium-driver
venv="$repo/.venv"
ensure_python_tools "$venv"

start_check_node "$bin" "$redis_url" console

field_of() { python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
admin=$("$bin" keys create --user ops --scope keygate:admin --json | field_of key)
"$bin" keys create --user alice --name '<img src=x onerror=alert(1)>' --scope keygate:self >/dev/null
other=$("$bin" keys create --user bob --name bobs-key --json | field_of id)
carol=$("$bin" keys create --user carol --name one --json | field_of key)
"$bin" keys create --user carol --name two >/dev/null

shots=${KEYGATE_CONSOLE_SCREENSHOTS:-$repo/.build/console-screenshots}
"$venv/bin/python" scripts/check-console.py --control "http://127.0.0.1:$control_port" --data "http://127.0.0.1:$data_port" \
    --admin-key "$admin" --other-key-id "$other" --carol-key "$carol" --screenshots "$shots" \
    || { echo "node log:" >&2; tail -50 "$workdir/node.log" >&2; exit 1; }
echo "screenshots: $shots"

#!/usr/bin/env bash
# The test command: installs what is missing (as root), starts a throwaway redis-server on a free
# loopback port with persistence off, runs `swift test` against it, and stops Redis even on failure.
#
#   scripts/test.sh                  # every test
#   scripts/test.sh --filter Redis   # extra arguments go to `swift test` (and skip the live checks)
#
# After `swift test`: scripts/check-control-plane.sh runs a real node for promtool, the OpenAPI
# validator and schemathesis (Python tools from PyPI, installed in .venv/); check-console.sh drives
# the console in Debian's headless Chromium (Selenium from PyPI); check-gateway-memory.sh measures a
# gateway node's RSS while a 10 MiB response waits for a slow client; check-local-cluster.sh
# runs deploy/local/up.sh end to end with nginx and Prometheus; check-deploy.sh validates the
# deployment files offline; fuzz/run.sh runs the libFuzzer targets for 20 s each;
# benchmarks/run.sh --quick runs every benchmark scenario for a few seconds so the harness cannot rot,
# and benchmarks/sentinel.sh --quick and benchmarks/cluster.sh --quick do the same for the Sentinel
# and Cluster figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/packages.sh

ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools openssl python3 python3-venv curl prometheus nginx-light shellcheck \
    chromium chromium-driver
command -v swift >/dev/null || { echo "error: swift is not on PATH (Swift 6.2 or newer is required)" >&2; exit 1; }

workdir=$(mktemp -d -t keygate-test.XXXXXX)
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null; then
        kill -CONT "$redis_pid" 2>/dev/null || true
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$workdir" --logfile "$workdir/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
done
redis-cli -p "$port" ping >/dev/null || { echo "error: redis-server did not start; log:" >&2; cat "$workdir/redis.log" >&2; exit 1; }
export REDIS_URL="redis://127.0.0.1:$port"
echo "test Redis: $REDIS_URL (pid $redis_pid)"

# stage NAME CMD...: runs one stage and records how long it took; the summary prints at the end,
# also when a stage fails.
stage_times=()
stage() {
    local name=$1 start=$SECONDS status=0
    shift
    echo "== stage: $name"
    "$@" || status=$?
    stage_times+=("$(printf '%-22s %4ds%s' "$name" $((SECONDS - start)) "$([ $status -eq 0 ] || echo "  FAILED ($status)")")")
    return $status
}
summary() {
    [ ${#stage_times[@]} -gt 0 ] || return 0
    echo "== stage times (total ${SECONDS}s)"
    printf '  %s\n' "${stage_times[@]}"
}
trap 'summary; cleanup' EXIT

# The project's own targets build with -warnings-as-errors (Package.swift reads this variable;
# dependencies are not affected). Exported for every build below, so the nested packages, which
# share .build with this one, see the same settings and reuse what it compiled.
export KEYGATE_WARNINGS_AS_ERRORS=1
# Cluster slot rules on the test servers too: a cross-slot command fails the tests, not a Cluster.
export KEYGATE_REDIS_CLUSTER_SLOTS=1
stage "build (debug, tests)" swift build --build-tests
KEYGATE_BIN="$(swift build --show-bin-path)/keygate"
export KEYGATE_BIN
# At most 8 tests at a time: the integration tests start nodes (two event loops each) and Redis
# clients, and with all 150 at once on two cores, connects and subscriptions waited past their 5 s
# test deadlines now and then (seen about once in five runs). Costs about 5 s.
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-8}
stage "swift test" swift test --skip-build "$@"
if [ $# -eq 0 ]; then
    stage "control plane" bash scripts/check-control-plane.sh "$KEYGATE_BIN" "$REDIS_URL"
    stage "console (Chromium)" bash scripts/check-console.sh "$KEYGATE_BIN" "$REDIS_URL"
    stage "gateway memory" bash scripts/check-gateway-memory.sh "$KEYGATE_BIN" "$REDIS_URL"
    stage "local cluster" bash scripts/check-local-cluster.sh "$KEYGATE_BIN"
    stage "deployment files" bash scripts/check-deploy.sh "$KEYGATE_BIN"
    stage "fuzz (20 s a target)" bash fuzz/run.sh 20
    # On the debug build above (KEYGATE_BIN): a smoke test of the harness, not a measurement.
    stage "benchmarks --quick" bash benchmarks/run.sh --quick
    stage "sentinel benchmark --quick" bash benchmarks/sentinel.sh --quick
    stage "cluster benchmark --quick" bash benchmarks/cluster.sh --quick
fi

# shellcheck shell=bash disable=SC2034,SC2154
# Shared by sentinel.sh and cluster.sh, which compare two Keygate nodes on two Redis topologies in
# one run: the binaries, a work folder cleaned up on exit, Redis servers and nodes pinned to core 0
# (load generators go on core 1, as in run.sh), and wrk's figures. Source it from benchmarks/.
#
#   bench_setup LABEL TOOL...   # builds TOOLs (and keygate unless KEYGATE_BIN is set); sets keygate,
#                               # bin (the tools' folder) and work, and arms the cleanup
#   start_redis PORT ARG...     # redis-server on loopback, persistence off, its own folder
#   start_node NAME URL ARG...  # keygate serve with $namespace, one event loop; sets port_NAME, control_NAME
#   rps FILE; median < numbers

bench_setup() {
    local label=$1 tool_flags product
    shift
    if [ -n "${KEYGATE_BIN:-}" ]; then
        keygate=$KEYGATE_BIN
        tool_flags=(--scratch-path ../.build)
    else
        keygate=$(../scripts/build-release.sh 2>/dev/null)
        tool_flags=("${release_flags[@]}" --scratch-path ../.build)
    fi
    for product in "$@"; do swift build "${tool_flags[@]}" --product "$product" >/dev/null; done
    bin="$(swift build "${tool_flags[@]}" --show-bin-path)"
    work=$(mktemp -d -t "keygate-$label.XXXXXX")
    pids=()
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

start_redis() {
    local port=$1
    mkdir -p "$work/redis-$port"
    taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --repl-diskless-sync-delay 0 \
        --dir "$work/redis-$port" --logfile "$work/redis-$port.log" "${@:2}" &
    pids+=($!)
    for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
}

start_node() {
    local name=$1 url=$2 port control
    port=$(free_port); control=$(free_port)
    KEYGATE_LOG_LEVEL=warning taskset -c 0 "$keygate" serve --data-port "$port" --control-port "$control" --redis-url "$url" \
        --namespace "$namespace" --threads 1 --usage-spill-path "$work/spill-$port.jsonl" "${@:3}" > "$work/node-$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/ready")" = 200 ] && break
        sleep 0.05
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/ready")" = 200 ] \
        || { echo "error: the $name node is not ready; log:" >&2; cat "$work/node-$name.log" >&2; exit 1; }
    printf -v "port_$name" '%s' "$port"
    printf -v "control_$name" '%s' "$control"
}

rps() { awk '/Requests\/sec/ {print int($2)}' "$1"; }
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

#!/usr/bin/env bash
# Keygate against nginx, an OpenResty-style Lua peer and Redis's own limits, in one run on this
# machine; writes benchmarks/results/latest.md and latest.csv (see benchmarks/README.md).
#
#   benchmarks/run.sh                     # every scenario, full length (about 10 minutes)
#   benchmarks/run.sh --quick             # every scenario for a few seconds (scripts/test.sh runs it;
#                                         # with KEYGATE_BIN set, on that binary and debug tools)
#   benchmarks/run.sh --scenario hit      # only the named scenario(s); repeat the flag for several
#                                         # (report: results/scenarios-hit.md; latest.md is a full run)
#
# Scenarios: hit, limits, hit10k, miss, badkey, revocation, memory, openloop. Servers (Redis, nginx, the
# Lua peer, Keygate with one event loop) run on core 0, load generators on core 1. --quick writes
# its report to a temporary folder and only checks that every scenario still produces its figures.
set -euo pipefail
cd "$(dirname "$0")"
bench_dir=$(pwd)
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh

quick=false
scenarios=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=true ;;
        --scenario) scenarios+=("$2"); shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
all_scenarios=(hit limits gateway hit10k miss badkey revocation memory openloop)
[ ${#scenarios[@]} -eq 0 ] && scenarios=("${all_scenarios[@]}")
for scenario in "${scenarios[@]}"; do
    printf '%s\n' "${all_scenarios[@]}" | grep -qx "$scenario" || { echo "unknown scenario: $scenario" >&2; exit 2; }
done
wants() { printf '%s\n' "${scenarios[@]}" | grep -qx "$1"; }

ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools nginx-light nginx-extras \
    libnginx-mod-http-lua lua-nginx-redis lua-resty-lrucache wrk curl python3

if $quick; then
    duration=2; rounds=1; hot_keys=1000; miss_keys=3000; bad_keys=3000; memory_keys=20000; revocations=50
else
    duration=10; rounds=5; hot_keys=10000; miss_keys=50000; bad_keys=50000; memory_keys=1000000; revocations=1000
fi
# The hit scenarios compare systems within a few percent: they run in $rounds interleaved rounds of
# $round_seconds each and keep each system's median (see interleaved below).
round_seconds=4; $quick && round_seconds=2

# The tools build into the main package's build folder (--scratch-path ../.build), so SwiftNIO,
# BoringSSL and Keygate's own modules compile once for both packages. A measurement uses release
# builds (build-release.sh's flags); the --quick smoke run, given the debug binary in KEYGATE_BIN
# (scripts/test.sh does), uses the debug build the tests already made and compiles only the tools.
if $quick && [ -n "${KEYGATE_BIN:-}" ]; then
    echo "building the benchmark tools (debug, for the smoke run)..."
    keygate=$KEYGATE_BIN
    tool_flags=(--scratch-path ../.build)
else
    echo "building release binaries..."
    build_log=$(mktemp)
    keygate=$(../scripts/build-release.sh 2>"$build_log") || { cat "$build_log" >&2; exit 1; }
    rm -f "$build_log"
    tool_flags=("${release_flags[@]}" --scratch-path ../.build)
fi
for product in keygate-bench-keys keygate-loadgen keygate-revocation-bench; do
    swift build "${tool_flags[@]}" --product "$product" >/dev/null
done
bin="$(swift build "${tool_flags[@]}" --show-bin-path)"

work=$(mktemp -d -t keygate-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
csv="$work/results.csv"
echo "scenario,system,metric,value,unit" > "$csv"
commands="$work/commands.txt"
: > "$commands"

# record SCENARIO SYSTEM METRIC VALUE UNIT
record() { echo "$1,$2,$3,$4,$5" >> "$csv"; printf '  %-10s %-22s %-28s %s %s\n' "$1" "$2" "$3" "$4" "$5"; }
# run_logged CMD...: runs a load command, keeping it for the report.
run_logged() { printf '%q ' "$@" | sed "s|$work|\$WORK|g; s|$bin/||g; s|$bench_dir/||g" >> "$commands"; echo >> "$commands"; "$@"; }

# --- servers -------------------------------------------------------------------------------------

redis_port=$(free_port)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis_url="redis://127.0.0.1:$redis_port"
namespace=bench

data_commands() { # Redis commands that serve data (not the subscriber's PING/SUBSCRIBE, not INFO)
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
        awk -F'[:=,]' '/^cmdstat_/ && $1 !~ /cmdstat_(ping|subscribe|info|client|xinfo|config)/ {s += $3} END {print s + 0}'
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_http() { # wait_http URL: until it answers at all
    for _ in $(seq 1 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.05; done
    echo "error: $1 does not answer" >&2; exit 1
}

make_keys() { # make_keys COUNT FILE [--unknown]: keys in Redis (or well-formed keys that are not)
    "$bin/keygate-bench-keys" --url "$redis_url" --namespace "$namespace" --count "$1" --out "$2" "${@:3}" >/dev/null
}

nginx_port=$(free_port)
sed -e "s|NGINX_DIR|$work|g" -e "s|NGINX_PORT|$nginx_port|g" scripts/nginx-return200.conf > "$work/nginx.conf"
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log" &
pids+=($!)
wait_http "http://127.0.0.1:$nginx_port/"

# start_lua_peer LRU_ITEMS USE_SHARED_DICT: (re)starts the Lua peer; sets lua_port.
lua_pid=""
start_lua_peer() {
    [ -n "$lua_pid" ] && { kill "$lua_pid"; wait "$lua_pid" 2>/dev/null || true; }
    lua_port=$(free_port)
    sed -e "s|PEER_DIR|$work|g" -e "s|PEER_LUA_DIR|$bench_dir/peers/lua|g" -e "s|PEER_PORT|$lua_port|g" \
        -e "s|PEER_REDIS_PORT|$redis_port|g" -e "s|PEER_NAMESPACE|$namespace|g" \
        -e "s|PEER_LRU_ITEMS|$1|g" -e "s|PEER_USE_SHARED_DICT|$2|g" peers/lua/nginx.conf > "$work/lua-peer.conf"
    taskset -c 0 nginx -c "$work/lua-peer.conf" -p "$work" -e "$work/lua-peer-error.log" &
    lua_pid=$!
    pids+=("$lua_pid")
    wait_http "http://127.0.0.1:$lua_port/auth"
}

# start_node EXTRA_FLAGS...: a Keygate node on core 0 with one event loop; sets node_port, node_pid.
start_node() {
    node_port=$(free_port)
    KEYGATE_LOG_LEVEL=warning taskset -c 0 "$keygate" serve --data-port "$node_port" --control-port "$(free_port)" \
        --redis-url "$redis_url" --namespace "$namespace" --threads 1 --usage-spill-path "$work/spill-$node_port.jsonl" "$@" &
    node_pid=$!
    pids+=("$node_pid")
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$node_port/health/ready")" = 200 ] && return 0
        sleep 0.05
    done
    echo "error: node on port $node_port did not become ready" >&2; exit 1
}
stop_node() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

# wrk_run OUT URL WRK_ARGS...: closed-loop wrk on core 1 (its latencies suffer coordinated
# omission, so only its request rate is used); OUT gets wrk's report.
wrk_run() {
    local out=$1; shift
    run_logged taskset -c 1 wrk -t1 -c64 -d"${duration}s" "$@" > "$out"
    if grep -q "Non-2xx" "$out" && [ "${expect_non_2xx:-false}" != true ]; then
        echo "error: unexpected non-2xx answers:" >&2; cat "$out" >&2; exit 1
    fi
}
rps_of() { awk '/Requests\/sec/ {print int($2)}' "$1"; }
requests_of() { awk '/requests in/ {print $1}' "$1"; }
keys_wrk() { KEYS_FILE="$1" KEYS_START="${2:-0}" wrk_run "$3" "${@:4}" -s "$bench_dir/scripts/keys.lua"; }

echo "creating keys..."
make_keys 1 "$work/hot.txt"
hot=$(head -1 "$work/hot.txt")
max_nginx=""; max_lua=""; max_keygate=""
# Set by interleaved (rps_SYSTEM, requests_SYSTEM).
rps_nginx_return_200=""; rps_lua_peer=""; rps_keygate=""; requests_keygate=""; requests_keygate_limited=""; requests_keygate_credits=""

# --- scenarios -----------------------------------------------------------------------------------

# interleaved SCENARIO NAME=URL...: wrk (with the arguments in wrk_args) on each URL in turn, for
# $rounds rounds of $round_seconds, then records each system's median req/s. On a shared machine the
# throughput drifts by 10% or more within a minute; interleaving spreads that drift over every system
# instead of charging it to whichever ran last. Sets rps_NAME (median) and requests_NAME (total).
interleaved() {
    local scenario=$1; shift
    local spec name round
    for round in $(seq 1 "$rounds"); do
        for spec in "$@"; do
            name=${spec%%=*}
            # A system may have its own wrk arguments (another key): wrk_args_NAME, dashes as underscores.
            local own="wrk_args_${name//-/_}[@]"
            local -a args=("${wrk_args[@]}")
            if declare -p "wrk_args_${name//-/_}" >/dev/null 2>&1; then args=("${!own}"); fi
            duration=$round_seconds wrk_run "$work/w-$scenario-$name-$round" "${args[@]}" "${spec#*=}"
        done
    done
    for spec in "$@"; do
        name=${spec%%=*}
        local median total
        median=$(for round in $(seq 1 "$rounds"); do rps_of "$work/w-$scenario-$name-$round"; done |
            sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
        total=$(for round in $(seq 1 "$rounds"); do requests_of "$work/w-$scenario-$name-$round"; done | awk '{s += $1} END {print s}')
        record "$scenario" "$name" requests_per_second "$median" req/s
        printf -v "rps_${name//-/_}" '%s' "$median"
        printf -v "requests_${name//-/_}" '%s' "$total"
    done
}

if wants hit; then
    echo "scenario hit: one hot key (and Redis commands per cache hit), $rounds interleaved rounds"
    start_lua_peer 100000 true
    start_node
    curl -s -o /dev/null -H "X-API-Key: $hot" "http://127.0.0.1:$lua_port/auth"
    curl -s -o /dev/null -H "X-API-Key: $hot" "http://127.0.0.1:$node_port/auth"
    sleep 1.2 # the first use's flush
    before=$(data_commands) # only Keygate sends any: the Lua peer has the key cached, nginx has no Redis
    wrk_args=(-H "X-API-Key: $hot")
    interleaved hit nginx-return-200="http://127.0.0.1:$nginx_port/" lua-peer="http://127.0.0.1:$lua_port/auth" \
        keygate="http://127.0.0.1:$node_port/auth"
    sleep 1.5 # the last usage flush
    after=$(data_commands)
    max_nginx=$rps_nginx_return_200; max_lua=$rps_lua_peer; max_keygate=$rps_keygate
    record hit keygate redis_commands_per_request "$(python3 -c "print(f'{($after - $before) / $requests_keygate:.5f}')")" commands
    stop_node "$node_pid"
fi

if wants limits; then
    echo "scenario limits: the hot key against a hot key with a rate limit it never reaches and one with credits it never uses up, $rounds interleaved rounds"
    limited=$("$keygate" keys create --user bench-limited --rate-limit 1000000000/1h --redis-url "$redis_url" \
        --namespace "$namespace" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    credited=$("$keygate" keys create --user bench-credits --credits 1000000000000 --redis-url "$redis_url" \
        --namespace "$namespace" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    start_node
    for key in "$hot" "$limited" "$credited"; do curl -s -o /dev/null -H "X-API-Key: $key" "http://127.0.0.1:$node_port/auth"; done
    sleep 1.2
    before=$(data_commands)
    wrk_args=(-H "X-API-Key: $hot")
    # shellcheck disable=SC2034 # read by interleaved through wrk_args_NAME
    wrk_args_keygate_limited=(-H "X-API-Key: $limited")
    # shellcheck disable=SC2034
    wrk_args_keygate_credits=(-H "X-API-Key: $credited")
    interleaved limits keygate="http://127.0.0.1:$node_port/auth" keygate-limited="http://127.0.0.1:$node_port/auth" \
        keygate-credits="http://127.0.0.1:$node_port/auth"
    unset wrk_args_keygate_limited wrk_args_keygate_credits
    sleep 1.5
    after=$(data_commands)
    # Every command of the run is charged to the limited and credited keys' requests (the usage
    # flushes of all three keys, credit leases and returns included): an upper bound of the limits' cost.
    record limits keygate-limited redis_commands_per_request \
        "$(python3 -c "print(f'{($after - $before) / ($requests_keygate_limited + $requests_keygate_credits):.5f}')")" commands
    stop_node "$node_pid"

    # Across three nodes: a key limited to 2,000 per 2 s window (leased in blocks of 100) under an
    # open load three times its rate, spread over the nodes; the 200s counted per window (by when
    # each request left; a request in flight at a window's edge can land in the neighbour) against
    # the limit. The bound: never more than the limit in a window.
    echo "scenario limits: admitted per window against the limit, three nodes"
    shared=$("$keygate" keys create --user bench-three-nodes --rate-limit 2000/2s --redis-url "$redis_url" \
        --namespace "$namespace" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')
    echo "$shared" > "$work/shared.txt"
    three_ports=(); three_pids=()
    for _ in 1 2 3; do start_node; three_ports+=("$node_port"); three_pids+=("$node_pid"); done
    accuracy_seconds=12; $quick && accuracy_seconds=5
    run_logged taskset -c 1 "$bin/keygate-loadgen" --ports "$(IFS=,; echo "${three_ports[*]}")" --rate 6000 \
        --duration "$accuracy_seconds" --warmup 1 --connections 48 --keys-file "$work/shared.txt" --window-ms 2000 --spin false \
        > "$work/limits-accuracy.txt"
    for pid in "${three_pids[@]}"; do stop_node "$pid"; done
    # Whole windows only (the first and last are cut by the run's start and end).
    read -r windows worst mean < <(python3 - "$work/limits-accuracy.txt" 2000 <<'EOF'
import sys
fields = dict(item.split("=", 1) for item in open(sys.argv[1]).read().split())
counts = [int(pair.split(":")[1]) for pair in fields.get("windows_200", "").split(",") if pair][1:-1]
limit = int(sys.argv[2])
if not counts:
    sys.exit("no whole window in the run")
print(len(counts), f"{max(counts) / limit:.4f}", f"{sum(counts) / len(counts) / limit:.4f}")
EOF
)
    record limits keygate-3-nodes admitted_per_window_max_vs_limit "$worst" ratio
    record limits keygate-3-nodes admitted_per_window_mean_vs_limit "$mean" ratio
    record limits keygate-3-nodes whole_windows "$windows" windows
fi

if wants gateway; then
    echo "scenario gateway: the same API behind a plain proxy, the in-process Lua check, nginx auth_request + Keygate, and Keygate as the gateway, $rounds interleaved rounds"
    start_node --upstream "http://127.0.0.1:$nginx_port"
    gw_proxy=$(free_port); gw_lua=$(free_port); gw_auth=$(free_port)
    sed -e "s|GW_DIR|$work|g" -e "s|GW_LUA_DIR|$bench_dir/peers/lua|g" -e "s|GW_REDIS_PORT|$redis_port|g" \
        -e "s|GW_NAMESPACE|$namespace|g" -e "s|GW_API_PORT|$nginx_port|g" -e "s|GW_KEYGATE_PORT|$node_port|g" \
        -e "s|GW_PROXY_PORT|$gw_proxy|g" -e "s|GW_LUA_PORT|$gw_lua|g" -e "s|GW_AUTH_REQUEST_PORT|$gw_auth|g" \
        scripts/nginx-gateway.conf > "$work/gateway-nginx.conf"
    taskset -c 0 nginx -c "$work/gateway-nginx.conf" -p "$work" -e "$work/gateway-nginx-error.log" &
    pids+=($!)
    wait_http "http://127.0.0.1:$gw_proxy/"
    for port in "$gw_lua" "$gw_auth" "$node_port"; do # each one admits the key, and refuses none
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $hot" "http://127.0.0.1:$port/resource")
        [ "$code" = 200 ] || { echo "error: the gateway on port $port answered $code" >&2; exit 1; }
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/resource")
        [ "$code" = 401 ] || { echo "error: the gateway on port $port answered $code without a key" >&2; exit 1; }
    done
    wrk_args=(--latency -H "X-API-Key: $hot")
    interleaved gateway nginx-proxy="http://127.0.0.1:$gw_proxy/resource" lua-in-process="http://127.0.0.1:$gw_lua/resource" \
        nginx-auth-request-keygate="http://127.0.0.1:$gw_auth/resource" keygate-gateway="http://127.0.0.1:$node_port/resource"
    for name in nginx-proxy lua-in-process nginx-auth-request-keygate keygate-gateway; do # the median round's median latency
        p50=$(for round in $(seq 1 "$rounds"); do
                  awk '$1 == "50%" {v = $2; if (v ~ /us$/) v = v + 0; else if (v ~ /ms$/) v = v * 1000; else if (v ~ /s$/) v = v * 1000000; print int(v)}' \
                      "$work/w-gateway-$name-$round"
              done | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')
        record gateway "$name" latency_p50_us "$p50" us
    done
    stop_node "$node_pid"
fi

if wants hit10k; then
    echo "scenario hit10k: $hot_keys hot keys, round robin (all cached after a warm-up pass), $rounds interleaved rounds"
    make_keys "$hot_keys" "$work/hot10k.txt"
    start_lua_peer 100000 true
    start_node
    keys_wrk "$work/hot10k.txt" 0 "$work/w" "http://127.0.0.1:$lua_port/auth" # warm-up
    keys_wrk "$work/hot10k.txt" 0 "$work/w" "http://127.0.0.1:$node_port/auth"
    wrk_args=(-s "$bench_dir/scripts/keys.lua")
    # nginx `return 200` behind the same wrk script: the ceiling of wrk running a Lua function per request.
    KEYS_FILE="$work/hot10k.txt" KEYS_START=0 interleaved hit10k nginx-return-200="http://127.0.0.1:$nginx_port/" \
        lua-peer="http://127.0.0.1:$lua_port/auth" keygate="http://127.0.0.1:$node_port/auth"
    stop_node "$node_pid"
fi

if wants miss; then
    echo "scenario miss: every request a different valid key beyond the caches (a Redis lookup each)"
    make_keys "$miss_keys" "$work/miss.txt"
    start_lua_peer 16 false
    keys_wrk "$work/miss.txt" 0 "$work/w" "http://127.0.0.1:$lua_port/auth"
    record miss lua-peer requests_per_second "$(rps_of "$work/w")" req/s
    start_node --cache-capacity 16 --negative-cache-capacity 16
    keys_wrk "$work/miss.txt" 0 "$work/w" "http://127.0.0.1:$node_port/auth"
    record miss keygate requests_per_second "$(rps_of "$work/w")" req/s
    stop_node "$node_pid"
    gets=$((duration * 20000)); [ "$gets" -gt 200000 ] && gets=200000
    run_logged taskset -c 1 redis-benchmark -p "$redis_port" -t get -c 64 -n "$gets" --csv > "$work/rb"
    record miss redis-benchmark-get requests_per_second "$(awk -F'"' '$2 == "GET" {print int($4)}' "$work/rb")" req/s
fi

if wants badkey; then
    echo "scenario badkey: malformed keys (no Redis command allowed) and unknown well-formed keys"
    make_keys "$bad_keys" "$work/unknown.txt" --unknown
    # Malformed: the same keys with the last checksum digit changed, and with the wrong prefix.
    python3 - "$work/unknown.txt" "$work/malformed.txt" <<'EOF'
import sys
keys = [line.strip() for line in open(sys.argv[1]) if line.strip()]
with open(sys.argv[2], "w") as out:
    for index, key in enumerate(keys):
        bad = key[:-1] + ("0" if key[-1] != "0" else "1") if index % 2 == 0 else "xx" + key[2:]
        out.write(bad + "\n")
EOF
    expect_non_2xx=true
    start_lua_peer 100000 true
    for kind in malformed unknown; do
        before=$(data_commands)
        keys_wrk "$work/$kind.txt" 0 "$work/w" "http://127.0.0.1:$lua_port/auth"
        record badkey lua-peer "${kind}_requests_per_second" "$(rps_of "$work/w")" req/s
        record badkey lua-peer "${kind}_redis_commands_per_request" "$(python3 -c "print(f'{($(data_commands) - $before) / $(requests_of "$work/w"):.5f}')")" commands
    done
    start_node
    for kind in malformed unknown; do
        before=$(data_commands)
        keys_wrk "$work/$kind.txt" 0 "$work/w" "http://127.0.0.1:$node_port/auth"
        spent=$(( $(data_commands) - before ))
        record badkey keygate "${kind}_requests_per_second" "$(rps_of "$work/w")" req/s
        record badkey keygate "${kind}_redis_commands_per_request" "$(python3 -c "print(f'{$spent / $(requests_of "$work/w"):.5f}')")" commands
        if [ "$kind" = malformed ] && [ "$spent" -ne 0 ]; then
            echo "error: malformed keys cost $spent Redis commands (must be 0)" >&2; exit 1
        fi
    done
    stop_node "$node_pid"
    expect_non_2xx=false
fi

if wants revocation; then
    echo "scenario revocation: $revocations revocations seen by three nodes under open-loop load"
    nodes=(); node_pids=()
    for _ in 1 2 3; do start_node; nodes+=("$node_port"); node_pids+=("$node_pid"); done
    # Background load: 2,000 req/s of the hot key on each node while keys are revoked.
    load_pids=()
    for port in "${nodes[@]}"; do
        taskset -c 1 "$bin/keygate-loadgen" --port "$port" --rate 2000 --connections 8 --spin false \
            --duration 600 --warmup 0 --keys-file "$work/hot.txt" > /dev/null &
        load_pids+=($!); pids+=($!)
    done
    echo "keygate-loadgen --port NODE --rate 2000 --connections 8 --spin false --keys-file hot.txt   # on each node, during the revocations" >> "$commands"
    sleep 1
    run_logged taskset -c 1 "$bin/keygate-revocation-bench" --url "$redis_url" --namespace "$namespace" \
        --ports "$(IFS=,; echo "${nodes[*]}")" --count "$revocations" --csv "$work/revocations.csv" > "$work/rev"
    for pid in "${load_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do stop_node "$pid"; done
    cat "$work/rev"
    line=$(head -1 "$work/rev")
    for field in p50_ms p99_ms max_ms; do
        record revocation keygate-3-nodes "revoke_to_refusal_$field" "$(echo "$line" | tr ' ' '\n' | awk -F= -v f="$field" '$1 == f {print $2}')" ms
    done
    record revocation keygate-3-nodes samples "$(echo "$line" | tr ' ' '\n' | awk -F= '$1 == "samples" {print $2}')" count
fi

if wants memory; then
    echo "scenario memory: RSS growth per cached key ($((memory_keys / 2)) to $memory_keys keys)"
    make_keys "$memory_keys" "$work/memory.txt"
    start_node --cache-capacity $((memory_keys * 2))
    half=$((memory_keys / 2))
    head -n "$half" "$work/memory.txt" > "$work/memory-a.txt"
    tail -n +"$((half + 1))" "$work/memory.txt" > "$work/memory-b.txt"
    warm() { # warm FILE COUNT: round robin over FILE until COUNT requests were served
        local served=0
        while [ "$served" -lt "$2" ]; do
            keys_wrk "$1" "$served" "$work/w" "http://127.0.0.1:$node_port/auth"
            served=$((served + $(requests_of "$work/w")))
        done
    }
    # Half first (the heap's high-water mark of per-request transients is reached), then the rest.
    warm "$work/memory-a.txt" "$half"; sleep 2
    rss_before=$(rss_kib "$node_pid")
    warm "$work/memory-b.txt" "$half"; sleep 2
    rss_after=$(rss_kib "$node_pid")
    stop_node "$node_pid"
    record memory keygate bytes_per_cached_key "$(( (rss_after - rss_before) * 1024 / half ))" bytes
fi

if wants openloop; then
    echo "scenario openloop: latency at 50% and 80% of each system's maximum rate (intended-time latency)"
    measure_max() { wrk_run "$work/w" "$@"; rps_of "$work/w"; }
    [ -n "$max_nginx" ] || max_nginx=$(measure_max "http://127.0.0.1:$nginx_port/")
    start_lua_peer 100000 true
    [ -n "$max_lua" ] || max_lua=$(measure_max -H "X-API-Key: $hot" "http://127.0.0.1:$lua_port/auth")
    start_node
    [ -n "$max_keygate" ] || max_keygate=$(measure_max -H "X-API-Key: $hot" "http://127.0.0.1:$node_port/auth")
    for system in nginx-return-200 lua-peer keygate; do
        case $system in
            nginx-return-200) port=$nginx_port; path=/; max=$max_nginx ;;
            lua-peer) port=$lua_port; path=/auth; max=$max_lua ;;
            keygate) port=$node_port; path=/auth; max=$max_keygate ;;
        esac
        for percent in 50 80; do
            rate=$((max * percent / 100))
            run_logged taskset -c 1 "$bin/keygate-loadgen" --port "$port" --path "$path" --rate "$rate" --connections 64 \
                --duration "$duration" --warmup 1 --keys-file "$work/hot.txt" > "$work/ol"
            for field in achieved_rate p50_us p99_us p999_us max_us errors send_lag_p99_us; do
                value=$(tr ' ' '\n' < "$work/ol" | awk -F= -v f="$field" '$1 == f {print $2}')
                case $field in achieved_rate) unit=req/s ;; errors) unit=count ;; *) unit=us ;; esac
                record openloop "$system" "at_${percent}pct_$field" "$value" "$unit"
            done
            if [ "$(tr ' ' '\n' < "$work/ol" | awk -F= '$1 == "errors" {print $2}')" != 0 ]; then
                echo "error: the load generator saw connection errors: $(cat "$work/ol")" >&2; exit 1
            fi
        done
    done
    stop_node "$node_pid"
fi

# --- report --------------------------------------------------------------------------------------

# A full run of every scenario is latest.md; a run of some scenarios gets its own name
# (scenarios-limits.md), so it never replaces the last full run's report.
if $quick; then out_dir="$work/report"; else out_dir="$bench_dir/results"; fi
report_name=latest
[ ${#scenarios[@]} -lt ${#all_scenarios[@]} ] && report_name="scenarios-$(IFS=-; echo "${scenarios[*]}")"
mkdir -p "$out_dir"
python3 scripts/report.py --csv "$csv" --commands "$commands" --duration "$duration" --rounds "$rounds" \
    --round-seconds "$round_seconds" --quick "$quick" --scenarios "${scenarios[*]}" --out "$out_dir/$report_name.md"
cp "$csv" "$out_dir/$report_name.csv"
if $quick; then
    cat "$out_dir/$report_name.md"
    python3 scripts/report.py --check --csv "$csv" --scenarios "${scenarios[*]}"
else
    echo "wrote benchmarks/results/$report_name.md and $report_name.csv"
fi

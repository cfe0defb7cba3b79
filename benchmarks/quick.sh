#!/usr/bin/env bash
# First benchmark of the verification node (issue 4), in one run on this machine:
#   - cache-hit path vs nginx `return 200` (same wrk settings; target >= 0.9x),
#   - all-miss path (every request a different key, each one a Redis lookup; reference:
#     redis-benchmark GET with the same connection count),
#   - memory per cached key (RSS growth / keys cached; target <= 256 bytes),
#   - Redis commands per cache hit (target <= 0.01, usage flush amortised).
# nginx (1 worker), Keygate (1 event loop) and Redis are pinned to core 0, wrk to core 1.
#
#   benchmarks/quick.sh [--quick]      # --quick: short runs, fewer keys (for CI)
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh
ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools nginx-light wrk curl python3

duration=10; miss_keys=50000; memory_keys=1000000
if [ "${1:-}" = "--quick" ]; then duration=2; miss_keys=5000; memory_keys=20000; fi

echo "building release binaries..."
(cd .. && swift build -c release --product keygate >/dev/null)
swift build -c release --product keygate-bench-keys >/dev/null
keygate="$(cd .. && swift build -c release --show-bin-path)/keygate"
make_keys="$(swift build -c release --show-bin-path)/keygate-bench-keys"

work=$(mktemp -d -t keygate-quick.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis_port=$(free_port)
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis_url="redis://127.0.0.1:$redis_port"

echo "creating keys..."
"$make_keys" --url "$redis_url" --namespace bench --count 1 --out "$work/hot.txt" >/dev/null
"$make_keys" --url "$redis_url" --namespace bench --count "$miss_keys" --out "$work/miss.txt" >/dev/null
"$make_keys" --url "$redis_url" --namespace bench --count "$memory_keys" --out "$work/memory.txt" >/dev/null
hot=$(head -1 "$work/hot.txt")

nginx_port=$(free_port)
sed -e "s|NGINX_DIR|$work|g" -e "s|NGINX_PORT|$nginx_port|g" scripts/nginx-return200.conf > "$work/nginx.conf"
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log" &
pids+=($!)

# start_node PORT EXTRA_FLAGS...: a node pinned to core 0 with one event loop.
start_node() {
    local port=$1; shift
    KEYGATE_LOG_LEVEL=warning taskset -c 0 "$keygate" serve --data-port "$port" --control-port "$(free_port)" \
        --redis-url "$redis_url" --namespace bench --threads 1 --usage-spill-path "$work/spill-$port.jsonl" "$@" &
    node_pid=$!
    pids+=("$node_pid")
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/ready")" = 200 ] && return 0
        sleep 0.05
    done
    echo "error: node on port $port did not become ready" >&2; exit 1
}
stop_node() { kill -TERM "$node_pid"; wait "$node_pid" 2>/dev/null || true; }

# rps WRK_ARGS...: requests/s reported by wrk (closed loop; wrk's latencies suffer coordinated omission).
rps() { taskset -c 1 wrk -t1 -c64 -d"${duration}s" "$@" | awk '/Requests\/sec/ {print int($2)}'; }
requests() { taskset -c 1 wrk -t1 -c64 -d"${duration}s" "$@" | awk '/requests in/ {print $1}'; }
data_commands() { # Redis commands that serve data (not the subscriber's PING/SUBSCRIBE, not INFO)
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' | awk -F'[:=,]' '/^cmdstat_/ && $1 !~ /cmdstat_(ping|subscribe|info|client|xinfo)/ {s += $3} END {print s + 0}'
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.05; done
nginx_rps=$(rps "http://127.0.0.1:$nginx_port/")

node_port=$(free_port)
start_node "$node_port"
curl -s -o /dev/null -H "X-API-Key: $hot" "http://127.0.0.1:$node_port/auth"
before=$(data_commands)
hit_requests=$(requests -H "X-API-Key: $hot" "http://127.0.0.1:$node_port/auth")
sleep 1.5 # one usage flush
after=$(data_commands)
hit_rps=$(rps -H "X-API-Key: $hot" "http://127.0.0.1:$node_port/auth")
stop_node

# All-miss: a cache of 16 entries and a key set far larger, so each request is a Redis lookup.
start_node "$node_port" --cache-capacity 16 --negative-cache-capacity 16
miss_rps=$(KEYS_FILE="$work/miss.txt" rps -s scripts/keys.lua "http://127.0.0.1:$node_port/auth")
stop_node
redis_get_rps=$(taskset -c 1 redis-benchmark -p "$redis_port" -t get -c 64 -n 200000 --csv | awk -F'"' '$2 == "GET" {print int($4)}')

# Memory: RSS growth per additional cached key. Half the memory set is cached first (so the heap's
# high-water mark of per-request transients is already reached), then the other half; the growth
# between the two RSS readings divided by the keys added is the cost of a cached key.
start_node "$node_port" --cache-capacity $((memory_keys * 2))
half=$((memory_keys / 2))
head -n "$half" "$work/memory.txt" > "$work/memory-a.txt"
tail -n +"$((half + 1))" "$work/memory.txt" > "$work/memory-b.txt"
warm() { # warm FILE COUNT: send requests round robin over FILE until COUNT have been served
    local served=0 n
    while [ "$served" -lt "$2" ]; do
        n=$(KEYS_FILE="$1" KEYS_START="$served" requests -s scripts/keys.lua "http://127.0.0.1:$node_port/auth")
        served=$((served + n))
    done
}
warm "$work/memory-a.txt" "$half"
sleep 2 # let the usage flush settle
rss_before=$(rss_kib "$node_pid")
warm "$work/memory-b.txt" "$half"
sleep 2
rss_after=$(rss_kib "$node_pid")
stop_node
memory_keys_added=$half

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
per_hit=$(python3 -c "print(f'{($after - $before) / $hit_requests:.5f}')")
bytes_per_key=$(python3 -c "print(int(($rss_after - $rss_before) * 1024 / $memory_keys_added))")
mkdir -p results
out=results/quick.md
{
    echo "# Verification node quick benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(uname -srm); $(nginx -v 2>&1 | cut -d' ' -f3); $(redis-server --version | cut -d' ' -f3); $(swift --version 2>/dev/null | head -1)"
    echo "nginx (1 worker), Keygate (\`--threads 1\`) and Redis on core 0; \`wrk -t1 -c64 -d${duration}s\` on core 1. One round: expect +-20% between runs."
    echo
    echo "| measure | Keygate | reference | ratio | target |"
    echo "|---|---|---|---|---|"
    echo "| cache-hit path, req/s | $hit_rps | nginx \`return 200\`: $nginx_rps | $(ratio "$hit_rps" "$nginx_rps") | >= 0.90 |"
    echo "| all-miss path (a Redis lookup per request), req/s | $miss_rps | redis-benchmark GET -c 64: $redis_get_rps | $(ratio "$miss_rps" "$redis_get_rps") | >= the OpenResty Lua + Redis GET peer (issue 7) |"
    echo "| memory per cached key, bytes (RSS growth from $half to $memory_keys cached keys) | $bytes_per_key | | | <= 256 |"
    echo "| Redis commands per cache-hit request ($hit_requests requests) | $per_hit | | | <= 0.01 |"
    echo
    echo "Reproduce: \`benchmarks/quick.sh\` (\`--quick\` for the short CI variant)."
} > "$out"
cat "$out"

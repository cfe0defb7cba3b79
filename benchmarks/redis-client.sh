#!/usr/bin/env bash
# The Redis client against redis-benchmark on the same throwaway redis-server, in one run.
# Targets (issue 2): pipelined >= 0.8x `redis-benchmark -P 16`, 50 unpipelined callers >= 0.9x
# `redis-benchmark -c 50`. Writes benchmarks/results/redis-client.md.
#
#   benchmarks/redis-client.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh
ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools python3

pipelined_n=2000000; plain_n=400000; rounds=3
if [ "${1:-}" = "--quick" ]; then pipelined_n=200000; plain_n=40000; rounds=1; fi

# Into the main package's build folder, with its release flags (see run.sh).
swift build "${release_flags[@]}" --scratch-path ../.build --product redis-client-bench >/dev/null
bench=$(swift build "${release_flags[@]}" --scratch-path ../.build --show-bin-path)/redis-client-bench

workdir=$(mktemp -d -t keygate-bench.XXXXXX)
port=$(free_port)
# Redis on core 0, load generators on core 1 (2-core machine), as in reliability.md's harness.
taskset -c 0 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$workdir" --logfile "$workdir/redis.log" &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; wait $redis_pid 2>/dev/null; rm -rf "$workdir"' EXIT
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$port" set bench:key xxx >/dev/null

rb() { # redis-benchmark requests/s for GET
    taskset -c 1 redis-benchmark -p "$port" -t get --csv "$@" | awk -F'"' '$2 == "GET" {print int($4)}'
}
ours() { taskset -c 1 "$bench" --url "redis://127.0.0.1:$port" "$@" | awk '{print $2}'; }

# Interleaved rounds, medians: this machine drifts by 20% between runs, a ratio within a round less.
declare -a rp op rn on
for _ in $(seq 1 "$rounds"); do
    rp+=("$(rb -c 50 -P 16 -n "$pipelined_n")")
    op+=("$(ours --mode pipelined --clients 50 --pipeline 16 --requests "$pipelined_n")")
    rn+=("$(rb -c 50 -n "$plain_n")")
    on+=("$(ours --mode unpipelined --clients 50 --requests "$plain_n")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rb_pipe=$(median "${rp[@]}"); our_pipe=$(median "${op[@]}")
rb_plain=$(median "${rn[@]}"); our_plain=$(median "${on[@]}")

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
out=results/redis-client.md
{
    echo "# Redis client vs redis-benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nproc) cores, $(uname -srm); $(redis-server --version | cut -d' ' -f1-3); $(swift --version 2>/dev/null | head -1)"
    echo "Redis pinned to core 0, load generators to core 1; GET of one 3-byte value; median of $rounds interleaved rounds."
    echo "KeygateRedis callers are Swift tasks running on NIO's event loop (the way the node's handlers run);"
    echo "\`--executor default\` (Swift's cooperative pool) adds two thread hops per command and measured about 0.6x of this."
    echo
    echo "| scenario | redis-benchmark req/s | KeygateRedis req/s | ratio | target |"
    echo "|---|---|---|---|---|"
    echo "| 50 callers, pipeline 16 | $rb_pipe | $our_pipe | $(ratio "$our_pipe" "$rb_pipe") | >= 0.80 |"
    echo "| 50 callers, unpipelined | $rb_plain | $our_plain | $(ratio "$our_plain" "$rb_plain") | >= 0.90 |"
    echo
    echo "All rounds (redis-benchmark / KeygateRedis): pipelined ${rp[*]} / ${op[*]}; unpipelined ${rn[*]} / ${on[*]}."
    echo
    echo "Commands: \`redis-benchmark -t get -c 50 -P 16 -n $pipelined_n\`, \`redis-benchmark -t get -c 50 -n $plain_n\`,"
    echo "\`redis-client-bench --mode pipelined --clients 50 --pipeline 16\`, \`--mode unpipelined --clients 50\` (benchmarks/redis-client.sh)."
} > "$out"
cat "$out"

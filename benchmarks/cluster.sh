#!/usr/bin/env bash
# Issue 15's figures, in one run, on the same machine:
#   - hit and miss req/s (wrk, interleaved rounds, medians): one node on a Redis Cluster of three
#     primaries (and three replicas) against the same node on one standalone Redis; goals: miss >= 1.0x,
#     hit within 5%;
#   - KeygateRedis in cluster mode against `redis-benchmark --cluster` on the same cluster, GETs spread
#     over the three primaries (goal >= 0.8x pipelined);
#   - the usage flush's cost per key (KeyStore.applyUsage, the flusher's own write) on the cluster and
#     on standalone;
#   - the invalidation channel: classic PUBLISH (the subscriber on another primary) against sharded
#     SPUBLISH (the subscriber on the channel's shard), latency and redis-benchmark throughput.
# Writes benchmarks/results/cluster.md (or, with --quick, prints it only).
#
#   benchmarks/cluster.sh [--quick]      # about 3 minutes; --quick about 1
# KEYGATE_BIN=/path/to/keygate uses that binary and the debug tools (else a release build).
set -euo pipefail
cd "$(dirname "$0")"
bench_dir=$(pwd)
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh
ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools wrk curl python3

quick=false
[ "${1:-}" = --quick ] && quick=true
if $quick; then
    seconds=2; rounds=1; miss_keys=2000; flush_keys=500; flush_batches=3; client_n=100000; messages=100
else
    seconds=4; rounds=5; miss_keys=20000; flush_keys=2000; flush_batches=10; client_n=1000000; messages=1000
fi

# shellcheck source=scripts/node-pair.sh
source scripts/node-pair.sh
bench_setup cluster-bench keygate-bench-keys redis-client-bench usage-flush-bench

# Both topologies replicate: the standalone Redis has a replica as each primary of the cluster does,
# and both nodes WAIT for one replica after each change, so both do the same writes.
standalone_port=$(free_port)
start_redis "$standalone_port"
standalone_replica_port=$(free_port)
start_redis "$standalone_replica_port" --replicaof 127.0.0.1 "$standalone_port"
cluster_ports=()
for _ in 1 2 3 4 5 6; do
    port=$(free_cluster_port)
    cluster_ports+=("$port")
    start_redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
done
members=()
for port in "${cluster_ports[@]}"; do members+=("127.0.0.1:$port"); done
redis-cli --cluster create "${members[@]}" --cluster-replicas 1 --cluster-yes > "$work/create.log" 2>&1 \
    || { echo "error: redis-cli --cluster create failed:" >&2; cat "$work/create.log" >&2; exit 1; }
for _ in $(seq 1 300); do # every server agrees, and three replicas are in sync (WAIT 1 needs them)
    ok=0; replicas=0
    for port in "${cluster_ports[@]}"; do
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        info=$(redis-cli -p "$port" info replication | tr -d '\r')
        [[ $info == *role:slave* && $info == *master_link_status:up* ]] && replicas=$((replicas + 1))
    done
    [ "$ok" = 6 ] && [ "$replicas" = 3 ] && break
    sleep 0.1
done
if [ "$ok" != 6 ] || [ "$replicas" != 3 ]; then echo "error: the cluster did not settle within 30 s" >&2; exit 1; fi
primaries=()
for port in "${cluster_ports[@]}"; do
    redis-cli -p "$port" role | head -1 | grep -q master && primaries+=("$port")
done
standalone_url="redis://127.0.0.1:$standalone_port"
cluster_url="redis-cluster://127.0.0.1:${cluster_ports[0]},127.0.0.1:${cluster_ports[1]},127.0.0.1:${cluster_ports[2]}"
namespace=cluster-bench

# shellcheck disable=SC2034 # read through ${!port_var}
port_standalone="" port_cluster=""

# The same number of keys in each Redis; the hot key of each.
for name in standalone cluster; do
    url_var="${name}_url"
    "$bin/keygate-bench-keys" --url "${!url_var}" --namespace "$namespace" --count 1 --out "$work/hot-$name.txt" >/dev/null
    "$bin/keygate-bench-keys" --url "${!url_var}" --namespace "$namespace" --count "$miss_keys" --out "$work/miss-$name.txt" >/dev/null
done

# Small caches: every request of the miss run is a Redis lookup.
start_node standalone "$standalone_url" --cache-capacity 16 --negative-cache-capacity 16 --redis-wait-replicas 1
start_node cluster "$cluster_url" --cache-capacity 16 --negative-cache-capacity 16
# The same again with the usage flush put off past the run: the lookups alone, since on this machine
# the flush's Redis work shares core 0 with the node and every miss-path request is a new key to count.
# shellcheck disable=SC2034
port_standalone_lookups="" port_cluster_lookups=""
start_node standalone_lookups "$standalone_url" --cache-capacity 16 --negative-cache-capacity 16 --redis-wait-replicas 1 \
    --usage-flush-interval 10m
start_node cluster_lookups "$cluster_url" --cache-capacity 16 --negative-cache-capacity 16 --usage-flush-interval 10m
results="$work/results.txt"
: > "$results"
for scenario in hit miss lookups; do
    for round in $(seq 1 "$rounds"); do
        for name in standalone cluster; do
            port_var="port_$name"
            [ "$scenario" = lookups ] && port_var="port_${name}_lookups"
            if [ "$scenario" = hit ]; then
                taskset -c 1 wrk -t1 -c64 -d"${seconds}s" -H "X-API-Key: $(head -1 "$work/hot-$name.txt")" \
                    "http://127.0.0.1:${!port_var}/auth" > "$work/$scenario-$name-$round"
            else
                KEYS_FILE="$work/miss-$name.txt" KEYS_START=$((round * 1000)) taskset -c 1 wrk -t1 -c64 -d"${seconds}s" \
                    -s "$bench_dir/scripts/keys.lua" "http://127.0.0.1:${!port_var}/auth" > "$work/$scenario-$name-$round"
            fi
            if grep -q "Non-2xx" "$work/$scenario-$name-$round"; then
                echo "error: non-2xx answers in $scenario/$name:" >&2; cat "$work/$scenario-$name-$round" >&2; exit 1
            fi
        done
    done
    for name in standalone cluster; do
        value=$(for round in $(seq 1 "$rounds"); do rps "$work/$scenario-$name-$round"; done | median)
        echo "$scenario $name $value" >> "$results"
    done
done

# The Redis client in cluster mode against redis-benchmark --cluster, both on core 1. redis-benchmark
# tags each client's keys for the node it talks to, so each pipeline goes to one primary: ours does
# the same with 48 keys over the primaries, one per caller (`--spread caller`). Then, for context,
# pipelines that mix keys of every primary and are split per primary (`--spread command`), as the
# node's own batches are.
rb_cluster() { # EXTRA...: GET req/s
    taskset -c 1 redis-benchmark --cluster -h 127.0.0.1 -p "${cluster_ports[0]}" -t get -r 1000 --csv "$@" \
        | awk -F'"' '$2 == "GET" {print int($4)}'
}
ours_cluster() { taskset -c 1 "$bin/redis-client-bench" --url "$cluster_url" --keys 48 "$@" | awk '{print $2}'; }
client_rounds=$rounds
[ "$client_rounds" -gt 3 ] && client_rounds=3
rp=(); op=(); rn=(); on=(); mixed=()
for _ in $(seq 1 "$client_rounds"); do
    rp+=("$(rb_cluster -c 50 -P 16 -n "$client_n")")
    op+=("$(ours_cluster --mode pipelined --spread caller --clients 50 --pipeline 16 --requests "$client_n")")
    mixed+=("$(ours_cluster --mode pipelined --spread command --clients 50 --pipeline 16 --requests "$client_n")")
    rn+=("$(rb_cluster -c 50 -n $((client_n / 5)))")
    on+=("$(ours_cluster --mode unpipelined --spread caller --clients 50 --requests $((client_n / 5)))")
done
{
    echo "client pipelined $(printf '%s\n' "${rp[@]}" | median) $(printf '%s\n' "${op[@]}" | median)"
    echo "client unpipelined $(printf '%s\n' "${rn[@]}" | median) $(printf '%s\n' "${on[@]}" | median)"
    echo "client mixed $(printf '%s\n' "${rp[@]}" | median) $(printf '%s\n' "${mixed[@]}" | median)"
} >> "$results"

# Usage flush cost per key: the same batch shape on each Redis (every key counted once per batch).
for name in standalone cluster; do
    url_var="${name}_url"
    head -"$flush_keys" "$work/miss-$name.txt" > "$work/flush-$name.txt"
    echo "flush $name $(taskset -c 1 "$bin/usage-flush-bench" --url "${!url_var}" --namespace "$namespace" \
        --keys "$work/flush-$name.txt" --batches "$flush_batches" --wait-replicas 1 | cut -d' ' -f2-)" >> "$results"
done

# Invalidation channel: PUBLISH reaches every node of the cluster over the cluster bus; SPUBLISH
# stays in the channel's shard. Latency from publish to delivery, one message at a time, and
# publish throughput with redis-benchmark (50 clients), on the primaries.
taskset -c 1 python3 - "$messages" "${primaries[@]}" >> "$results" <<'PY'
import socket, sys, time
count, primaries = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
channel = "{cluster-bench:events}:invalidate"

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def command(*parts):
    return ("*%d\r\n" % len(parts) + "".join("$%d\r\n%s\r\n" % (len(p), p) for p in parts)).encode()

def read_until(s, needle, buffer):
    while needle not in buffer[0]:
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        buffer[0] += data
    head, _, rest = buffer[0].partition(needle)
    buffer[0] = rest
    return head

def owner():
    for port in primaries:
        s = connect(port)
        s.sendall(command("SPUBLISH", channel, "probe"))
        reply = s.recv(200)
        s.close()
        if reply.startswith(b":"):
            return port
    raise SystemExit("no primary owns the channel's slot")

def latency(subscribe, publish, sub_port, pub_port):
    sub, pub = connect(sub_port), connect(pub_port)
    buffer = [b""]
    sub.sendall(command(subscribe, channel))
    read_until(sub, b":1\r\n", buffer)
    samples = []
    pub_buffer = [b""]
    for index in range(count):
        marker = "m%06d" % index
        started = time.perf_counter()
        pub.sendall(command(publish, channel, marker))
        read_until(sub, marker.encode(), buffer)
        samples.append((time.perf_counter() - started) * 1000)
        read_until(pub, b"\r\n", pub_buffer)
    sub.close(); pub.close()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]

shard = owner()
other = next(p for p in primaries if p != shard)
c50, c99 = latency("SUBSCRIBE", "PUBLISH", other, shard)
s50, s99 = latency("SSUBSCRIBE", "SPUBLISH", shard, shard)
print(f"pubsub-latency {c50:.3f} {c99:.3f} {s50:.3f} {s99:.3f} {shard}")
PY
shard=$(awk '$1 == "pubsub-latency" {print $6}' "$results")
channel="{cluster-bench:events}:invalidate"
publish_rps() { taskset -c 1 redis-benchmark -p "$shard" -c 50 -n $((client_n / 5)) --csv "$1" "$channel" kg | awk -F'"' 'NR == 2 {print int($4)}'; }
echo "pubsub-throughput $(publish_rps PUBLISH) $(publish_rps SPUBLISH)" >> "$results"

python3 - "$results" "$quick" "$rounds" "$seconds" "$miss_keys" "$flush_keys" "$flush_batches" "$messages" <<'PY' > "$work/cluster.md"
import sys
rows = [line.split() for line in open(sys.argv[1])]
quick, rounds, seconds, miss_keys, flush_keys, flush_batches, messages = sys.argv[2] == "true", *sys.argv[3:]
rps = {(r[0], r[1]): int(r[2]) for r in rows if r[0] in ("hit", "miss", "lookups")}
client = {r[1]: (int(r[2]), int(r[3])) for r in rows if r[0] == "client"}
flush = {r[1]: (float(r[2]), int(r[3]), float(r[4])) for r in rows if r[0] == "flush"}
latency = next(r for r in rows if r[0] == "pubsub-latency")
throughput = next(r for r in rows if r[0] == "pubsub-throughput")
print("# Keygate on Redis Cluster (issue 15)\n")
print(f"`benchmarks/cluster.sh{' --quick' if quick else ''}`: one node on one standalone Redis and one on a Redis Cluster of")
print("three primaries and three replicas; the standalone Redis has a replica too and both nodes WAIT for one replica")
print("after each change (usage batches included). All servers and both nodes")
print(f"(one event loop each) on core 0, load generators on core 1; {rounds} interleaved round(s) of {seconds} s per path,")
print(f"medians. Caches of 16 entries, so each miss-path request is a Redis lookup ({miss_keys} keys in each Redis).\n")
print("| path | standalone req/s | Cluster req/s | Cluster / standalone | goal |")
print("|---|---|---|---|---|")
goals = {"hit": "within 5% (>= 0.95)", "miss": ">= 1.0", "lookups": "(context)"}
labels = {"hit": "hit", "miss": "miss", "lookups": "miss, usage flush put off (the lookups alone)"}
for path in ("hit", "miss", "lookups"):
    a, b = rps[(path, "standalone")], rps[(path, "cluster")]
    print(f"| {labels[path]} | {a:,} | {b:,} | {b / a:.3f} | {goals[path]} |")
print("\nKeygateRedis in cluster mode against `redis-benchmark --cluster -t get -r 1000` on the same cluster (50 clients):\n")
print("| scenario | redis-benchmark req/s | KeygateRedis req/s | ratio | goal |")
print("|---|---|---|---|---|")
for mode, label, goal in (("pipelined", "pipeline 16, each caller on one primary", ">= 0.8"),
                          ("unpipelined", "unpipelined", ""),
                          ("mixed", "pipeline 16 mixing every primary's keys (split per primary)", "(context)")):
    a, b = client[mode]
    print(f"| {label} | {a:,} | {b:,} | {b / a:.2f} | {goal} |")
print(f"\nUsage flush (`KeyStore.applyUsage`, the flusher's write; {flush_batches} batches of {flush_keys} keys, each key once per batch):\n")
print("| Redis | microseconds per key | keys per second | batch ms (median) |")
print("|---|---|---|---|")
for name in ("standalone", "cluster"):
    per_key, keys_per_second, batch = flush[name]
    print(f"| {name} | {per_key:.2f} | {keys_per_second:,} | {batch:.1f} |")
ratio = flush["cluster"][0] / flush["standalone"][0]
print(f"\nOn the cluster a batch is one script per slot its keys fall in (about one per key at this size) instead of one")
print(f"for the whole batch: {ratio:.1f}x the cost per key, spread over three primaries.\n")
print(f"Invalidation channel ({messages} messages one at a time; throughput with `redis-benchmark -c 50` on the shard's primary):\n")
print("| channel | p50 ms | p99 ms | publishes/s |")
print("|---|---|---|---|")
print(f"| classic PUBLISH, subscriber on another primary | {float(latency[1]):.3f} | {float(latency[2]):.3f} | {int(throughput[1]):,} |")
print(f"| sharded SPUBLISH, subscriber on the shard | {float(latency[3]):.3f} | {float(latency[4]):.3f} | {int(throughput[2]):,} |")
PY
cat "$work/cluster.md"
if ! $quick; then cp "$work/cluster.md" results/cluster.md; fi

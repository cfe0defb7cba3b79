#!/usr/bin/env bash
# Issue 14's figures: Keygate through a Sentinel-discovered master against the same node on the plain
# master URL, in one run, on the same Redis:
#   - hit and miss req/s (wrk, interleaved rounds, medians): the Sentinel node should be within 5%;
#   - revoke latency through the admin API with WAIT 1 (Sentinel default) and without (p50/p99);
#   - failover recovery: SIGKILL of the master, promotion seen, first 200 on the Sentinel node.
# Writes benchmarks/results/sentinel.md (or, with --quick, prints it only).
#
#   benchmarks/sentinel.sh [--quick]      # about 2 minutes; --quick about 40 s
# KEYGATE_BIN=/path/to/keygate uses that binary (else a release build).
set -euo pipefail
cd "$(dirname "$0")"
bench_dir=$(pwd)
# shellcheck source=../scripts/lib/packages.sh
source ../scripts/lib/packages.sh
ensure_packages libhiredis-dev libssl-dev pkg-config redis-server redis-tools wrk curl python3

quick=false
[ "${1:-}" = --quick ] && quick=true
if $quick; then seconds=2; rounds=1; miss_keys=3000; revokes=40; else seconds=4; rounds=5; miss_keys=30000; revokes=300; fi

# shellcheck source=scripts/node-pair.sh
source scripts/node-pair.sh
bench_setup sentinel keygate-bench-keys

master_port=$(free_port); replica_port=$(free_port)
start_redis "$master_port"
master_pid=${pids[-1]}
start_redis "$replica_port" --replicaof 127.0.0.1 "$master_port"
sentinels=()
for _ in 1 2 3; do
    port=$(free_port)
    sentinels+=("$port")
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor bench 127.0.0.1 %s 2\nsentinel down-after-milliseconds bench 1000\nsentinel failover-timeout bench 10000\n' \
        "$port" "$work" "$master_port" > "$work/sentinel-$port.conf"
    taskset -c 0 redis-server "$work/sentinel-$port.conf" --sentinel --logfile "$work/sentinel-$port.log" &
    pids+=($!)
done
for _ in $(seq 1 400); do # every Sentinel sees the replica and the two others (at most 20 s)
    ok=0
    for port in "${sentinels[@]}"; do
        redis-cli -p "$port" sentinel master bench 2>/dev/null | paste -sd' ' - | grep -Eq 'num-slaves 1 .*num-other-sentinels 2' && ok=$((ok + 1))
    done
    [ "$ok" = 3 ] && break
    sleep 0.05
done
master_url="redis://127.0.0.1:$master_port"
sentinel_url="redis-sentinel://$(printf '127.0.0.1:%s,' "${sentinels[@]}" | sed 's/,$//')#bench"
namespace=sentinel-bench

# shellcheck disable=SC2034 # read through ${!port_var}
port_standalone=""; control_standalone=""; port_sentinel=""; control_sentinel=""

"$bin/keygate-bench-keys" --url "$master_url" --namespace "$namespace" --count 1 --out "$work/hot.txt" >/dev/null
"$bin/keygate-bench-keys" --url "$master_url" --namespace "$namespace" --count "$miss_keys" --out "$work/miss.txt" >/dev/null
hot=$(head -1 "$work/hot.txt")
export KEYGATE_REDIS_URL=$master_url KEYGATE_NAMESPACE=$namespace
admin=$("$keygate" keys create --user ops --scope keygate:admin --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')

# Small caches: every request of the miss run is a Redis lookup.
start_node standalone "$master_url" --cache-capacity 16 --negative-cache-capacity 16
start_node sentinel "$sentinel_url" --cache-capacity 16 --negative-cache-capacity 16
results="$work/results.txt"
: > "$results"
for scenario in hit miss; do
    for round in $(seq 1 "$rounds"); do
        for name in standalone sentinel; do
            port_var="port_$name"
            if [ "$scenario" = hit ]; then
                taskset -c 1 wrk -t1 -c64 -d"${seconds}s" -H "X-API-Key: $hot" "http://127.0.0.1:${!port_var}/auth" > "$work/$scenario-$name-$round"
            else
                KEYS_FILE="$work/miss.txt" KEYS_START=$((round * 1000)) taskset -c 1 wrk -t1 -c64 -d"${seconds}s" \
                    -s "$bench_dir/scripts/keys.lua" "http://127.0.0.1:${!port_var}/auth" > "$work/$scenario-$name-$round"
            fi
            if grep -q "Non-2xx" "$work/$scenario-$name-$round"; then echo "error: non-2xx answers in $scenario/$name" >&2; exit 1; fi
        done
    done
    for name in standalone sentinel; do
        value=$(for round in $(seq 1 "$rounds"); do rps "$work/$scenario-$name-$round"; done | median)
        echo "$scenario $name $value" >> "$results"
    done
done

# Revoke latency: the standalone node's admin API (no WAIT) and the Sentinel node's (WAIT 1).
taskset -c 1 python3 - "$control_standalone" "$control_sentinel" "$admin" "$revokes" >> "$results" <<'PY'
import http.client, json, sys, time
standalone, sentinel, admin, count = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def call(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request(method, path, body=json.dumps(body) if body else None,
                       headers={"X-API-Key": admin, "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data
for name, port in (("standalone", standalone), ("sentinel", sentinel)):
    samples = []
    for index in range(count):
        status, data = call(port, "POST", "/v1/keys", {"user": f"revoke-bench-{index % 50}"})
        assert status == 201, (status, data)
        key_id = json.loads(data)["id"]
        start = time.perf_counter()
        status, data = call(port, "POST", f"/v1/keys/{key_id}/revoke")
        samples.append((time.perf_counter() - start) * 1000)
        assert status == 200, (status, data)
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"revoke {name} {p50:.2f} {p99:.2f}")
PY

# Failover: SIGKILL the master; promotion as seen from the Sentinels; first 200 on the Sentinel node.
taskset -c 1 python3 - "$port_sentinel" "$hot" "$replica_port" "${sentinels[0]}" "$master_pid" >> "$results" <<'PY'
import http.client, os, signal, socket, sys, time
port, key, replica_port, sentinel_port, master_pid = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def status():
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/auth", headers={"X-API-Key": key})
        value = connection.getresponse().status
        connection.close()
        return value
    except OSError:
        return 0
def sentinel_master_port():
    with socket.create_connection(("127.0.0.1", sentinel_port), timeout=1) as s:
        s.sendall(b"SENTINEL get-master-addr-by-name bench\r\n")
        return s.recv(200).split(b"\r\n")[4].decode()
os.kill(master_pid, signal.SIGKILL)
killed = time.monotonic()
promoted = first_ok = None
deadline = killed + 30
while time.monotonic() < deadline and first_ok is None:
    if promoted is None and sentinel_master_port() == replica_port:
        promoted = time.monotonic()
    if promoted is not None and status() == 200:
        first_ok = time.monotonic()
    time.sleep(0.005)
assert promoted and first_ok, "no promotion or no 200 within 30 s"
print(f"failover {promoted - killed:.3f} {first_ok - promoted:.3f}")
PY

python3 - "$results" "$quick" "$rounds" "$seconds" <<'PY' > "$work/sentinel.md"
import sys
lines = [line.split() for line in open(sys.argv[1])]
quick, rounds, seconds = sys.argv[2] == "true", sys.argv[3], sys.argv[4]
rps = {(l[0], l[1]): int(l[2]) for l in lines if l[0] in ("hit", "miss")}
revoke = {l[1]: (float(l[2]), float(l[3])) for l in lines if l[0] == "revoke"}
failover = next(l for l in lines if l[0] == "failover")
print("# Keygate through Sentinel (issue 14)\n")
print(f"`benchmarks/sentinel.sh{' --quick' if quick else ''}`: one node on the master's own URL and one on the")
print(f"`redis-sentinel://` URL, the same Redis, one event loop each on core 0, wrk on core 1; {rounds} interleaved")
print(f"round(s) of {seconds} s per path, medians. Caches of 16 entries, so the miss path is a Redis lookup per request.")
print("Both nodes, the master, its replica and the Sentinels share core 0, and usage batches replicate to the replica,")
print("so the absolute figures sit below run.sh's (one Redis, no replica): compare the ratio.\n")
print("| path | standalone req/s | Sentinel req/s | Sentinel / standalone | goal |")
print("|---|---|---|---|---|")
for path in ("hit", "miss"):
    a, b = rps[(path, "standalone")], rps[(path, "sentinel")]
    print(f"| {path} | {a:,} | {b:,} | {b / a:.3f} | within 5% (>= 0.95) |")
print("\n| revoke through the admin API | p50 ms | p99 ms |")
print("|---|---|---|")
for name, label in (("standalone", "no WAIT (standalone default)"), ("sentinel", "WAIT 1 (Sentinel default)")):
    p50, p99 = revoke[name]
    print(f"| {label} | {p50:.2f} | {p99:.2f} |")
print(f"\nFailover: SIGKILL of the master to promotion seen by polling a Sentinel {float(failover[1]):.2f} s")
print(f"(down-after-milliseconds 1000); promotion seen to the Sentinel node's first 200 {float(failover[2]) * 1000:.0f} ms.")
PY
cat "$work/sentinel.md"
if ! $quick; then cp "$work/sentinel.md" results/sentinel.md; fi

#!/usr/bin/env bash
# Stops what up.sh started, by the pids it recorded, in reverse order: nginx, then the nodes (SIGTERM:
# they drain and flush their usage counts), then Redis (SHUTDOWN writes the append-only file).
# Data, logs and keys stay in the run folder; delete it to start from scratch.
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "$0")/common.sh"

# stop NAME SIGNAL: signals the recorded pid and waits up to 15 s for it to exit.
stop() {
    local pid
    if ! alive "$1"; then rm -f "$run_dir/$1.pid"; return 0; fi
    pid=$(cat "$run_dir/$1.pid")
    kill "-$2" "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "warning: $1 (pid $pid) did not stop within 15 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$run_dir/$1.pid"
    echo "stopped $1"
}

stop prometheus TERM
stop nginx QUIT
for i in "${nodes[@]}"; do stop "node$i" TERM; done
# Sentinels first, so stopping the master does not start a failover.
for port in "${sentinel_ports[@]}"; do stop "sentinel-$port" TERM; done
for port in "${cluster_ports[@]}"; do
    if alive "redis-$port"; then redis-cli -p "$port" shutdown >/dev/null 2>&1 || true; fi
    stop "redis-$port" TERM
done
for name in redis-replica redis; do
    port=$redis_port
    [ "$name" = redis-replica ] && port=$replica_port
    if alive "$name"; then redis-cli -p "$port" shutdown >/dev/null 2>&1 || true; fi
    stop "$name" TERM
done

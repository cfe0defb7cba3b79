#!/usr/bin/env bash
# Shows what up.sh started and whether it answers. Exit code 0 when everything runs.
set -uo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "$0")/common.sh"

status=0
row() { printf '%-15s %-8s %-7s %s\n' "$@"; }
check() { # NAME URL-or-empty ADDRESS
    local pid="-" state="stopped" health=""
    if alive "$1"; then
        pid=$(cat "$run_dir/$1.pid"); state="running"
        if [ -n "$2" ]; then
            if curl -sf -o /dev/null "$2"; then health="ok"; else health="NOT READY"; status=1; fi
        fi
    else
        [ "$1" = prometheus ] || status=1
    fi
    row "$1" "$pid" "$state" "$3 $health"
}
row NAME PID STATE ADDRESS
# redis_state PORT: "ok <role>" when it answers.
redis_state() { redis-cli -p "$1" role 2>/dev/null | head -1 | sed 's/^/ok /'; }
if [ "$(mode)" = cluster ]; then
    for port in "${cluster_ports[@]}"; do
        check "redis-$port" "" "127.0.0.1:$port $(redis_state "$port")"
    done
    state=$(redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p')
    row cluster - "${state:-down}" "slots assigned $(redis-cli -p "${cluster_ports[0]}" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_slots_ok://p')/16384"
    [ "$state" = ok ] || status=1
else
    check redis "" "127.0.0.1:$redis_port $(redis_state "$redis_port")"
fi
if [ "$(mode)" = ha ]; then
    check redis-replica "" "127.0.0.1:$replica_port $(redis_state "$replica_port")"
    for port in "${sentinel_ports[@]}"; do
        master=$(redis-cli -p "$port" sentinel get-master-addr-by-name "$master_name" 2>/dev/null | paste -sd: -)
        check "sentinel-$port" "" "127.0.0.1:$port ${master:+ok, master $master}"
    done
fi
for i in "${nodes[@]}"; do
    check "node$i" "http://127.0.0.1:$(control_port "$i")/health/ready" "127.0.0.1:$(data_port "$i") (control $(control_port "$i"))"
done
check nginx "http://127.0.0.1:$demo_port/" "127.0.0.1:$lb_port"
check prometheus "http://127.0.0.1:$prometheus_port/-/ready" "127.0.0.1:$prometheus_port"
exit $status

#!/usr/bin/env bash
# Shows what up.sh started and whether it answers. Exit code 0 when everything runs.
set -uo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "$0")/common.sh"

status=0
row() { printf '%-11s %-8s %-7s %s\n' "$@"; }
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
if alive redis && redis-cli -p "$redis_port" ping >/dev/null 2>&1; then redis_health=ok; else redis_health=""; fi
check redis "" "127.0.0.1:$redis_port $redis_health"
for i in "${nodes[@]}"; do
    check "node$i" "http://127.0.0.1:$(control_port "$i")/health/ready" "127.0.0.1:$(data_port "$i") (control $(control_port "$i"))"
done
check nginx "http://127.0.0.1:$demo_port/" "127.0.0.1:$lb_port"
check prometheus "http://127.0.0.1:$prometheus_port/-/ready" "127.0.0.1:$prometheus_port"
exit $status

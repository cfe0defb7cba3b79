# shellcheck shell=bash disable=SC2034
# Settings shared by up.sh, down.sh and status.sh. Every port can be moved with an environment
# variable, and KEYGATE_LOCAL_DIR moves the state (data, logs, pids, keys) elsewhere.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
run_dir=${KEYGATE_LOCAL_DIR:-$repo/deploy/local/run}
lb_port=${KEYGATE_LOCAL_LB_PORT:-8000}
redis_port=${KEYGATE_LOCAL_REDIS_PORT:-6380}
demo_port=${KEYGATE_LOCAL_DEMO_PORT:-8090}
prometheus_port=${KEYGATE_LOCAL_PROMETHEUS_PORT:-9090}
# Node i (1-3) listens on data port first_port + 2(i-1) and control port one above it.
first_port=${KEYGATE_LOCAL_FIRST_PORT:-8080}
nodes=(1 2 3)
data_port() { echo $((first_port + 2 * ($1 - 1))); }
control_port() { echo $((first_port + 2 * ($1 - 1) + 1)); }
redis_url="redis://127.0.0.1:$redis_port"
# With --ha: a replica on redis_port + 1 and three Sentinels; nodes find the master through them.
replica_port=${KEYGATE_LOCAL_REPLICA_PORT:-$((redis_port + 1))}
read -r -a sentinel_ports <<< "${KEYGATE_LOCAL_SENTINEL_PORTS:-26380 26381 26382}"
master_name=keygate
sentinel_url="redis-sentinel://$(printf '127.0.0.1:%s,' "${sentinel_ports[@]}" | sed 's/,$//')#$master_name"
# With --redis-cluster: six servers (three primaries, three replicas) on these ports; nodes get a
# redis-cluster:// URL naming three of them as seeds.
read -r -a cluster_ports <<< "${KEYGATE_LOCAL_CLUSTER_PORTS:-6390 6391 6392 6393 6394 6395}"
cluster_url="redis-cluster://$(printf '127.0.0.1:%s,' "${cluster_ports[@]:0:3}" | sed 's/,$//')"
# The mode up.sh started (single, ha or cluster), so status.sh and down.sh know what runs.
mode() { cat "$run_dir/mode" 2>/dev/null || echo single; }

# alive NAME: true when the pid recorded for NAME runs.
alive() {
    local pid
    [ -f "$run_dir/$1.pid" ] || return 1
    pid=$(cat "$run_dir/$1.pid")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# wait_for URL [tries]: polls every 0.1 s until URL answers 2xx.
wait_for() {
    local tries=${2:-300}
    for _ in $(seq 1 "$tries"); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    return 1
}

# shellcheck shell=bash
# Shared by the live checks (check-control-plane.sh, check-console.sh): one real node on free
# loopback ports, in a work folder removed on exit. Source after packages.sh.

# start_check_node BIN REDIS_URL NAME [SERVE_FLAGS...]: starts `BIN serve` on Redis REDIS_URL in a fresh namespace
# (NAME-<pid>-<random>, exported as KEYGATE_NAMESPACE with KEYGATE_REDIS_URL, so the CLI uses the
# same) and waits until it is ready. Sets workdir, node_pid, data_port, control_port; stops the node
# and removes workdir on exit (a check that stops the node itself sets node_pid="").
start_check_node() {
    local bin=$1 redis_url=$2 name=$3
    shift 3
    workdir=$(mktemp -d -t "keygate-$name.XXXXXX")
    node_pid=""
    trap 'if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null; fi; rm -rf "$workdir"' EXIT INT TERM
    data_port=$(free_port) control_port=$(free_port)
    while [ "$control_port" = "$data_port" ]; do control_port=$(free_port); done
    export KEYGATE_REDIS_URL=$redis_url KEYGATE_NAMESPACE="$name-$$-$RANDOM"
    "$bin" serve --data-port "$data_port" --control-port "$control_port" --usage-spill-path "$workdir/spill.jsonl" "$@" \
        > "$workdir/node.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$control_port/health/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "error: the node did not become ready; log:" >&2
    cat "$workdir/node.log" >&2
    exit 1
}

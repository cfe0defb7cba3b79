#!/usr/bin/env bash
# Runs a local Keygate cluster: redis-server (AOF on, its own data folder), three Keygate nodes and
# nginx on 127.0.0.1:8000 as the load balancer (auth_request to the three nodes, then a demo API that
# echoes the identity it received). Creates an admin key and a demo key and prints how to use them.
#
#   deploy/local/up.sh [--ha | --redis-cluster] [--gateway] [--with-prometheus]
#
# --ha: Redis as operators run it for failover: a master, a replica and three Sentinels (quorum 2),
# AOF on both servers; the nodes get a redis-sentinel:// URL, follow a failover by themselves and
# wait for the replica to confirm every change (WAIT 1). status.sh shows which server is master.
#
# --redis-cluster: Redis Cluster, three primaries and three replicas (AOF on each), slots spread by
# `redis-cli --cluster create`; the nodes get a redis-cluster:// URL with three seeds, follow the slot
# map (redirects, failovers, resharding) and WAIT 1 on each change. status.sh shows each server's role.
# After a primary dies, its replica takes over; run up.sh again to bring the dead one back as a replica.
#
# --gateway: the nodes are the proxy (`keygate serve --upstream <demo API>`, with the route
# /orders/ needing orders:read), and nginx only balances over them (proxy_pass, no auth_request).
#
# Safe to run twice: what already runs is left alone, and the keys are kept. Stop with down.sh.
# KEYGATE_BIN=/path/to/keygate skips the release build (the tests use their debug build).
set -euo pipefail
# shellcheck source=deploy/local/common.sh
source "$(dirname "$0")/common.sh"
# shellcheck source=scripts/lib/packages.sh
source "$repo/scripts/lib/packages.sh"

with_prometheus=false
ha=false
cluster=false
gateway=false
for arg in "$@"; do
    case $arg in
        --with-prometheus) with_prometheus=true ;;
        --ha) ha=true ;;
        --redis-cluster) cluster=true ;;
        --gateway) gateway=true ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "error: unknown option $arg (see --help)" >&2; exit 64 ;;
    esac
done
if $ha && $cluster; then echo "error: --ha and --redis-cluster exclude each other" >&2; exit 64; fi

packages=(libhiredis-dev libssl-dev pkg-config redis-server redis-tools nginx-light curl python3)
$with_prometheus && packages+=(prometheus)
ensure_packages "${packages[@]}"

bin=${KEYGATE_BIN:-}
if [ -z "$bin" ]; then
    command -v swift >/dev/null || { echo "error: swift is not on PATH (Swift 6.2 or newer is required)" >&2; exit 1; }
    echo "building keygate (release; the first build takes several minutes)..."
    bin=$("$repo/scripts/build-release.sh")
fi
mkdir -p "$run_dir/redis" "$run_dir/nginx-tmp" "$run_dir/nginx"
chmod 700 "$run_dir"
wanted_mode=single
$ha && wanted_mode=ha
$cluster && wanted_mode=cluster
if [ -f "$run_dir/mode" ] && [ "$(mode)" != "$wanted_mode" ] && { alive redis || alive "redis-${cluster_ports[0]}"; }; then
    echo "error: a $(mode) cluster runs in $run_dir; stop it with deploy/local/down.sh first" >&2
    exit 1
fi
echo "$wanted_mode" > "$run_dir/mode"
# Gateway mode or forward auth: the nodes' flags differ, so a running cluster is not switched over.
wanted_front=forward-auth
$gateway && wanted_front=gateway
if [ -f "$run_dir/front" ] && [ "$(cat "$run_dir/front")" != "$wanted_front" ] && alive node1; then
    echo "error: the nodes run in $(cat "$run_dir/front") mode; stop them with deploy/local/down.sh first" >&2
    exit 1
fi
echo "$wanted_front" > "$run_dir/front"
gateway_flags=()
$gateway && gateway_flags=(--upstream "http://127.0.0.1:$demo_port" --gateway-route "/orders/=orders:read")

# start_redis NAME PORT [replicaof-port | cluster]: loopback only, append-only file on, so keys and
# usage survive a restart. From a config file, which Sentinel rewrites when it promotes or demotes the
# server; a cluster member keeps its own view of the cluster in nodes.conf next to its data.
start_redis() {
    local name=$1 port=$2 conf="$run_dir/$1.conf"
    if alive "$name"; then
        echo "$name already running (pid $(cat "$run_dir/$name.pid"))"
        return
    fi
    mkdir -p "$run_dir/$name"
    if [ ! -f "$conf" ]; then
        printf 'port %s\nbind 127.0.0.1\ndir %s\nappendonly yes\nappendfsync everysec\nsave ""\nmaxmemory-policy noeviction\nrepl-diskless-sync-delay 0\n' \
            "$port" "$run_dir/$name" > "$conf"
        case ${3:-} in
            "") ;;
            cluster) printf 'cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n' >> "$conf" ;;
            *) printf 'replicaof 127.0.0.1 %s\n' "$3" >> "$conf" ;;
        esac
    fi
    redis-server "$conf" --daemonize yes --pidfile "$run_dir/$name.pid" --logfile "$run_dir/$name.log"
    for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
    redis-cli -p "$port" ping >/dev/null || { echo "error: redis-server did not start; see $run_dir/$name.log" >&2; exit 1; }
    echo "$name on 127.0.0.1:$port (data in $run_dir/$name)"
}
# wait_for_replicas COUNT PORT...: until COUNT of these servers are replicas in sync with their
# master (at most 30 s): the first change WAITs for one, and a replica that is still being set up
# (a new cluster's replicas start as masters) or loading its first copy confirms nothing.
wait_for_replicas() {
    local wanted=$1 port synced info
    shift
    for _ in $(seq 1 300); do
        synced=0
        for port in "$@"; do
            info=$(redis-cli -p "$port" info replication 2>/dev/null | tr -d '\r')
            [[ $info == *role:slave* && $info == *master_link_status:up* ]] && synced=$((synced + 1))
        done
        [ "$synced" -ge "$wanted" ] && return 0
        sleep 0.1
    done
    echo "warning: $synced of $wanted replicas in sync with their master after 30 s; changes may answer not-replicated until they are" >&2
}

if $cluster; then
    for port in "${cluster_ports[@]}"; do start_redis "redis-$port" "$port" cluster; done
    # Created once: a cluster that already formed (a second up.sh, or a restart from its nodes.conf
    # files) is left as it is.
    if redis-cli -p "${cluster_ports[0]}" cluster info | grep -q '^cluster_known_nodes:1\b'; then
        members=()
        for port in "${cluster_ports[@]}"; do members+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${members[@]}" --cluster-replicas 1 --cluster-yes \
            > "$run_dir/cluster-create.log" 2>&1 \
            || { echo "error: redis-cli --cluster create failed; see $run_dir/cluster-create.log" >&2; exit 1; }
    fi
    for _ in $(seq 1 200); do
        ok=0
        for port in "${cluster_ports[@]}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        done
        [ "$ok" -eq "${#cluster_ports[@]}" ] && break
        sleep 0.1
    done
    [ "$ok" -eq "${#cluster_ports[@]}" ] || { echo "error: the Redis Cluster did not reach cluster_state:ok within 20 s" >&2; exit 1; }
    wait_for_replicas $((${#cluster_ports[@]} / 2)) "${cluster_ports[@]}"
    echo "Redis Cluster ok: $(redis-cli -p "${cluster_ports[0]}" cluster nodes | grep -c master) primaries, $(redis-cli -p "${cluster_ports[0]}" cluster nodes | grep -c slave) replicas"
    export KEYGATE_REDIS_URL=$cluster_url
else
    start_redis redis "$redis_port"
    export KEYGATE_REDIS_URL=$redis_url
fi

if $ha; then
    start_redis redis-replica "$replica_port" "$redis_port"
    wait_for_replicas 1 "$replica_port"
    for port in "${sentinel_ports[@]}"; do
        name="sentinel-$port"
        if alive "$name"; then echo "$name already running (pid $(cat "$run_dir/$name.pid"))"; continue; fi
        # Sentinel rewrites its file with what it learns (replicas, other Sentinels, failovers): kept.
        if [ ! -f "$run_dir/$name.conf" ]; then
            printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %s 2\nsentinel down-after-milliseconds %s 2000\nsentinel failover-timeout %s 10000\n' \
                "$port" "$run_dir" "$master_name" "$redis_port" "$master_name" "$master_name" > "$run_dir/$name.conf"
        fi
        redis-server "$run_dir/$name.conf" --sentinel --daemonize yes --pidfile "$run_dir/$name.pid" --logfile "$run_dir/$name.log"
    done
    for _ in $(seq 1 100); do
        [ -n "$(redis-cli -p "${sentinel_ports[0]}" sentinel get-master-addr-by-name "$master_name" 2>/dev/null)" ] && break
        sleep 0.1
    done
    echo "sentinels on ${sentinel_ports[*]} watch master '$master_name' (now $(redis-cli -p "${sentinel_ports[0]}" sentinel get-master-addr-by-name "$master_name" | paste -sd: -))"
    export KEYGATE_REDIS_URL=$sentinel_url
fi
for i in "${nodes[@]}"; do
    if alive "node$i"; then
        echo "node $i already running (pid $(cat "$run_dir/node$i.pid"))"
        continue
    fi
    # The failure limiter counts per client: nginx (loopback) passes the client's address on.
    KEYGATE_THREADS=${KEYGATE_THREADS:-1} nohup "$bin" serve --data-port "$(data_port "$i")" --control-port "$(control_port "$i")" \
        --usage-spill-path "$run_dir/node$i-usage-spill.jsonl" --failure-limit 100 --trusted-proxy 127.0.0.1 \
        "${gateway_flags[@]}" >> "$run_dir/node$i.log" 2>&1 &
    echo $! > "$run_dir/node$i.pid"
done
for i in "${nodes[@]}"; do
    wait_for "http://127.0.0.1:$(control_port "$i")/health/ready" \
        || { echo "error: node $i is not ready; see $run_dir/node$i.log" >&2; exit 1; }
    echo "node $i: data plane 127.0.0.1:$(data_port "$i"), control plane 127.0.0.1:$(control_port "$i")"
done

# nginx: the repo's configuration with this cluster's addresses.
servers=""
for i in "${nodes[@]}"; do servers+="        server 127.0.0.1:$(data_port "$i") max_fails=1 fail_timeout=5s;"$'\n'; done
nginx_conf=keygate.conf
$gateway && nginx_conf=keygate-gateway.conf
for file in keygate.conf keygate-subrequest.conf keygate-identity.conf keygate-gateway.conf; do
    sed -e "s|@RUN_DIR@|$run_dir|g" -e "s|@CONF_DIR@|$run_dir/nginx|g" -e "s|@LB_PORT@|$lb_port|g" \
        -e "s|@DEMO_PORT@|$demo_port|g" "$repo/deploy/nginx/$file" \
        | awk -v servers="${servers%$'\n'}" '{ if ($0 == "@KEYGATE_SERVERS@") print servers; else print }' > "$run_dir/nginx/$file"
done
nginx -t -q -c "$run_dir/nginx/$nginx_conf" -p "$run_dir" -e "$run_dir/nginx-error.log"
if alive nginx; then
    nginx -s reload -c "$run_dir/nginx/$nginx_conf" -p "$run_dir" -e "$run_dir/nginx-error.log"
    echo "nginx already running: configuration reloaded"
else
    nginx -c "$run_dir/nginx/$nginx_conf" -p "$run_dir" -e "$run_dir/nginx-error.log"
fi
wait_for "http://127.0.0.1:$demo_port/" || { echo "error: nginx did not start; see $run_dir/nginx-error.log" >&2; exit 1; }
if $gateway; then
    echo "nginx load balancer on 127.0.0.1:$lb_port, proxying to the nodes in gateway mode (demo API on 127.0.0.1:$demo_port)"
else
    echo "nginx load balancer on 127.0.0.1:$lb_port (demo API on 127.0.0.1:$demo_port)"
fi

if $with_prometheus; then
    targets=""
    for i in "${nodes[@]}"; do targets+="'127.0.0.1:$(control_port "$i")', "; done
    sed -e "s|\['127.0.0.1:8081', '127.0.0.1:8083', '127.0.0.1:8085'\]|[${targets%, }]|" \
        "$repo/deploy/prometheus/prometheus.yml" > "$run_dir/prometheus.yml"
    cp "$repo/deploy/prometheus/alerts.yml" "$run_dir/alerts.yml"
    if alive prometheus; then
        kill -HUP "$(cat "$run_dir/prometheus.pid")"
        echo "prometheus already running: configuration reloaded"
    else
        nohup prometheus --config.file="$run_dir/prometheus.yml" --storage.tsdb.path="$run_dir/prometheus" \
            --web.listen-address="127.0.0.1:$prometheus_port" >> "$run_dir/prometheus.log" 2>&1 &
        echo $! > "$run_dir/prometheus.pid"
        wait_for "http://127.0.0.1:$prometheus_port/-/ready" || { echo "error: prometheus did not start; see $run_dir/prometheus.log" >&2; exit 1; }
        echo "prometheus on http://127.0.0.1:$prometheus_port (scraping the three nodes every 5 s)"
    fi
fi

# Keys: created once, kept in $run_dir/keys.env (mode 600). Keygate itself stores only hashes.
key_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'; }
if [ -f "$run_dir/keys.env" ]; then
    # shellcheck source=/dev/null
    source "$run_dir/keys.env"
fi
if [ -z "${ADMIN_KEY:-}" ] || [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $ADMIN_KEY" \
        "http://127.0.0.1:$(control_port 1)/v1/keys?user=demo")" != 200 ]; then
    # A replica that has just synced (and is rewriting its append-only file) can miss the first WAIT's
    # 200 ms: the CLI then says the change is not confirmed yet, and the same command is run again (the
    # unconfirmed key stays in Redis, but its plaintext was never printed: no one can use it).
    create_key() {
        local json
        for _ in 1 2 3 4 5; do
            json=$("$bin" keys create "$@" --json) && { key_of <<< "$json"; return 0; }
            sleep 1
        done
        echo "error: keys create $* failed five times" >&2
        return 1
    }
    ADMIN_KEY=$(create_key --user local-admin --name "local cluster admin" --scope keygate:admin)
    DEMO_KEY=$(create_key --user demo --name "demo key" --scope orders:read)
    umask 077
    printf 'ADMIN_KEY=%s\nDEMO_KEY=%s\n' "$ADMIN_KEY" "$DEMO_KEY" > "$run_dir/keys.env"
fi

cat <<INFO

Keygate is running. Keys (also in $run_dir/keys.env):
  admin key (scope keygate:admin): $ADMIN_KEY
  demo key  (user demo, scope orders:read): $DEMO_KEY

Through the load balancer ($($gateway && echo "nginx spreads requests over the nodes, which check the key and call" || echo "nginx asks Keygate, then calls") the demo API, which echoes the identity):
  curl -i -H "X-API-Key: $DEMO_KEY" http://127.0.0.1:$lb_port/hello
  curl -i -H "X-API-Key: $DEMO_KEY" http://127.0.0.1:$lb_port/orders/42     # needs scope orders:read
  curl -i http://127.0.0.1:$lb_port/hello                                   # 401

  python3 -c 'import requests; r = requests.get("http://127.0.0.1:$lb_port/hello", headers={"X-API-Key": "$DEMO_KEY"}); print(r.status_code, r.json())'

The console (paste the admin key to sign in; a user's own page opens from a console link):
  http://127.0.0.1:$(control_port 1)/console/

Manage keys (admin API on any node's control port, or the CLI with KEYGATE_REDIS_URL=$KEYGATE_REDIS_URL):
  curl -s -H "X-API-Key: $ADMIN_KEY" -H 'Content-Type: application/json' \\
       -d '{"user":"alice","scopes":["orders:read"]}' http://127.0.0.1:$(control_port 1)/v1/keys
  KEYGATE_REDIS_URL=$KEYGATE_REDIS_URL $bin keys list --user demo
  curl -s http://127.0.0.1:$(control_port 1)/metrics | grep keygate_verify_result_total

Status: deploy/local/status.sh    Stop: deploy/local/down.sh
INFO

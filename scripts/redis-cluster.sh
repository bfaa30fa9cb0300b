#!/usr/bin/env bash
# A local Redis Cluster on loopback for tests and benchmarks: three primaries
# with one replica each (six redis-server processes on BASE_PORT..BASE_PORT+5),
# slots split evenly by `redis-cli --cluster create`.
#
#   scripts/redis-cluster.sh start DIR BASE_PORT   start (or restart) it, wait until ok
#   scripts/redis-cluster.sh stop  DIR             stop every node started in DIR
#   scripts/redis-cluster.sh check BASE_PORT       fail if a node refused a command (NOSCRIPT and WRONGTYPE are expected)
#
# Nothing is persisted (no RDB, no AOF); DIR holds nodes.conf files, logs and
# pid files. Prints the cluster URL meshgate takes on stdout after `start`.
set -euo pipefail

log() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

stop() {
    local dir=$1 pid
    # A node removes its pid file as it exits, so a file seen a moment ago
    # may be gone when read: that node has stopped.
    for f in "$dir"/*/redis.pid; do
        pid=$(cat "$f" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || true
    done
    for f in "$dir"/*/redis.pid; do
        pid=$(cat "$f" 2>/dev/null) || continue
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

start() {
    local dir=$1 base=$2 port nodes=()
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        die "redis-server and redis-cli are needed (Debian package redis-server)"
    stop "$dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    # Node ports and cluster-bus ports (+10000) must be free: a node that
    # cannot bind exits after daemonizing, which `redis-server` alone would
    # not report, and an old cluster answering there would be reused.
    for i in 0 1 2 3 4 5; do
        for port in $((base + i)) $((base + i + 10000)); do
            if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
                die "port $port is in use (an old cluster? stop it, or choose another BASE_PORT)"
            fi
        done
    done
    for i in 0 1 2 3 4 5; do
        port=$((base + i))
        mkdir -p "$dir/$port"
        redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
            --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" \
            --logfile "$dir/$port/redis.log" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 2000 --save '' --appendonly no ||
            die "redis-server on port $port did not start (see $dir/$port/redis.log)"
        nodes+=("127.0.0.1:$port")
    done
    for port in "${nodes[@]##*:}"; do
        for _ in $(seq 50); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        kill -0 "$(cat "$dir/$port/redis.pid" 2>/dev/null || echo 0)" 2>/dev/null ||
            die "redis-server on port $port is not running (see $dir/$port/redis.log)"
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
        die "cluster create failed: $(tail -5 "$dir/create.log")"
    # Every node must agree the cluster is ok and every replica be attached.
    for _ in $(seq 150); do
        local ok=0
        for port in "${nodes[@]##*:}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        done
        local replicas
        replicas=$(redis-cli -p "$base" cluster nodes 2>/dev/null | grep -c ' slave ' || true)
        if [[ $ok -eq 6 && $replicas -eq 3 ]]; then
            # Error counters from here on count meshgate's traffic only.
            for port in "${nodes[@]##*:}"; do
                redis-cli -p "$port" config resetstat >/dev/null
            done
            log "3 primaries + 3 replicas up on 127.0.0.1:$base-$((base + 5))"
            echo "redis-cluster://127.0.0.1:$base?node=127.0.0.1:$((base + 1))&node=127.0.0.1:$((base + 2))"
            return 0
        fi
        sleep 0.2
    done
    die "cluster did not become ok within 30 s"
}

# Fails when any node refused a command since start: CROSSSLOT (keys of
# several slots), ERR (e.g. a script building a key of another slot), MOVED
# (sent to the wrong node) … Only NOSCRIPT is expected: the first EVALSHA of
# each script on each primary, which then loads it.
check() {
    local base=$1 bad=0 stats
    for port in $(seq "$base" $((base + 5))); do
        stats=$(redis-cli -p "$port" info errorstats | tr -d '\r' | grep '^errorstat_' || true)
        log "node :$port errors: ${stats:-none}"
        # Expected: NOSCRIPT (each script's first EVALSHA on a node) and
        # WRONGTYPE (the routing test routes to a registry key it made a
        # string on purpose). Anything else (CROSSSLOT, MOVED, ERR) fails.
        if grep -v -e '^errorstat_NOSCRIPT:' -e '^errorstat_WRONGTYPE:' <<<"$stats" | grep -q .; then
            bad=1
        fi
    done
    [[ $bad -eq 0 ]] || die "a node refused commands (see above)"
    log "no node refused a command (no CROSSSLOT, ERR or MOVED)"
}

# redis-server changes into its --dir before writing its pid and log files:
# every path it is given must be absolute.
case ${1:-} in
start) start "$(realpath -m "${2:?DIR}")" "${3:?BASE_PORT}" ;;
stop) stop "$(realpath -m "${2:?DIR}")" ;;
check) check "${2:?BASE_PORT}" ;;
*) die "usage: $0 start DIR BASE_PORT | stop DIR | check BASE_PORT" ;;
esac

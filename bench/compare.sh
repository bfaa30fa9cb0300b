#!/usr/bin/env bash
# Runs the peer benchmark (shared/bench/peer-socketio) and the matching
# meshgate scenarios side by side on this machine, one after the other, and
# keeps every JSON line and log under bench/out/<UTC time>/.
#
#   bench/compare.sh                      # route, api, idle of both; ingest, register, overload of meshgate
#                                         # (api: also the peer with a lean load generator, meshgate with reqwest)
#   ROUNDS=2 bench/compare.sh             # everything twice, alternating peer and meshgate
#   SCENARIOS="route api" bench/compare.sh
#   PEER_DIR=/path/to/peer-socketio bench/compare.sh
#
# Needs: Node.js >= 20.18.1 and npm (peer), cargo, redis-server/redis-cli,
# PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on
# 127.0.0.1:6379 (both scenarios' defaults). Everything binds to loopback.
# A single meshgate scenario: `cargo run --release -- bench route` (see
# `meshgate bench --help`).
#
# Open files: the idle scenarios hold 10,000 (and meshgate's second run up to
# 20,000) sockets in one process. This script raises `ulimit -n` to the hard
# limit; where the hard limit is below 20,100, meshgate's 20,000 run cannot
# fit (pod A needs 20,000 sockets plus its own), so IDLE_MAX is used instead.
# To run the full 20,000, start this as root with `ulimit -Hn 65536` allowed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

ROUNDS=${ROUNDS:-1}
SCENARIOS=${SCENARIOS:-"route api idle ingest register overload"}
PEER_DIR=${PEER_DIR:-$root/../shared/bench/peer-socketio}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/bench/out/$stamp
mkdir -p "$out"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -ge 20100 ]]; then
    IDLE_MAX=${IDLE_MAX:-20000}
else
    IDLE_MAX=${IDLE_MAX:-$((hard - 500))}
fi

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/compare.log" >&2; }

{
    echo "date: $(date -u)"
    echo "nproc: $(nproc)"
    free -h
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "kernel: $(uname -r)"
    echo "node: $(node --version 2>/dev/null || echo none), npm: $(npm --version 2>/dev/null || echo none)"
    echo "rustc: $(rustc --version), cargo: $(cargo --version)"
    echo "redis: $(redis-server --version)"
    echo "postgres: $(psql -h 127.0.0.1 -U postgres -Atc 'SHOW server_version' 2>/dev/null || echo '?')"
    echo "ulimit -n: $(ulimit -n) (hard $hard); meshgate idle runs: 10000,$IDLE_MAX"
    echo "meshgate: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
} >"$out/machine.txt"
cat "$out/machine.txt" >&2

# The peer folder may be read-only: run a copy.
peer=$(mktemp -d /tmp/peer-socketio.XXXXXX)
trap 'rm -rf "$peer"' EXIT
cp -r "$PEER_DIR"/. "$peer"/
chmod -R u+w "$peer"
rm -rf "$peer/node_modules" "$peer/out"
log "npm ci in $peer"
(cd "$peer" && npm ci --no-audit --no-fund >/dev/null)
# A second copy whose load generator is bench/peer-lean-loadgen.js (the
# peer's requests on raw keep-alive sockets, like meshgate's default lean
# client): the "peer-api-lean" runs, the like-for-like api comparison.
peer_lean=$peer/lean
mkdir "$peer_lean"
(cd "$peer" && cp -r $(ls -A | grep -vx lean) "$peer_lean"/)
cp bench/peer-lean-loadgen.js "$peer_lean/src/loadgen.js"

log "cargo build --release"
cargo build --release >&2
# Every meshgate run of this comparison uses this one build (`cargo run
# --release -- bench …` would rebuild whenever the tree changed meanwhile,
# so runs of one comparison could measure different code).
bin=$out/meshgate
cp target/release/meshgate "$bin"

# run NAME CMD...: one JSON line to $out/NAME.json, stderr to $out/NAME.log,
# with the load average before and after.
run() {
    local name=$1
    shift
    log "$name: uptime before: $(uptime)"
    local rc=0
    "$@" >"$out/$name.json" 2>"$out/$name.log" || rc=$?
    log "$name: exit $rc; uptime after: $(uptime)"
}

peer() { (cd "$peer" && ./run.sh "$@"); }
peer_lean() { (cd "$peer_lean" && ./run.sh "$@"); }
mg() { "$bin" bench "$@"; } # = cargo run --release -- bench "$@"

for round in $(seq 1 "$ROUNDS"); do
    for s in $SCENARIOS; do
        case $s in
        route)
            run "peer-route-$round" peer route
            run "meshgate-route-$round" mg route
            ;;
        api)
            # meshgate's api load generator is its lean client by default;
            # the peer is measured with its own (undici) and with the lean
            # one, and meshgate once more with reqwest (its earlier client).
            run "peer-api-$round" peer api
            run "meshgate-api-$round" mg api
            run "peer-api-lean-$round" peer_lean api
            run "meshgate-api-reqwest-$round" mg api --http-client reqwest
            ;;
        idle)
            run "peer-idle-$round" peer idle
            run "meshgate-idle-$round" mg idle --idle-daemons "10000,$IDLE_MAX"
            ;;
        ingest) run "meshgate-ingest-$round" mg ingest ;;
        register) run "meshgate-register-$round" mg register ;;
        overload)
            # The peer's probe (its README) and meshgate's: private Redis, B
            # bounded only by Redis answers; meshgate also stalls pod A 2 s.
            run "peer-overload-$round" env REDIS_PORT=6390 FLOW=redis bash -c "cd '$peer' && ./run.sh route"
            run "meshgate-overload-$round" mg route --overload
            run "meshgate-overload-nostall-$round" mg route --overload --stall-ms 0
            ;;
        *) log "unknown scenario $s" ;;
        esac
    done
done
log "done: $out"

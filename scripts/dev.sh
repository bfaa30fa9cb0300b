#!/usr/bin/env bash
# The one command that runs meshgate locally on a Debian machine with Rust:
# services up, database `meshgate`, release build, migrations, a dev API key
# in .dev/api-key (minted once), then `meshgate serve` (extra args go to it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'dev: %s\n' "$*" >&2; }

bash scripts/ensure-services.sh

PG_PORT=${MESHGATE_PG_PORT:-5432}
export MESHGATE_LISTEN=${MESHGATE_LISTEN:-127.0.0.1:8080}
default_db_url=postgres://postgres@127.0.0.1:$PG_PORT/meshgate
export DATABASE_URL=${DATABASE_URL:-$default_db_url}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:${MESHGATE_REDIS_PORT:-6379}}

# MESHGATE_DEV_REDIS=cluster: a local three-primary Redis Cluster instead
# (scripts/redis-cluster.sh, ports 7000-7005 or MESHGATE_DEV_CLUSTER_PORT;
# restarted empty on each run, stopped by `scripts/redis-cluster.sh stop
# .dev/redis-cluster`).
if [[ ${MESHGATE_DEV_REDIS:-} == cluster ]]; then
    cluster_port=${MESHGATE_DEV_CLUSTER_PORT:-7000}
    log "starting a local Redis Cluster on 127.0.0.1:$cluster_port-$((cluster_port + 5))"
    REDIS_URL=$(bash scripts/redis-cluster.sh start .dev/redis-cluster "$cluster_port")
    export REDIS_URL
fi

PORT=${MESHGATE_LISTEN##*:}
HOST=${MESHGATE_LISTEN%:*}
case $HOST in
'' | 0.0.0.0) HOST=127.0.0.1 ;;
'[::]') HOST='[::1]' ;;
esac

# The local database, when DATABASE_URL is the default one.
if [[ $DATABASE_URL == "$default_db_url" ]]; then
    psql_local() { PGCONNECT_TIMEOUT=5 psql -X -w -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"; }
    if [[ $(psql_local -tAc "SELECT 1 FROM pg_database WHERE datname='meshgate'") != 1 ]]; then
        log "creating database meshgate"
        psql_local -c 'CREATE DATABASE meshgate' >/dev/null
    fi
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
locked=(--locked)
[[ -f Cargo.lock ]] || locked=()
log "cargo build --release ${locked[*]:-}"
cargo build --release ${locked[@]+"${locked[@]}"}

bin=target/release/meshgate
log "applying migrations"
"$bin" migrate >/dev/null

key_file=.dev/api-key
mkdir -p .dev
if [[ ! -s $key_file ]]; then
    log "creating dev API key for dev@localhost in $key_file"
    out=$("$bin" admin create-key --email dev@localhost --owner-name dev)
    key=$(printf '%s\n' "$out" | tail -n 1)
    [[ -n $key ]] || { log "error: admin create-key printed no key"; exit 1; }
    (umask 077 && printf '%s\n' "$key" >"$key_file.tmp")
    mv -f "$key_file.tmp" "$key_file"
fi
chmod 600 "$key_file"

cat <<INFO

meshgate dev server on http://$HOST:$PORT
  daemon WebSocket: ws://$HOST:$PORT/api/v1/mesh/daemons/connect
    header:         X-Api-Key: <contents of $key_file>
  API docs:         http://$HOST:$PORT/docs
  try:              curl -H "X-Api-Key: \$(cat $key_file)" http://$HOST:$PORT/api/v1/mesh/daemons
  (delete $key_file to mint a new key, e.g. after recreating the database)

INFO

exec "$bin" serve "$@"

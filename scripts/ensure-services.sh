#!/usr/bin/env bash
# Makes sure the services meshgate (and its test suite) need are up, on
# loopback only:
#   PostgreSQL on 127.0.0.1:${MESHGATE_PG_PORT:-5432}, user postgres, no
#              password (trust) over TCP;
#   Redis      on 127.0.0.1:${MESHGATE_REDIS_PORT:-6379};
# and that psql, redis-cli and redis-server are installed (the tests start
# private redis-server instances, clusters and Sentinels on other loopback
# ports), as are kubectl, haproxy and openssl (for the tests' TLS Redis).
#
# Installs the Debian packages when missing (apt-get), starts stopped
# services (no systemd needed), and, when a TCP login as postgres needs a
# password, puts loopback `trust` lines at the top of the cluster's
# pg_hba.conf and reloads it. Idempotent, and quick when all is up.
# One short line per action on stderr.
set -euo pipefail

PG_PORT=${MESHGATE_PG_PORT:-5432}
REDIS_PORT=${MESHGATE_REDIS_PORT:-6379}
WAIT_SECS=${MESHGATE_SERVICES_WAIT_SECS:-30}

log() { printf 'ensure-services: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command as root: directly when root, else through passwordless sudo
# (or directly, hoping the user has the rights, when there is no sudo).
priv() {
    if [[ $EUID -eq 0 ]] || ! have sudo; then
        "$@"
    else
        sudo -n "$@"
    fi
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# psql as postgres over TCP with no password at all (no PGPASSWORD, no
# .pgpass), exactly as the test suite connects. Prints psql's error on failure.
pg_try() {
    have psql || {
        echo "psql not installed"
        return 1
    }
    local out
    out=$(env -u PGPASSWORD PGPASSFILE=/nonexistent/meshgate-no-pgpass PGCONNECT_TIMEOUT=3 \
        timeout 10 psql -X -w -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -tAc 'SELECT 1' 2>&1) && grep -qx 1 <<<"$out" || {
        echo "${out:-psql failed}"
        return 1
    }
}
pg_ok() { pg_try >/dev/null; }

# 0: accepting connections, 1: starting up / rejecting, 2: no answer.
pg_ready_status() {
    local rc=0
    if have pg_isready; then
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2 || rc=$?
    elif port_open "$PG_PORT"; then
        rc=0
    else
        rc=2
    fi
    echo "$rc"
}
pg_accepting() { [[ $(pg_ready_status) == 0 ]]; }

redis_reply() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>&1 || true; }
redis_ok() { have redis-cli && [[ $(redis_reply) == PONG ]]; }

# until CMD succeeds or DEADLINE (a $SECONDS value) passes.
wait_until() {
    local deadline=$1
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

pg_server_installed() {
    have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# --- kubectl (for tests/manifests.rs) ---------------------------------------
# The manifest test renders k8s/ with `kubectl kustomize`, which needs no
# cluster. Any kubectl that runs will do (MESHGATE_KUBECTL names another one);
# when there is none, Debian's kubernetes-client is installed. This block
# stands before the fast path below because that one exits early.
kubectl_ok() { timeout 20 "${MESHGATE_KUBECTL:-kubectl}" version --client >/dev/null 2>&1; }
if [[ -n ${MESHGATE_KUBECTL:-} ]]; then
    kubectl_ok || die "MESHGATE_KUBECTL=$MESHGATE_KUBECTL does not run (\`version --client\`)"
elif ! kubectl_ok; then
    have apt-get || die "kubectl missing, and no apt-get to install kubernetes-client"
    apt_log=$(mktemp -t meshgate-apt.XXXXXX)
    log "installing kubernetes-client for kubectl (apt-get, log: $apt_log)"
    if ! priv env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 ||
        ! priv env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends kubernetes-client >>"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get install kubernetes-client failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    hash -r
    kubectl_ok || die "kubectl still does not run after installing kubernetes-client"
fi
# --- end of kubectl -----------------------------------------------------------

# --- haproxy (the load balancer of tests/it/balancer.rs) ----------------------
if ! have haproxy && ! [[ -x /usr/sbin/haproxy ]]; then
    have apt-get || die "haproxy missing, and no apt-get to install it"
    apt_log=$(mktemp -t meshgate-apt.XXXXXX)
    log "installing haproxy (apt-get, log: $apt_log)"
    if ! priv env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 ||
        ! priv env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends haproxy >>"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get install haproxy failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
fi
# --- end of haproxy -------------------------------------------------------------

# --- openssl (tests/it/tls.rs makes its CA and server certificate with it) ------
if ! have openssl; then
    have apt-get || die "openssl missing, and no apt-get to install it"
    apt_log=$(mktemp -t meshgate-apt.XXXXXX)
    log "installing openssl (apt-get, log: $apt_log)"
    if ! priv env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 ||
        ! priv env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends openssl >>"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get install openssl failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
fi
# --- end of openssl ---------------------------------------------------------------

# --- fast path -------------------------------------------------------------
if have psql && have redis-cli && have redis-server && pg_ok && redis_ok; then
    log "postgres 127.0.0.1:$PG_PORT and redis 127.0.0.1:$REDIS_PORT are up"
    exit 0
fi

# --- packages --------------------------------------------------------------
pkgs=()
have psql || pkgs+=(postgresql-client) # also brings pg_isready
have redis-cli || pkgs+=(redis-tools)
have redis-server || pkgs+=(redis-server)
# The server only when no server is installed and nothing answers on the
# port (it may be provided by a CI service container, say).
if ! pg_server_installed && ! port_open "$PG_PORT"; then
    pkgs+=(postgresql)
fi
if ((${#pkgs[@]})); then
    have apt-get || die "missing ${pkgs[*]}, and no apt-get to install them"
    apt_log=$(mktemp -t meshgate-apt.XXXXXX)
    log "installing ${pkgs[*]} (apt-get, log: $apt_log)"
    if ! priv env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$apt_log" 2>&1 ||
        ! priv env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold "${pkgs[@]}" >>"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get failed (full log: $apt_log)"
    fi
    rm -f "$apt_log"
    hash -r
    for tool in psql redis-cli redis-server; do
        have "$tool" || die "$tool still missing after installing ${pkgs[*]}"
    done
fi

deadline=$((SECONDS + WAIT_SECS))

# --- PostgreSQL: start ------------------------------------------------------
# The Debian cluster on $PG_PORT, as "version name status", if any.
pg_cluster() {
    have pg_lsclusters || return 0
    pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4; exit }'
}

pg_ver='' pg_name='' pg_status=''
if ! pg_ok && [[ $(pg_ready_status) == 2 ]]; then
    port_open "$PG_PORT" &&
        die "something that is not PostgreSQL listens on 127.0.0.1:$PG_PORT"
    read -r pg_ver pg_name pg_status < <(pg_cluster) || true
    if [[ -z $pg_ver ]]; then
        pg_server_installed || die "nothing answers on 127.0.0.1:$PG_PORT and no PostgreSQL server is installed"
        pg_ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        pg_name=main
        [[ -e /etc/postgresql/$pg_ver/main ]] && pg_name=meshgate$PG_PORT
        log "creating PostgreSQL cluster $pg_ver/$pg_name on port $PG_PORT"
        priv pg_createcluster --port "$PG_PORT" "$pg_ver" "$pg_name" >/dev/null ||
            die "pg_createcluster $pg_ver $pg_name failed"
        pg_status=down
    fi
    if [[ $pg_status == online* ]]; then
        die "cluster $pg_ver/$pg_name is online but does not answer on 127.0.0.1:$PG_PORT (check listen_addresses in /etc/postgresql/$pg_ver/$pg_name/postgresql.conf)"
    fi
    [[ -d /var/run/postgresql ]] ||
        priv install -d -m 2775 -o postgres -g postgres /var/run/postgresql
    log "starting PostgreSQL cluster $pg_ver/$pg_name"
    if ! priv pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" start >&2; then
        priv tail -n 20 "/var/log/postgresql/postgresql-$pg_ver-$pg_name.log" >&2 || true
        die "could not start PostgreSQL cluster $pg_ver/$pg_name"
    fi
fi

# --- Redis: start ----------------------------------------------------------
if ! redis_ok && ! port_open "$REDIS_PORT"; then
    if [[ $EUID -eq 0 ]]; then
        redis_dir=/var/lib/redis
        redis_logfile=/var/log/redis/ci.log
    else
        redis_dir=${TMPDIR:-/tmp}/meshgate-redis-$REDIS_PORT
        redis_logfile=$redis_dir/redis.log
    fi
    mkdir -p "$redis_dir" "$(dirname "$redis_logfile")"
    log "starting redis-server on 127.0.0.1:$REDIS_PORT (log: $redis_logfile)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$redis_dir" --logfile "$redis_logfile" >&2 ||
        die "redis-server failed to start (log: $redis_logfile)"
fi

# --- PostgreSQL: wait, then passwordless TCP logins -------------------------
if ! pg_ok; then
    wait_until "$deadline" pg_accepting ||
        die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT after ${WAIT_SECS}s"
fi
if ! pg_ok; then
    err=$(pg_try || true)
    # Only an authentication failure is fixed by pg_hba.conf.
    grep -qE 'no password supplied|authentication failed|no pg_hba.conf entry' <<<"$err" ||
        die "psql -h 127.0.0.1 -p $PG_PORT -U postgres fails: $err"
    [[ -n $pg_ver ]] || read -r pg_ver pg_name pg_status < <(pg_cluster) || true
    [[ -n $pg_ver ]] ||
        die "psql -h 127.0.0.1 -p $PG_PORT -U postgres fails and it is no Debian cluster this script can fix: $err"
    hba=/etc/postgresql/$pg_ver/$pg_name/pg_hba.conf
    priv test -f "$hba" || die "psql -h 127.0.0.1 -U postgres fails ($err), and there is no $hba"
    trust4='host    all             all             127.0.0.1/32            trust'
    trust6='host    all             all             ::1/128                 trust'
    current=$(priv cat "$hba")
    if ! grep -qxF "$trust4" <<<"$current" || ! grep -qxF "$trust6" <<<"$current"; then
        log "adding loopback trust lines to the top of $hba (was: ${err%%$'\n'*})"
        priv test -e "$hba.meshgate-orig" || priv cp -p "$hba" "$hba.meshgate-orig"
        tmp=$(mktemp)
        {
            echo '# Added by meshgate scripts/ensure-services.sh: passwordless TCP logins from loopback.'
            echo "$trust4"
            echo "$trust6"
            printf '%s\n' "$current"
        } >"$tmp"
        priv cp "$tmp" "$hba" # cp onto the existing file keeps its owner and mode
        rm -f "$tmp"
    fi
    log "reloading PostgreSQL cluster $pg_ver/$pg_name"
    priv pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" reload >&2 ||
        die "could not reload PostgreSQL cluster $pg_ver/$pg_name"
    short=$((SECONDS + 10))
    ((short < deadline)) || deadline=$short
    wait_until "$deadline" pg_ok ||
        die "psql -h 127.0.0.1 -p $PG_PORT -U postgres still fails: $(pg_try || true)"
fi

# --- Redis: wait ------------------------------------------------------------
wait_until "$deadline" redis_ok ||
    die "redis on 127.0.0.1:$REDIS_PORT does not answer PING after ${WAIT_SECS}s (reply: $(redis_reply))"

log "postgres 127.0.0.1:$PG_PORT and redis 127.0.0.1:$REDIS_PORT are up"

#!/usr/bin/env bash
# The one command that runs the whole test suite (one build): makes sure
# PostgreSQL and Redis are up on loopback, runs `cargo test --all-targets`,
# then the integration suite again against a local Redis Cluster it starts
# (scripts/redis-cluster.sh). Fails if anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-services.sh
# The page tests (tests/it/page.rs) drive Debian's chromium.
bash scripts/ensure-browser.sh

export MESHGATE_TEST_DATABASE_URL=${MESHGATE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:${MESHGATE_PG_PORT:-5432}/postgres}
export MESHGATE_TEST_REDIS_URL=${MESHGATE_TEST_REDIS_URL:-redis://127.0.0.1:${MESHGATE_REDIS_PORT:-6379}}
export RUST_LOG=${RUST_LOG:-warn}

# rustup installs into ~/.cargo/bin, which non-login shells (CI) may lack.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

locked=(--locked)
[[ -f Cargo.lock ]] || locked=()

# 1. Everything (unit, integration, manifests, simulator) against one Redis.
cargo test --all-targets ${locked[@]+"${locked[@]}"} 2>&1

# 2. The integration suite again against a local three-primary Redis Cluster
#    (sharded pub/sub), minus the tests that bring their own Redis anyway:
#    outages:: (private redis-server instances), cluster:: (private
#    clusters, failover, resharding), sentinel:: (private Sentinel) and
#    tls:: (private TLS-only redis-server). Then every node must show that it refused nothing
#    (no CROSSSLOT, ERR or MOVED).
cluster_port=${MESHGATE_TEST_CLUSTER_PORT:-7100}
# A fixed directory per port: a run killed before its clean-up leaves its
# nodes' pid files there, and the next run stops them first.
cluster_dir=${TMPDIR:-/tmp}/meshgate-test-cluster-$cluster_port
trap 'bash scripts/redis-cluster.sh stop "$cluster_dir"; rm -rf "$cluster_dir"' EXIT
cluster_url=$(bash scripts/redis-cluster.sh start "$cluster_dir" "$cluster_port")
echo "== integration suite against Redis Cluster $cluster_url"
MESHGATE_TEST_REDIS_URL=$cluster_url cargo test ${locked[@]+"${locked[@]}"} --test it -- \
    --skip outages:: --skip cluster:: --skip sentinel:: --skip tls:: 2>&1
bash scripts/redis-cluster.sh check "$cluster_port"

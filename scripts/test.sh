#!/usr/bin/env bash
# The one command that runs the whole test suite (one build): makes sure
# PostgreSQL and Redis are up on loopback, then `cargo test --all-targets`.
# Exits with cargo's status.
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

exec cargo test --all-targets ${locked[@]+"${locked[@]}"} 2>&1

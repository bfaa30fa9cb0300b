#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium (and its WebDriver) are
# installed: the page test (tests/it/page.rs) drives a real browser.
# Idempotent and quick when both are already present.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "ensure-browser: chromium is missing and we are not root (no sudo)" >&2
        exit 1
    fi
fi

echo "ensure-browser: installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
install() {
    ${sudo[@]+"${sudo[@]}"} apt-get install -y -q --no-install-recommends chromium chromium-driver
}
# A stale package index makes the install fail; refresh it once and retry.
if ! install; then
    ${sudo[@]+"${sudo[@]}"} apt-get update -q
    install
fi

command -v chromium >/dev/null 2>&1 || {
    echo "ensure-browser: chromium still not on PATH after install" >&2
    exit 1
}

#!/usr/bin/env bash
# apt-proxy.sh - point apt at the class's package cache (aptProxy), or at nothing: one apt.conf.d file.
# Environment: APT_PROXY (http://host:port, e.g. an apt-cacher-ng; empty: no proxy, the file is removed),
#   PVE_LAB_ROOT (file tree root, for tests).
# Every apt run after this (install-pve.sh, pveceph install) fetches through the proxy, so a class downloads
# each package from the internet once. The https keyring download (curl) does not go through it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail

ROOT="${PVE_LAB_ROOT:-}"
CONF="/etc/apt/apt.conf.d/00pve-lab-proxy"
APT_PROXY="${APT_PROXY:-}"

main() {
    local path="$ROOT$CONF" want tmp
    if [[ -z "$APT_PROXY" ]]; then
        if [[ -e "$path" ]]; then
            rm -f "$path"
            log "removed $CONF: apt fetches directly"
        fi
        return 0
    fi
    [[ "$APT_PROXY" =~ ^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$ ]] ||
        fail "APT_PROXY=$(shown "$APT_PROXY") is not an http://host[:port] URL"
    want="Acquire::http::Proxy \"$APT_PROXY\";"
    if [[ -f "$path" && "$(cat "$path")" == "$want" ]]; then
        log "apt already uses the proxy $APT_PROXY"
        return 0
    fi
    mkdir -p "$(dirname "$path")"
    tmp="$(mktemp "$path.pve-lab.XXXXXX")"
    printf '%s\n' "$want" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $CONF: apt fetches through $APT_PROXY"
}

main "$@"

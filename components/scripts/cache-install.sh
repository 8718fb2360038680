#!/usr/bin/env bash
# cache-install.sh - the class package cache: apt-cacher-ng on a small Debian VM (roster classCache).
# Environment: NODE_HOSTNAME (this VM's name: the script refuses to run elsewhere), CACHE_PORT (3142),
#   DEADLINE_S (600), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
# apt-cacher-ng caches whatever http repository a client asks for through it (Debian, download.proxmox.com),
# so every node of the class fetches each package from the internet once.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
CACHE_PORT="${CACHE_PORT:-3142}"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
PORT_CONF="/etc/apt-cacher-ng/zz-pve-lab.conf"
UNIT="apt-cacher-ng.service"

require_env() {
    require_vars "Run as: NODE_HOSTNAME=class-cache bash cache-install.sh" NODE_HOSTNAME
    [[ "$CACHE_PORT" =~ ^[0-9]{1,5}$ ]] || fail "CACHE_PORT='$CACHE_PORT' is not a port number"
    require_seconds DEADLINE_S POLL_S
    require_hostname NODE_HOSTNAME "Check that this is the class cache VM."
}

installed() {
    dpkg-query -W -f='${db:Status-Status}\n' apt-cacher-ng 2>/dev/null | grep -qx installed
}


apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o "DPkg::Lock::Timeout=${DEADLINE_S%.*}" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >&2 ||
        fail "apt-get $1 failed: see the apt messages above" "Fix the cause (network, mirror) and run this step again."
}

main() {
    require_env
    wait_for_cloud_init "the class cache VM"
    local changed=0
    if ! installed; then
        apt_get update
        apt_get install apt-cacher-ng
        changed=1
    fi
    local want="Port: $CACHE_PORT" path="$ROOT$PORT_CONF"
    if [[ ! -f "$path" || "$(cat "$path")" != "$want" ]]; then
        mkdir -p "$(dirname "$path")"
        printf '%s\n' "$want" >"$path"
        log "wrote $PORT_CONF ($want)"
        changed=1
    fi
    if ! systemctl is-enabled --quiet "$UNIT"; then
        systemctl enable "$UNIT"
    fi
    if ((changed)) || ! systemctl is-active --quiet "$UNIT"; then
        systemctl restart "$UNIT"
    fi
    log "apt-cacher-ng serves on port $CACHE_PORT"
}

main "$@"

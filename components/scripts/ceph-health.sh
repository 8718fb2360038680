#!/usr/bin/env bash
# ceph-health.sh - wait until Ceph is HEALTH_OK with every monitor in quorum and every OSD up and in.
# Environment: EXPECTED_MONS, EXPECTED_OSDS, NODE_NAME (for messages), DEADLINE_S (900), POLL_S (5).
# Prints `ceph -s` (the stack output cephHealth); on timeout, fails with `ceph -s` and `ceph health detail`.
set -euo pipefail

DEADLINE_S="${DEADLINE_S:-900}"
POLL_S="${POLL_S:-5}"
START=$SECONDS

log() { printf 'pve-lab: %s\n' "$*" >&2; }

# fail MESSAGE [WHAT-TO-DO]: the last line says what to do.
fail() {
    log "error: $1"
    if [[ -n "${2:-}" ]]; then
        log "$2"
    fi
    exit 1
}

require_env() {
    [[ -n "${NODE_NAME:-}" ]] || fail "missing environment variable NODE_NAME"
    local name_value
    for name_value in "EXPECTED_MONS=${EXPECTED_MONS:-}" "EXPECTED_OSDS=${EXPECTED_OSDS:-}"; do
        [[ "${name_value#*=}" =~ ^[1-9][0-9]*$ ]] || fail "${name_value%%=*}='${name_value#*=}' must be a positive count"
    done
    for name_value in "DEADLINE_S=$DEADLINE_S" "POLL_S=$POLL_S"; do
        [[ "${name_value#*=}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "${name_value%%=*}='${name_value#*=}' must be a number of seconds"
    done
}

cluster() { ceph --connect-timeout 15 "$@"; }

# "HEALTH QUORUM UP IN" from `ceph status -f json`.
summary() {
    python3 -c '
import json, sys
s = json.load(sys.stdin)
o = s["osdmap"]
print(s["health"]["status"], len(s["quorum_names"]), o["num_up_osds"], o["num_in_osds"])
' 2>/dev/null
}

main() {
    require_env
    local status health quorum up in last=""
    while :; do
        if status="$(cluster status -f json 2>&1)" && read -r health quorum up in < <(summary <<<"$status"); then
            if [[ "$health" == HEALTH_OK ]] && ((quorum >= EXPECTED_MONS && up >= EXPECTED_OSDS && in >= EXPECTED_OSDS)); then
                log "Ceph is healthy: $quorum monitors in quorum, $up OSDs up and in"
                cluster -s
                return 0
            fi
            last="$health, $quorum/$EXPECTED_MONS monitors in quorum, $up/$EXPECTED_OSDS OSDs up, $in/$EXPECTED_OSDS in"
        else
            last="${status//$'\n'/ }"
        fi
        if ((SECONDS - START >= ${DEADLINE_S%.*})); then
            log "ceph -s:"
            cluster -s >&2 || true
            log "ceph health detail:"
            cluster health detail >&2 || true
            fail "Ceph did not become healthy within ${DEADLINE_S}s on $NODE_NAME; last seen: $last (ceph -s and ceph health detail above)" \
                "Fix what 'ceph health detail' names (clock skew: chrony on every node; OSDs down: 'systemctl status ceph-osd@<id>'), then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main "$@"

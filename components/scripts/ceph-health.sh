#!/usr/bin/env bash
# ceph-health.sh - wait until Ceph is HEALTH_OK with every monitor in quorum and every OSD up and in.
# Environment: EXPECTED_MONS, EXPECTED_OSDS, NODE_NAME (for messages), DEADLINE_S (900), POLL_S (5).
# Prints `ceph -s` (the stack output cephHealth); on timeout, fails with `ceph -s` and `ceph health detail`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

DEADLINE_S="${DEADLINE_S:-900}"
POLL_S="${POLL_S:-5}"
START=$SECONDS

require_env() {
    [[ -n "${NODE_NAME:-}" ]] || fail "missing environment variable NODE_NAME"
    local name_value
    for name_value in "EXPECTED_MONS=${EXPECTED_MONS:-}" "EXPECTED_OSDS=${EXPECTED_OSDS:-}"; do
        [[ "${name_value#*=}" =~ ^[1-9][0-9]*$ ]] || fail "${name_value%%=*}='${name_value#*=}' must be a positive count"
    done
    require_seconds DEADLINE_S POLL_S
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
        if deadline_passed "$START"; then
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

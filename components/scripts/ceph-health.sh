#!/usr/bin/env bash
# ceph-health.sh - wait until Ceph is ready for the lab: every monitor in quorum, every OSD up and in, every
# placement group active+clean, and health HEALTH_OK or HEALTH_WARN with only allowed (benign) checks.
# Environment: EXPECTED_MONS, EXPECTED_OSDS, NODE_NAME (for messages), DEADLINE_S (900), POLL_S (5).
# Prints `ceph -s` (the stack output cephHealth); on timeout, fails with `ceph -s` and `ceph health detail`.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

DEADLINE_S="${DEADLINE_S:-900}"
POLL_S="${POLL_S:-5}"
START=$SECONDS
# HEALTH_WARN checks a fresh nested lab may show for a long time without anything being wrong for it
# (Ceph doc/rados/operations/health-checks.rst):
# - BLUESTORE_SLOW_OP_ALERT: one slow BlueStore operation (slow nested storage) keeps it for
#   bluestore_slow_ops_warn_lifetime, 86400 s by default (src/common/options/global.yaml.in).
# - RECENT_CRASH, RECENT_MGR_MODULE_CRASH: a daemon or mgr module crashed once (e.g. while the nodes were
#   still starting); kept for mgr/crash/warn_recent_interval, two weeks, until `ceph crash archive-all`.
# Every other check (clock skew, daemons down, PGs not clean, full OSDs...) must clear before the lab goes on.
ALLOWED_WARNINGS="BLUESTORE_SLOW_OP_ALERT RECENT_CRASH RECENT_MGR_MODULE_CRASH"

require_env() {
    [[ -n "${NODE_NAME:-}" ]] || fail "missing environment variable NODE_NAME"
    local name_value
    for name_value in "EXPECTED_MONS=${EXPECTED_MONS:-}" "EXPECTED_OSDS=${EXPECTED_OSDS:-}"; do
        [[ "${name_value#*=}" =~ ^[1-9][0-9]*$ ]] || fail "${name_value%%=*}='${name_value#*=}' must be a positive count"
    done
    require_seconds DEADLINE_S POLL_S
}

cluster() { ceph --connect-timeout 15 "$@"; }

# "HEALTH QUORUM UP IN CLEAN_PGS PGS ACCEPTED BLOCKING" from `ceph status -f json` on stdin; ACCEPTED and
# BLOCKING are comma-separated check codes ("-": none). Muted checks do not block (`ceph health mute`).
summary() {
    ALLOWED="$ALLOWED_WARNINGS" python3 -c '
import json, os, sys
s = json.load(sys.stdin)
o, pg, health = s["osdmap"], s.get("pgmap", {}), s["health"]
clean = sum(x["count"] for x in pg.get("pgs_by_state", []) if x["state_name"] == "active+clean")
allowed = set(os.environ["ALLOWED"].split())
checks = {code: c for code, c in health.get("checks", {}).items() if not c.get("muted")}
accepted = sorted(code for code, c in checks.items() if code in allowed and c.get("severity") == "HEALTH_WARN")
blocking = sorted(code for code in checks if code not in accepted)
print(health["status"], len(s["quorum_names"]), o["num_up_osds"], o["num_in_osds"], clean, pg.get("num_pgs", 0),
      ",".join(accepted) or "-", ",".join(blocking) or "-")
' 2>/dev/null
}

main() {
    require_env
    local status errors health quorum up in clean pgs accepted blocking last=""
    while :; do
        if split_output status errors cluster status -f json &&
            read -r health quorum up in clean pgs accepted blocking < <(summary <<<"$status"); then
            if [[ "$health" == HEALTH_OK || "$health" == HEALTH_WARN ]] && [[ "$blocking" == - ]] &&
                ((quorum >= EXPECTED_MONS && up >= EXPECTED_OSDS && in >= EXPECTED_OSDS && clean == pgs)); then
                log "Ceph is ready: $quorum monitors in quorum, $up OSDs up and in, $clean/$pgs PGs active+clean, $health"
                if [[ "$accepted" != - ]]; then
                    log "accepted health warnings (benign for a lab, see ceph-health.sh): ${accepted//,/, }; 'ceph health detail' explains them"
                fi
                cluster -s
                return 0
            fi
            last="$health"
            [[ "$blocking" == - ]] || last+=" ($blocking)"
            last+=", $quorum/$EXPECTED_MONS monitors in quorum, $up/$EXPECTED_OSDS OSDs up, $in/$EXPECTED_OSDS in, $clean/$pgs PGs active+clean"
        else
            last="${errors//$'\n'/ }"
        fi
        if deadline_passed "$START"; then
            log "ceph -s:"
            cluster -s >&2 || true
            log "ceph health detail:"
            cluster health detail >&2 || true
            fail "Ceph did not become ready within ${DEADLINE_S}s on $NODE_NAME; last seen: $last (ceph -s and ceph health detail above)" \
                "Fix what 'ceph health detail' names (only ${ALLOWED_WARNINGS// /, } are accepted as warnings; clock skew: chrony on every node; OSDs down: 'systemctl status ceph-osd@<id>'), then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main "$@"

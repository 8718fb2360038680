#!/usr/bin/env bash
# cluster-quorum.sh - on the first node after the last join: wait until the cluster is quorate with exactly
# EXPECTED_NODES members, all online; print `pvecm status` and `pvecm nodes` on stdout.
# Environment: EXPECTED_NODES. Optional: DEADLINE_S (600), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
# More members than EXPECTED_NODES fails at once: a running lab is never shrunk (destroy and re-create it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
COROSYNC_CONF="/etc/pve/corosync.conf"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"

require_env() {
    [[ -n "${EXPECTED_NODES:-}" ]] || fail "missing environment variable EXPECTED_NODES" "Run as: EXPECTED_NODES=3 bash cluster-quorum.sh"
    [[ "$EXPECTED_NODES" =~ ^[1-9][0-9]*$ ]] || fail "EXPECTED_NODES='$EXPECTED_NODES' must be a whole number of nodes"
    require_seconds DEADLINE_S POLL_S
}

# The configured members, one name per line in node id order (the node list of corosync.conf).
configured_members() {
    awk '$1 == "node" && $2 == "{" { inside = 1; name = ""; id = 0; next }
         inside && $1 == "name:" { name = $2 }
         inside && $1 == "nodeid:" { id = $2 }
         inside && $1 == "}" { if (name != "") print id, name; inside = 0 }' "$ROOT$COROSYNC_CONF" |
        sort -n | cut -d' ' -f2
}

main() {
    require_env
    [[ -f "$ROOT$COROSYNC_CONF" ]] ||
        fail "this node is in no cluster ($COROSYNC_CONF is missing)" "Run cluster-create.sh on this node and the joins first."
    local start=$SECONDS members status rc online
    while :; do
        mapfile -t members < <(configured_members)
        if ((${#members[@]} > EXPECTED_NODES)); then
            fail "the cluster has ${#members[@]} members (${members[*]}), more than EXPECTED_NODES=$EXPECTED_NODES (nodes.count): removing nodes from a running lab is refused (extra, the last joined: ${members[*]:EXPECTED_NODES})" \
                "To shrink the lab, destroy and re-create it (pulumi destroy, then pulumi up); to keep it, set pve-lab:lab.nodes.count back to ${#members[@]}."
        fi
        rc=0
        status="$(bounded "$start" pvecm status 2>&1)" || rc=$?
        online="$(awk -F': *' '$1 == "Nodes" { print $2; exit }' <<<"$status")"
        if ((rc == 0 && ${#members[@]} == EXPECTED_NODES)) && [[ "$online" == "$EXPECTED_NODES" ]]; then
            printf '%s\n' "$status"
            printf '%s\n' "$(bounded "$start" pvecm nodes 2>&1 || true)"
            log "cluster is quorate with all $EXPECTED_NODES members online: ${members[*]}"
            return 0
        fi
        if deadline_passed "$start"; then
            log "last 'pvecm status' (exit $rc):"
            printf '%s\n' "$status" >&2
            fail "the cluster was not quorate with $EXPECTED_NODES members online within ${DEADLINE_S}s (members: ${members[*]:-none}; online: ${online:-unknown}; 'pvecm status' exit $rc: 2 = not quorate, or /etc/pve not mounted; 124 = no answer before the deadline, corosync hung?)" \
                "Start any node that is off, check 'journalctl -u corosync' on the nodes for link errors, then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main "$@"

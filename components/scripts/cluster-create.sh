#!/usr/bin/env bash
# cluster-create.sh - create the Proxmox VE cluster on the first node (`pvecm create`), then wait for quorum.
# Environment: CLUSTER_NAME, LINK0 (this node's corosync address).
# Optional: LINK1 (second corosync link), DEADLINE_S (600), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
# Already in a cluster named CLUSTER_NAME: nothing to create. In a cluster of another name: fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
COROSYNC_CONF="/etc/pve/corosync.conf"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
LINK0="${LINK0:-}"
LINK1="${LINK1:-}"
START=$SECONDS

require_env() {
    require_vars "Run as: CLUSTER_NAME=pve-lab LINK0=10.10.10.11 bash cluster-create.sh" CLUSTER_NAME LINK0
    [[ "$CLUSTER_NAME" =~ ^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$ ]] ||
        fail "CLUSTER_NAME='$CLUSTER_NAME' is not allowed: 1-15 lower-case letters, digits and '-', starting with a letter, not ending in '-' (pve-common JSONSchema.pm pve_verify_node_name)"
    require_ipv4 LINK0 LINK1
    require_seconds DEADLINE_S POLL_S
}

# The cluster this node's corosync.conf belongs to; empty when it is in no cluster.
current_cluster() {
    local conf="$ROOT$COROSYNC_CONF" name
    [[ -f "$conf" ]] || return 0
    name="$(awk '$1 == "cluster_name:" { print $2; exit }' "$conf")"
    printf '%s\n' "${name:-(no cluster_name in $COROSYNC_CONF)}"
}

# Poll `pvecm status` until it exits 0 (quorate); corosync restarts right after the create.
wait_for_quorum() {
    local start=$SECONDS status rc
    while :; do
        rc=0
        status="$(bounded "$start" pvecm status 2>&1)" || rc=$?
        if ((rc == 0)); then
            return 0
        fi
        if deadline_passed "$start"; then
            log "last 'pvecm status' (exit $rc):"
            printf '%s\n' "$status" >&2
            fail "cluster '$CLUSTER_NAME' did not become quorate within ${DEADLINE_S}s" \
                "Check 'systemctl status corosync pve-cluster' and 'journalctl -u corosync -u pve-cluster' on this node, then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main() {
    require_env
    local current
    current="$(current_cluster)"
    if [[ "$current" == "$CLUSTER_NAME" ]]; then
        log "this node is already in cluster '$CLUSTER_NAME': nothing to create"
    elif [[ -n "$current" ]]; then
        fail "this node is already in cluster '$current' (its $COROSYNC_CONF), not in '$CLUSTER_NAME'" \
            "A node belongs to one cluster only: re-create this node (pulumi destroy, then pulumi up), or set pve-lab:lab.cluster.name to '$current' if that cluster is this lab's."
    else
        local links=(--link0 "$LINK0") rc=0
        if [[ -n "${LINK1:-}" ]]; then
            links+=(--link1 "$LINK1")
        fi
        log "creating cluster '$CLUSTER_NAME' (link0 $LINK0${LINK1:+, link1 $LINK1})"
        # pvecm create restarts corosync and pmxcfs in its task: bounded like every PVE call that may block.
        bounded "$START" pvecm create "$CLUSTER_NAME" "${links[@]}" >&2 || rc=$?
        if timed_out "$rc"; then
            fail "pvecm create did not finish within ${DEADLINE_S}s and was stopped" \
                "Check 'systemctl status corosync pve-cluster' and 'journalctl -u corosync -u pve-cluster' on this node; if /etc/pve/corosync.conf exists now, run this step again (it will not create twice)."
        fi
        # pvecm create can exit 0 although its task failed: the node's corosync.conf tells.
        current="$(current_cluster)"
        [[ "$current" == "$CLUSTER_NAME" ]] ||
            fail "pvecm create exited $rc, but this node is not in cluster '$CLUSTER_NAME' afterwards (its messages are above)" \
                "Fix the cause shown by pvecm (or in 'journalctl -u pve-cluster'), then run this step again."
    fi
    wait_for_quorum
    log "cluster '$CLUSTER_NAME' is quorate"
}

main "$@"

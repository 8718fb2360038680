#!/usr/bin/env bash
# node-restart-wait.sh - on a neighbour of a node that was just restarted (rolling restart): wait until that
# node is back, the cluster is quorate with every node, Ceph is HEALTH_OK and the node's HA LRM answers,
# so the next node may go down. Check-only: it changes nothing, a second run only reads.
#
# What is read: `pvecm nodes` (corosync-quorumtool -l: the members that are up), `pvecm status` (exit 0 only
# when quorate; "Nodes:" counts the members up), `ceph health` (when /etc/pve/ceph.conf exists),
# `ha-manager status` ("lrm NODE (old timestamp - dead?, ...)" while its LRM has not written a status for 30 s;
# no lrm lines at all while HA was never used: pve-ha-manager src/PVE/API2/HA/Status.pm).
#
# Env: NODE_NAME (the restarted node), EXPECTED_NODES, DEADLINE_S, POLL_S.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RUN_AS="Run as: NODE_NAME=pve2 EXPECTED_NODES=3 DEADLINE_S=900 POLL_S=5 bash node-restart-wait.sh"
require_vars "$RUN_AS" NODE_NAME EXPECTED_NODES
DEADLINE_S="${DEADLINE_S:-900}"
POLL_S="${POLL_S:-5}"
require_seconds DEADLINE_S POLL_S
[[ "$EXPECTED_NODES" =~ ^[1-9][0-9]*$ ]] || fail "EXPECTED_NODES='$EXPECTED_NODES' must be a node count"
CEPH_CONF="${PVE_LAB_ROOT:-}/etc/pve/ceph.conf"
START=$SECONDS

# One look at everything; prints what is still missing (nothing when all is well).
missing() {
    local status nodes health ha
    if ! bounded "$START" pvecm nodes 2>/dev/null | awk '$1 ~ /^[0-9]+$/ { print $3 }' | grep -qxF -- "$NODE_NAME"; then
        echo "$NODE_NAME is not back in the cluster (pvecm nodes)"
        return
    fi
    if ! status="$(bounded "$START" pvecm status 2>&1)"; then
        echo "the cluster is not quorate ($(grep -E '^(Quorate|Nodes|Total votes):' <<<"$status" | tr -s ' ' | paste -sd ';' -))"
        return
    fi
    nodes="$(awk '$1 == "Nodes:" { print $2 }' <<<"$status")"
    if [[ "$nodes" != "$EXPECTED_NODES" ]]; then
        echo "$nodes of $EXPECTED_NODES nodes are up"
        return
    fi
    if [[ -f "$CEPH_CONF" ]]; then
        health="$(ceph --connect-timeout 15 health 2>&1 | head -n 1)" || true
        if [[ "$health" != HEALTH_OK* ]]; then
            echo "Ceph is not healthy: ${health:-no answer}"
            return
        fi
    fi
    # No "lrm" lines at all: HA is not in use yet (no manager status), nothing to wait for.
    ha="$(ha-manager status 2>&1 | grep -E '^lrm ' || true)"
    if [[ -n "$ha" ]]; then
        ha="$(grep -E "^lrm $NODE_NAME " <<<"$ha" || true)"
        if [[ -z "$ha" || "$ha" == *"dead?"* || "$ha" == *"unable to read"* ]]; then
            echo "the HA LRM of $NODE_NAME is not back: ${ha:-not listed by ha-manager status}"
        fi
    fi
}

while :; do
    left="$(missing)"
    if [[ -z "$left" ]]; then
        log "$NODE_NAME is back: cluster quorate with $EXPECTED_NODES nodes, Ceph healthy, its HA LRM answers"
        exit 0
    fi
    if deadline_passed "$START"; then
        fail "gave up after ${DEADLINE_S}s waiting for $NODE_NAME after its restart: $left" \
            "The next node is not restarted. Check $NODE_NAME's console on the outer host, 'pvecm status', 'ceph -s' and 'ha-manager status', then run 'pulumi up' again."
    fi
    sleep "$POLL_S"
done

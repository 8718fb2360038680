#!/usr/bin/env bash
# ceph-mon.sh - a Ceph monitor and manager on this node, then the cluster's OSD memory target.
# Run on one node at a time: monitors created at once collide on the ceph.conf lock (this script retries
# that lock until the deadline anyway). The first monitor also creates a manager.
# Environment: NODE_NAME, OSD_MEMORY_TARGET_BYTES, DEADLINE_S (600), POLL_S (5).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
START=$SECONDS

require_env() {
    [[ "${NODE_NAME:-}" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || fail "NODE_NAME='${NODE_NAME:-}' is not a node name"
    [[ "${OSD_MEMORY_TARGET_BYTES:-}" =~ ^[0-9]+$ ]] ||
        fail "OSD_MEMORY_TARGET_BYTES='${OSD_MEMORY_TARGET_BYTES:-}' must be a number of bytes"
    require_seconds DEADLINE_S POLL_S
    require_hostname NODE_NAME
}

# The cluster, asked with a bounded wait (the client waits minutes for a monitor by default).
cluster() { ceph --connect-timeout 15 "$@"; }

create_monitor() {
    local output rc
    if [[ -d "$ROOT/var/lib/ceph/mon/ceph-$NODE_NAME" ]]; then
        log "monitor mon.$NODE_NAME already exists"
        return 0
    fi
    log "creating monitor mon.$NODE_NAME"
    while :; do
        rc=0
        output="$(bounded "$START" pveceph mon create 2>&1)" || rc=$?
        ((rc != 0)) || break
        printf '%s\n' "$output" >&2
        timed_out "$rc" &&
            fail "pveceph mon create did not finish within ${DEADLINE_S}s on $NODE_NAME and was stopped" \
                "Check 'ceph -s' and 'systemctl status ceph-mon@$NODE_NAME' on $NODE_NAME; if a half-made monitor shows there, remove it with 'pveceph mon destroy $NODE_NAME', then run this step again."
        [[ "$output" == *"got lock request timeout"* ]] ||
            fail "pveceph mon create failed on $NODE_NAME: ${output##*$'\n'}" \
                "Check 'pvecm status' and 'ceph -s' on $NODE_NAME, then run this step again."
        deadline_passed "$START" &&
            fail "the ceph.conf lock (cfs-lock 'file-ceph_conf') stayed busy for ${DEADLINE_S}s on $NODE_NAME" \
                "Another Ceph operation holds it: wait for running pveceph tasks (Datacenter > Tasks) to end, then run this step again."
        log "ceph.conf is locked by another operation; trying again in ${POLL_S}s"
        sleep "$POLL_S"
    done
    printf '%s\n' "$output" >&2
    [[ -d "$ROOT/var/lib/ceph/mon/ceph-$NODE_NAME" ]] ||
        fail "pveceph mon create exited 0, but /var/lib/ceph/mon/ceph-$NODE_NAME does not exist" \
            "Look at the task log of the monitor creation on $NODE_NAME, then run this step again."
}

wait_for_quorum() {
    local status errors names="" last=""
    while :; do
        if split_output status errors cluster status -f json; then
            names="$(python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["quorum_names"]))' \
                <<<"$status" 2>/dev/null)" || true
            if [[ " $names " == *" $NODE_NAME "* ]]; then
                log "mon.$NODE_NAME is in the quorum ($names)"
                return 0
            fi
            last="quorum: ${names:-none}"
        else
            last="${errors//$'\n'/ }"
        fi
        deadline_passed "$START" &&
            fail "mon.$NODE_NAME did not join the monitor quorum within ${DEADLINE_S}s; last seen: $last" \
                "Check 'systemctl status ceph-mon@$NODE_NAME', clock sync (chronyc tracking) and ports 3300/6789 between the nodes, then run this step again."
        sleep "$POLL_S"
    done
}

create_manager() {
    if [[ -d "$ROOT/var/lib/ceph/mgr/ceph-$NODE_NAME" ]]; then
        log "manager mgr.$NODE_NAME already exists (the first monitor creates one)"
        return 0
    fi
    log "creating manager mgr.$NODE_NAME"
    local rc=0
    bounded "$START" pveceph mgr create >&2 || rc=$?
    if timed_out "$rc"; then
        fail "pveceph mgr create did not finish within ${DEADLINE_S}s on $NODE_NAME and was stopped" \
            "Check 'ceph -s' on $NODE_NAME (remove a half-made manager with 'pveceph mgr destroy $NODE_NAME'), then run this step again."
    fi
    ((rc == 0)) ||
        fail "pveceph mgr create failed on $NODE_NAME (exit $rc): see its messages above" \
            "Check 'ceph -s' on $NODE_NAME, then run this step again."
    [[ -d "$ROOT/var/lib/ceph/mgr/ceph-$NODE_NAME" ]] ||
        fail "pveceph mgr create exited 0, but /var/lib/ceph/mgr/ceph-$NODE_NAME does not exist" \
            "Look at the task log of the manager creation on $NODE_NAME, then run this step again."
}

# The OSDs' memory target lives in the monitors' config database: it can only be set once a monitor runs.
set_osd_memory_target() {
    local current errors
    split_output current errors cluster config get osd osd_memory_target ||
        fail "could not read osd_memory_target: ${errors//$'\n'/ }" "Check 'ceph -s' on $NODE_NAME, then run this step again."
    if [[ "$current" == "$OSD_MEMORY_TARGET_BYTES" ]]; then
        log "osd_memory_target is already $OSD_MEMORY_TARGET_BYTES"
        return 0
    fi
    cluster config set osd osd_memory_target "$OSD_MEMORY_TARGET_BYTES" >&2 ||
        fail "ceph config set osd osd_memory_target $OSD_MEMORY_TARGET_BYTES failed (exit $?)" \
            "Ceph refuses values below 939524096 (896 MiB): check ceph.osdMemoryTargetMiB."
    split_output current errors cluster config get osd osd_memory_target || true
    [[ "$current" == "$OSD_MEMORY_TARGET_BYTES" ]] ||
        fail "osd_memory_target reads '$current' after setting it to $OSD_MEMORY_TARGET_BYTES"
    log "osd_memory_target set to $OSD_MEMORY_TARGET_BYTES"
}

main() {
    require_env
    create_monitor
    wait_for_quorum
    create_manager
    set_osd_memory_target
}

main "$@"

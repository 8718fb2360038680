#!/usr/bin/env bash
# node-evict.sh - on a surviving member: remove the old membership of a node whose VM was rebuilt, so the
# new VM (a fresh install with the same name) can join again: `pvecm delnode`, then its Ceph monitor (out of
# the monmap and /etc/pve/ceph.conf) and its OSDs (out, purged) and CRUSH host.
#
# Which VM is "current" is recorded in /etc/pve/pve-lab/instances (one line "NODE INSTANCE", shared by the
# cluster): this script only evicts a member whose recorded instance differs from INSTANCE (the new VM) and
# that is offline. A live member, or one whose VM this script cannot tell apart, is never removed.
#
# Sources: pve-cluster src/PVE/API2/ClusterConfig.pm (delnode: "Cannot delete myself from cluster!", needs
# quorum, "Node/IP: X is not a known host of the cluster.", kills an online node's corosync: we check first);
# pve-manager PVE/API2/Ceph/MON.pm (`pveceph mon destroy` only works on the monitor's own node, and `mon
# create` refuses while ceph.conf has [mon.NODE] or its address in mon_host: so we remove the monitor with
# `ceph mon remove` and edit ceph.conf as destroymon does); ceph's OSDMonitor (`osd purge` needs the OSD down).
# `pvecm add --force` could overwrite the old entry instead (same nodeid and votes), but would leave the old
# node's monitor and OSDs behind: we evict explicitly, as PVE's "Remove a cluster node" procedure does.
#
# Env: NODE_NAME (the node to evict), INSTANCE (the new VM's identity), DEADLINE_S, POLL_S.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RUN_AS="Run as: NODE_NAME=pve2 INSTANCE=1002/BC:24:11:00:00:02 DEADLINE_S=300 POLL_S=5 bash node-evict.sh"
require_vars "$RUN_AS" NODE_NAME INSTANCE
DEADLINE_S="${DEADLINE_S:-300}"
POLL_S="${POLL_S:-5}"
require_seconds DEADLINE_S POLL_S
[[ "$NODE_NAME" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || fail "NODE_NAME='$NODE_NAME' is not a node name"
[[ "$INSTANCE" =~ ^[A-Za-z0-9:./_-]+$ ]] || fail "INSTANCE='$INSTANCE' is not an instance identity"

ROOT="${PVE_LAB_ROOT:-}"
COROSYNC_CONF="$ROOT/etc/pve/corosync.conf"
CEPH_CONF="$ROOT/etc/pve/ceph.conf"
INSTANCE_FILE="$ROOT/etc/pve/pve-lab/instances"
START=$SECONDS

[[ "$(hostname)" != "$NODE_NAME" ]] ||
    fail "this is $NODE_NAME itself" "Run node-evict.sh on another member of the cluster."

# recorded_instance: the VM identity this cluster last saw joined as NODE_NAME (empty: none recorded).
recorded_instance() {
    [[ -f "$INSTANCE_FILE" ]] || return 0
    awk -v n="$NODE_NAME" '$1 == n { print $2 }' "$INSTANCE_FILE" | tail -n 1
}

record_instance() {
    local tmp="$INSTANCE_FILE.tmp.$$"
    mkdir -p "$(dirname "$INSTANCE_FILE")"
    { [[ -f "$INSTANCE_FILE" ]] && awk -v n="$NODE_NAME" '$1 != n' "$INSTANCE_FILE"; printf '%s %s\n' "$NODE_NAME" "$INSTANCE"; } >"$tmp"
    mv -f "$tmp" "$INSTANCE_FILE"
}

# configured: NODE_NAME is in the cluster's nodelist (corosync.conf), whether it is up or not.
configured() {
    awk '$1 == "name:" { print $2 }' "$COROSYNC_CONF" | grep -qxF -- "$NODE_NAME"
}

# online: NODE_NAME is a corosync member right now (`pvecm nodes` lists only the members that are up).
online() {
    bounded "$START" pvecm nodes 2>/dev/null | awk '$1 ~ /^[0-9]+$/ { print $3 }' | grep -qxF -- "$NODE_NAME"
}

wait_for_quorum() {
    local last=""
    until last="$(bounded "$START" pvecm status 2>&1)"; do
        deadline_passed "$START" &&
            fail "the cluster did not become quorate within ${DEADLINE_S}s, so $NODE_NAME cannot be removed (delnode needs quorum); last 'pvecm status': $(grep -E '^(Quorate|Nodes|Expected votes|Total votes):' <<<"$last" | tr -s ' ' | paste -sd ';' -)" \
                "Start the members that are down (or fix corosync: journalctl -u corosync), then run this step again."
        sleep "$POLL_S"
    done
}

evict_from_cluster() {
    if ! configured; then
        log "$NODE_NAME is not in the cluster configuration"
        return 0
    fi
    if online; then
        fail "$NODE_NAME is online in the cluster, but its VM was rebuilt (instance $INSTANCE; recorded: $(recorded_instance))" \
            "Refusing to remove a live member. Check which VM answers as $NODE_NAME, stop the old one, then run this step again."
    fi
    wait_for_quorum
    log "removing $NODE_NAME (offline, a rebuilt VM) from the cluster: pvecm delnode $NODE_NAME"
    pvecm delnode "$NODE_NAME" >&2 ||
        fail "pvecm delnode $NODE_NAME failed (exit $?): see its messages above" \
            "Check 'pvecm status' on this node, then run this step again."
    ! configured || fail "pvecm delnode exited 0, but $NODE_NAME is still in /etc/pve/corosync.conf" \
        "Look at the cluster log (journalctl -u pve-cluster), then run this step again."
}

cluster() { ceph --connect-timeout 15 "$@"; }

# remove_mon_from_conf ADDR: drop [mon.NODE_NAME] and ADDR from mon_host in /etc/pve/ceph.conf (as destroymon).
remove_mon_from_conf() {
    local addr="$1" tmp="$CEPH_CONF.tmp.$$"
    awk -v section="[mon.$NODE_NAME]" -v addr="$addr" '
        /^\[/ { skip = ($0 == section) }
        skip { next }
        /^[ \t]*mon_host[ \t]*=/ && addr != "" {
            split($0, kv, "="); n = split(kv[2], hosts, /[ ,]+/); out = ""
            for (i = 1; i <= n; i++) if (hosts[i] != "" && hosts[i] != addr) out = out (out == "" ? "" : " ") hosts[i]
            sub(/=.*/, "= " out)
        }
        { print }' "$CEPH_CONF" >"$tmp"
    if cmp -s "$tmp" "$CEPH_CONF"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$CEPH_CONF"
        log "removed mon.$NODE_NAME${addr:+ ($addr)} from /etc/pve/ceph.conf"
    fi
}

mon_address_in_conf() {
    awk -v section="[mon.$NODE_NAME]" '/^\[/ { s = ($0 == section) } s && /public_addr/ { sub(/.*=[ \t]*/, ""); print }' "$CEPH_CONF"
}

evict_from_ceph() {
    local addr ids id output
    if [[ ! -f "$CEPH_CONF" ]]; then
        log "no Ceph on this cluster yet"
        return 0
    fi
    addr="$(mon_address_in_conf)"
    if cluster mon dump -f json | python3 -c 'import json, sys; sys.exit(0 if sys.argv[1] in [m["name"] for m in json.load(sys.stdin)["mons"]] else 1)' "$NODE_NAME"; then
        log "removing mon.$NODE_NAME from the monitor map"
        cluster mon remove "$NODE_NAME" >&2 || fail "ceph mon remove $NODE_NAME failed (exit $?)" \
            "Check 'ceph -s' on this node, then run this step again."
    fi
    remove_mon_from_conf "$addr"
    ids="$(cluster osd ls-tree "$NODE_NAME" 2>/dev/null || true)"
    for id in $ids; do
        log "purging osd.$id of $NODE_NAME (its disk went with the old VM)"
        cluster osd out "$id" >&2
        # purge refuses an OSD the monitors still see up ("Error EBUSY: osd.N is not `down`."); the old VM is
        # gone, so mark it down rather than wait for the heartbeat grace.
        cluster osd down "$id" >&2
        until output="$(cluster osd purge "$id" --yes-i-really-mean-it 2>&1)"; do
            [[ "$output" == *"is not \`down\`"* ]] || fail "ceph osd purge $id failed: $output" \
                "Check 'ceph osd tree' on this node, then run this step again."
            deadline_passed "$START" && fail "osd.$id stayed up for ${DEADLINE_S}s: is the old $NODE_NAME still running?" \
                "Make sure the old VM is gone ('ceph osd tree' shows osd.$id down), then run this step again."
            sleep "$POLL_S"
            cluster osd down "$id" >&2
        done
        printf '%s\n' "$output" >&2
    done
    # "device 'NODE' does not appear in the crush map" (exit 0) when there is no such host bucket.
    cluster osd crush rm "$NODE_NAME" >&2
}

recorded="$(recorded_instance)"
if [[ "$recorded" == "$INSTANCE" ]]; then
    log "$NODE_NAME is already recorded as VM instance $INSTANCE: nothing to evict"
    exit 0
fi
if [[ ! -f "$COROSYNC_CONF" ]]; then
    fail "this node is in no cluster" "Run node-evict.sh on a member of the cluster (after cluster-create)."
fi
if [[ -z "$recorded" ]] && configured; then
    if online; then
        # A lab built before instances were recorded: the member that is up is the current VM.
        log "$NODE_NAME is online; recording it as VM instance $INSTANCE"
        record_instance
        exit 0
    fi
    fail "$NODE_NAME is in the cluster but offline, and no VM instance was recorded for it" \
        "If its VM was rebuilt, remove it by hand ('pvecm delnode $NODE_NAME', then its monitor and OSDs); if it is only powered off, start it. Then run this step again."
fi
evict_from_cluster
evict_from_ceph
record_instance
log "$NODE_NAME may join as VM instance $INSTANCE"

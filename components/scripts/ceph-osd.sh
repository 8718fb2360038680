#!/usr/bin/env bash
# ceph-osd.sh - one Ceph OSD per data disk of this node (`pveceph osd create`), then wait until they are up.
# Environment: NODE_NAME, OSD_DEVICES (space-separated /dev/disk/by-id/... paths), DEADLINE_S (600), POLL_S (5).
# A disk that already holds an OSD of this cluster is skipped; a disk holding anything else is refused with
# the command that wipes it (never wiped here: it may hold someone's data).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
START=$SECONDS

require_env() {
    [[ "${NODE_NAME:-}" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || fail "NODE_NAME='${NODE_NAME:-}' is not a node name"
    read -ra DEVICES <<<"${OSD_DEVICES:-}"
    ((${#DEVICES[@]})) || fail "OSD_DEVICES is empty: give the data disks, e.g. /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_pvelab-osd0"
    local dev
    for dev in "${DEVICES[@]}"; do
        [[ "$dev" == /dev/* ]] || fail "OSD_DEVICES entry '$dev' is not a /dev path"
    done
    require_seconds DEADLINE_S POLL_S
    require_hostname NODE_NAME
}

cluster() { ceph --connect-timeout 15 "$@"; }

# Lines "DEVICE OSD_ID CLUSTER_FSID" for every disk of this node that holds an OSD (of any cluster).
osd_disks() {
    local report
    report="$(ceph-volume lvm list --format json)" || fail "ceph-volume lvm list failed on $NODE_NAME (exit $?)"
    python3 -c '
import json, sys
for osd_id, volumes in json.load(sys.stdin).items():
    for volume in volumes:
        if volume.get("type") == "block":
            for device in volume.get("devices", []):
                print(device, osd_id, volume.get("tags", {}).get("ceph.cluster_fsid", "-"))
' <<<"$report"
}

# kernel_device PATH: the /dev/sdX a stable /dev/disk/by-id name points to.
kernel_device() {
    local real
    real="$(readlink -f "$ROOT$1")"
    printf '%s\n' "${real#"$ROOT"}"
}

ensure_osd() {
    local dev="$1" fsid="$2" listing="$3" kernel found osd_id owner output
    [[ -e "$ROOT$dev" ]] ||
        fail "OSD disk $dev is missing on $NODE_NAME" \
            "The VM needs a SCSI disk with serial '${dev##*_}' (see its config on the outer host: qm config <vmid>); add it or fix nodes.cephDisks, then run this step again."
    kernel="$(kernel_device "$dev")"
    found="$(awk -v d="$kernel" '$1 == d { print $2, $3; exit }' <<<"$listing")"
    if [[ -n "$found" ]]; then
        read -r osd_id owner <<<"$found"
        [[ "$owner" == "$fsid" ]] ||
            fail "$dev ($kernel) on $NODE_NAME holds osd.$osd_id of another Ceph cluster (fsid $owner)" \
                "If that data is not needed, wipe the disk on $NODE_NAME: ceph-volume lvm zap --destroy $dev ; then run this step again."
        log "$dev ($kernel) already holds osd.$osd_id of this cluster"
        return 0
    fi
    log "creating an OSD on $dev ($kernel)"
    if ! output="$(pveceph osd create "$dev" 2>&1)"; then
        printf '%s\n' "$output" >&2
        [[ "$output" != *"is already in use"* ]] ||
            fail "$dev ($kernel) on $NODE_NAME is already in use (partitions, LVM or a file system), not by this Ceph cluster" \
                "If that data is not needed, wipe the disk on $NODE_NAME: ceph-volume lvm zap --destroy $dev ; then run this step again."
        fail "pveceph osd create $dev failed on $NODE_NAME: ${output##*$'\n'}" \
            "Check 'ceph -s' and 'lsblk $dev' on $NODE_NAME, then run this step again."
    fi
    printf '%s\n' "$output" >&2
}

# Prints the ids of this node's OSDs on DEVICES; fails when a disk holds no OSD of this cluster.
our_osd_ids() {
    local fsid="$1" listing dev kernel found
    listing="$(osd_disks)"
    for dev in "${DEVICES[@]}"; do
        kernel="$(kernel_device "$dev")"
        found="$(awk -v d="$kernel" -v f="$fsid" '$1 == d && $3 == f { print $2; exit }' <<<"$listing")"
        [[ -n "$found" ]] ||
            fail "pveceph osd create exited 0, but $dev ($kernel) holds no OSD of this cluster" \
                "Look at 'ceph-volume lvm list' and the OSD creation task log on $NODE_NAME, then run this step again."
        printf '%s\n' "$found"
    done
}

wait_until_up() {
    local ids=("$@") dump up id down last=""
    while :; do
        if dump="$(cluster osd dump -f json 2>&1)"; then
            up="$(python3 -c 'import json, sys; print(" ".join(str(o["osd"]) for o in json.load(sys.stdin)["osds"] if o["up"]))' \
                <<<"$dump" 2>/dev/null)" || true
            down=()
            for id in "${ids[@]}"; do
                [[ " $up " == *" $id "* ]] || down+=("osd.$id")
            done
            if ((${#down[@]} == 0)); then
                log "OSDs up on $NODE_NAME: ${ids[*]/#/osd.}"
                return 0
            fi
            last="still down: ${down[*]}"
        else
            last="${dump//$'\n'/ }"
        fi
        deadline_passed "$START" &&
            fail "the OSDs of $NODE_NAME did not come up within ${DEADLINE_S}s; $last" \
                "Check 'systemctl status ceph-osd@<id>' and free memory on $NODE_NAME (each OSD wants osd_memory_target), then run this step again."
        sleep "$POLL_S"
    done
}

main() {
    require_env
    local fsid listing dev ids_text ids
    fsid="$(cluster fsid 2>&1)" || fail "cannot reach the Ceph cluster from $NODE_NAME: $fsid" \
        "The monitors must be up (the ceph-mon steps); check 'ceph -s', then run this step again."
    listing="$(osd_disks)"
    for dev in "${DEVICES[@]}"; do
        ensure_osd "$dev" "$fsid" "$listing"
    done
    ids_text="$(our_osd_ids "$fsid")"
    mapfile -t ids <<<"$ids_text"
    wait_until_up "${ids[@]}"
}

main "$@"

#!/usr/bin/env bash
# ceph-osd.sh - one Ceph OSD per data disk of this node (`pveceph osd create`), then wait until they are up.
# Environment: NODE_NAME, OSD_SERIALS (space-separated disk serials, e.g. "pvelab-osd0 pvelab-osd1"),
#   DEADLINE_S (600), POLL_S (5).
# Disks are found by serial (lib/disks.sh says why not by a /dev/disk/by-id name). A disk that already holds
# an OSD of this cluster is skipped; a disk holding anything else is refused with the command that wipes it
# (never wiped here: it may hold someone's data).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed, bounded
# shellcheck source-path=SCRIPTDIR source=lib/disks.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/disks.sh" # disk_by_serial, stable_disk_path

DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
START=$SECONDS

require_env() {
    [[ "${NODE_NAME:-}" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || fail "NODE_NAME='${NODE_NAME:-}' is not a node name"
    read -ra SERIALS <<<"${OSD_SERIALS:-}"
    ((${#SERIALS[@]})) || fail "OSD_SERIALS is empty: give the data disks' serials, e.g. pvelab-osd0"
    local serial
    for serial in "${SERIALS[@]}"; do
        # bpg/terraform-provider-proxmox limits a disk serial to 20 characters (its disk schema).
        [[ "$serial" =~ ^[A-Za-z0-9_.-]{1,20}$ ]] || fail "OSD_SERIALS entry '$serial' is not a disk serial (1-20 letters, digits, '_', '.', '-')"
    done
    require_seconds DEADLINE_S POLL_S
    require_hostname NODE_NAME
}

cluster() { ceph --connect-timeout 15 "$@"; }

# Lines "DEVICE OSD_ID CLUSTER_FSID" for every disk of this node that holds an OSD (of any cluster).
osd_disks() {
    local report errors
    split_output report errors ceph-volume lvm list --format json ||
        fail "ceph-volume lvm list failed on $NODE_NAME (exit $?): ${errors//$'\n'/ }"
    python3 -c '
import json, sys
for osd_id, volumes in json.load(sys.stdin).items():
    for volume in volumes:
        if volume.get("type") == "block":
            for device in volume.get("devices", []):
                print(device, osd_id, volume.get("tags", {}).get("ceph.cluster_fsid", "-"))
' <<<"$report"
}

# The kernel device (/dev/sdb) of the disk with serial $1; fails when there is none or more than one.
find_disk() {
    local serial="$1" listing found
    listing="$(disk_by_serial "$serial")" || fail "lsblk failed on $NODE_NAME (exit $?): see its message above"
    mapfile -t found < <(printf '%s' "${listing:+$listing$'\n'}")
    ((${#found[@]} == 1)) && printf '%s\n' "${found[0]}" && return 0
    if ((${#found[@]} == 0)); then
        fail "no disk with serial '$serial' on $NODE_NAME (lsblk -do PATH,SERIAL lists the disks)" \
            "The VM needs a SCSI disk with serial '$serial' (see its config on the outer host: qm config <vmid>); add it or fix nodes.cephDisks, then run this step again."
    fi
    fail "${#found[@]} disks have the serial '$serial' on $NODE_NAME: ${found[*]}" \
        "Give every data disk its own serial in the VM config on the outer host (qm config <vmid>), then run this step again."
}

ensure_osd() {
    local serial="$1" fsid="$2" listing="$3" kernel stable found osd_id owner output rc=0
    kernel="$(find_disk "$serial")"
    stable="$(stable_disk_path "$kernel" "$serial")"
    found="$(awk -v d="$kernel" '$1 == d { print $2, $3; exit }' <<<"$listing")"
    if [[ -n "$found" ]]; then
        read -r osd_id owner <<<"$found"
        [[ "$owner" == "$fsid" ]] ||
            fail "$stable ($kernel, serial $serial) on $NODE_NAME holds osd.$osd_id of another Ceph cluster (fsid $owner)" \
                "If that data is not needed, wipe the disk on $NODE_NAME: ceph-volume lvm zap --destroy $stable ; then run this step again."
        log "$stable ($kernel, serial $serial) already holds osd.$osd_id of this cluster"
        return 0
    fi
    log "creating an OSD on $stable ($kernel, serial $serial)"
    output="$(bounded "$START" pveceph osd create "$kernel" 2>&1)" || rc=$?
    printf '%s\n' "$output" >&2
    if timed_out "$rc"; then
        fail "pveceph osd create $kernel did not finish within ${DEADLINE_S}s on $NODE_NAME and was stopped" \
            "Check 'ceph -s' and 'ceph-volume lvm list' on $NODE_NAME: a half-made OSD shows there (remove it with 'pveceph osd destroy <id> --cleanup'), then run this step again."
    elif ((rc != 0)); then
        [[ "$output" != *"is already in use"* ]] ||
            fail "$stable ($kernel, serial $serial) on $NODE_NAME is already in use (partitions, LVM or a file system), not by this Ceph cluster" \
                "If that data is not needed, wipe the disk on $NODE_NAME: ceph-volume lvm zap --destroy $stable ; then run this step again."
        fail "pveceph osd create $kernel failed on $NODE_NAME: ${output##*$'\n'}" \
            "Check 'ceph -s' and 'lsblk $kernel' on $NODE_NAME, then run this step again."
    fi
}

# Prints the ids of this node's OSDs on the disks; fails when a disk holds no OSD of this cluster.
our_osd_ids() {
    local fsid="$1" listing serial kernel found
    listing="$(osd_disks)"
    for serial in "${SERIALS[@]}"; do
        kernel="$(find_disk "$serial")"
        found="$(awk -v d="$kernel" -v f="$fsid" '$1 == d && $3 == f { print $2; exit }' <<<"$listing")"
        [[ -n "$found" ]] ||
            fail "pveceph osd create exited 0, but $kernel (serial $serial) holds no OSD of this cluster" \
                "Look at 'ceph-volume lvm list' and the OSD creation task log on $NODE_NAME, then run this step again."
        printf '%s\n' "$found"
    done
}

wait_until_up() {
    local ids=("$@") dump errors up id down last=""
    while :; do
        if split_output dump errors cluster osd dump -f json; then
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
            last="${errors//$'\n'/ }"
        fi
        deadline_passed "$START" &&
            fail "the OSDs of $NODE_NAME did not come up within ${DEADLINE_S}s; $last" \
                "Check 'systemctl status ceph-osd@<id>' and free memory on $NODE_NAME (each OSD wants osd_memory_target), then run this step again."
        sleep "$POLL_S"
    done
}

main() {
    require_env
    local fsid errors listing serial ids_text ids
    # Only stdout is the fsid: the client's warnings on stderr are logged, never compared.
    split_output fsid errors cluster fsid ||
        fail "cannot reach the Ceph cluster from $NODE_NAME: ${errors//$'\n'/ }" \
            "The monitors must be up (the ceph-mon steps); check 'ceph -s', then run this step again."
    [[ -z "$errors" ]] || log "ceph fsid said on stderr: ${errors//$'\n'/ }"
    listing="$(osd_disks)"
    for serial in "${SERIALS[@]}"; do
        ensure_osd "$serial" "$fsid" "$listing"
    done
    ids_text="$(our_osd_ids "$fsid")"
    mapfile -t ids <<<"$ids_text"
    wait_until_up "${ids[@]}"
}

main "$@"

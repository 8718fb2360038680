# shellcheck shell=bash
# lib/disks.sh - find a node's data disks by the serial its VM config gives them (scsiN: ...,serial=X).
# Sourced like lib/common.sh; it only defines functions. Files are reached through PVE_LAB_ROOT (tests).
#
# Why by serial and not by a /dev/disk/by-id name: the by-id name depends on the outer host's QEMU.
# qemu-server (src/PVE/QemuServer/DriveDevice.pm) adds `device_id=drive-scsiN` to every scsi-hd from
# machine version 10 on (PVE 9), and QEMU (hw/scsi/scsi-disk.c) takes the VPD page 0x83 identifier from
# device_id, falling back to the serial only when device_id is unset (QEMU 9, PVE 8.4). So udev names the
# disk /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_pvelab-osd0 on PVE 8.4 but ..._drive-scsi1 on PVE 9. The
# serial itself is always in VPD page 0x80: udev's ID_SCSI_SERIAL, which lsblk shows as SERIAL first
# (util-linux misc-utils/lsblk-properties.c).

# disk_by_serial SERIAL: the kernel path (/dev/sdb) of every whole disk whose serial is SERIAL, one a line.
# Fails when lsblk fails.
disk_by_serial() {
    local listing
    listing="$(lsblk -dno PATH,SERIAL)" || return
    awk -v serial="$1" 'NF == 2 && $2 == serial { print $1 }' <<<"$listing"
}

# stable_disk_path DEVICE [SERIAL]: a /dev/disk/by-id name of DEVICE for messages (a kernel name like
# /dev/sdb can change at the next boot): the scsi-... link naming SERIAL, else any scsi-... link, else
# DEVICE itself.
stable_disk_path() {
    local device="$1" serial="${2:-}" root="${PVE_LAB_ROOT:-}" link target best=""
    target="$(readlink -f "$root$device")"
    for link in "$root"/dev/disk/by-id/scsi-*; do
        [[ -L "$link" && "$(readlink -f "$link")" == "$target" ]] || continue
        if [[ -n "$serial" && "$link" == *"_$serial" ]]; then
            best="$link"
            break
        fi
        [[ -n "$best" ]] || best="$link"
    done
    if [[ -n "$best" ]]; then
        printf '%s\n' "${best#"$root"}"
    else
        printf '%s\n' "$device"
    fi
}

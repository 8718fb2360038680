"""How long each kind of step takes, roughly: the table behind the plan's wall-time ESTIMATE.

These are estimates for a lab on a reasonable outer host (SSD storage, ~30 Mbit/s or better to the Debian
and Proxmox mirrors), not measurements of your host. They are here so that the plan can say which chain
of steps decides the total time (the critical path) and about how long `pulumi up` will take. The sum
along the default lab's critical path (~28 min) agrees with the README's "about 30-40 minutes, mostly
package installs". Change a figure here when a real run shows better numbers, and say where it came from.

Keys: a node script's name, `script:first-argument` for scripts with steps (install-pve), or a resource
type token; outer and inner VMs differ (`vm:outer`, `vm:inner`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Duration:
    seconds: int
    source: str  # where the figure comes from
    per_unit: str = ""  # when set, `seconds` is per unit (e.g. per OSD device) and multiplied by the count
    # A poll for a condition that starts converging when earlier steps finish, not when the poll starts:
    # it ends `settle_s` after the last of its direct predecessors of these kinds, or `seconds` after its own
    # start, whichever is later (e.g. PGs peer from the moment the OSDs are up, while monitors are still added).
    settles_after: tuple[str, ...] = ()
    settle_s: int = 0


STEP_DURATIONS: dict[str, Duration] = {
    # Made on the machine running pulumi: no network, no host.
    "random:index/randomPassword:RandomPassword": Duration(0, "generated locally by pulumi-random"),
    "tls:index/privateKey:PrivateKey": Duration(0, "generated locally by pulumi-tls"),
    # Outer host.
    "proxmoxve:download/fileLegacy:FileLegacy": Duration(
        120, "Debian 13 genericcloud qcow2 is ~400 MB: ~2 min at ~30 Mbit/s to cloud.debian.org (estimate)"),
    "vm:outer": Duration(
        60, "import the image into the VM disk, allocate the Ceph disks, first boot to SSH via cloud-init (estimate)"),
    "apt-proxy": Duration(3, "one apt.conf.d file written or removed (components/scripts/apt-proxy.sh)"),
    # install-pve.sh (components/scripts/install-pve.sh, pve9-cli.md "Install PVE 9 on Debian 13").
    "node-scripts": Duration(2, "one SSH command writing the scripts (~60 KB) to the node"),
    "install-pve:prepare": Duration(
        360, "apt full-upgrade of the cloud image + proxmox-default-kernel (~150 MB of packages) (estimate)"),
    "install-pve:reboot": Duration(60, "reboot into the PVE kernel, SSH back: ~1 min"),
    "install-pve:finish": Duration(
        480, "apt install proxmox-ve postfix open-iscsi chrony: ~1 GB of packages, the longest apt run (estimate)"),
    "install-pve:ready": Duration(30, "pveversion and the API on :8006 answer shortly after the install"),
    "node-network": Duration(10, "write /etc/network/interfaces, move the address onto vmbr0 (ifreload -a) (estimate)"),
    # The golden node template (nodes.source: template; components/node_template.py): built once, then cloned.
    "vm:builder": Duration(
        60, "import the image into the builder's disk, first boot to SSH via cloud-init (estimate, as vm:outer)"),
    "node-seal": Duration(15, "stop the PVE services, remove the identity files, schedule the power-off (estimate)"),
    "outer-template": Duration(
        45, "the builder powers off, then qm template renames its disk to a base volume (estimate)"),
    "vm:outer@clone": Duration(
        20, "linked clone of the template (a thin snapshot on LVM-thin/ZFS/Ceph) + Ceph disks + start (estimate; "
            "a full clone copies the system disk: ~1-3 min)"),
    "node-firstboot:identity": Duration(
        60, "the clone's first boot: cloud-init sets its name, address and keys, SSH comes up (estimate)"),
    "install-pve:prepare@clone": Duration(10, "/etc/hosts only: everything is installed, nothing downloaded"),
    "node-firstboot:pve": Duration(20, "pmxcfs restart, pvecm updatecerts --force, pveproxy restart (estimate)"),
    "node-firstboot:ready": Duration(10, "identity checks, pveversion and the API answer at once"),
    "ceph-install@clone": Duration(5, "the template holds the Ceph packages: the script only checks"),
    # Cluster (pve9-cli.md "Cluster (pvecm)").
    "cluster-create": Duration(30, "pvecm create, then pmxcfs/corosync up with a quorum of one (estimate)"),
    "cluster-fingerprint": Duration(5, "one pvesh call on the first node"),
    "node-evict": Duration(
        5, "reads corosync.conf and the instance record; a no-op unless the node's VM was rebuilt (estimate)"),
    "cluster-join": Duration(
        60, "pvecm add copies the cluster config, restarts corosync, then the quorum wait (estimate)"),
    # The first node's own join step (through node 2, for a rebuilt node 1: components/cluster.py): on a first
    # build node 1 created the cluster, so cluster-join.sh finds it a member and changes nothing.
    "cluster-join@creator": Duration(
        5, "node 1 created the cluster: the join script's membership check only (a full join, ~1 min, only "
           "after node 1's VM was rebuilt) (estimate)"),
    "cluster-quorum": Duration(10, "pvecm status polled until quorate with every node (estimate)"),
    # Ceph (pve9-cli.md "Ceph (pveceph)").
    "ceph-install": Duration(240, "pveceph install: the Ceph packages through apt (~300 MB) (estimate)"),
    "ceph-init": Duration(10, "pveceph init writes /etc/pve/ceph.conf"),
    "ceph-mon": Duration(60, "pveceph mon create (+ mgr), one node at a time (estimate)"),
    "ceph-osd": Duration(60, "pveceph osd create: ~1 min per data disk (estimate)", per_unit="OSD device"),
    "ceph-health": Duration(
        10, "one `ceph status` read when everything is already active+clean; PGs peer from the moment the OSDs "
            "are up, so it ends ~2 min after the last OSD step, whichever is later (estimate)",
        settles_after=("ceph-osd",), settle_s=120),
    # Rolling restart (components/rolling_restart.py): on a first build nothing is pending, only checks run.
    "command:local:Command": Duration(
        5, "one API read of the VM's pending changes; a reboot (~1-2 min) only after a size change (estimate)"),
    "node-restart-wait": Duration(10, "pvecm/ceph/ha-manager read once when the node never went down (estimate)"),
    # Inside the nested cluster, through its API.
    "proxmoxve:ceph/pool:Pool": Duration(30, "pool create + RBD storage entry; PGs go active (estimate)"),
    "vm:inner": Duration(15, "create a small VM with an empty disk on Ceph (estimate)"),
    # ha.testVmImage (pvelab/ha_guest.py): a tiny OS for the test VMs, fetched by a nested node.
    "proxmoxve:storage/directoryLegacy:DirectoryLegacy": Duration(
        5, "one storage.cfg entry (POST /storage); PVE makes the directory when it first uses it"),
    "image:inner": Duration(
        130, "a Debian 13 genericcloud qcow2 is ~400 MB: ~2 min at ~30 Mbit/s (as the outer image), plus PVE's "
             "digest and qemu-img checks (estimate; a smaller image is faster)"),
    "vm:inner@image": Duration(
        60, "create the VM, qemu-img convert the image (3 GiB virtual) onto Ceph RBD in the nested "
            "cluster, write the cloud-init drive (estimate)"),
    "proxmoxve:index/haresource:Haresource": Duration(10, "ha-manager add: one API call"),
    "proxmoxve:index/harule:Harule": Duration(5, "ha-manager rules add: one API call"),
    "proxmoxve:index/hagroup:Hagroup": Duration(5, "ha-manager groupadd (PVE 8): one API call"),
    # A classroom student's pool, user, ACLs and network on the outer host (components/student_access.py).
    "proxmoxve:index/poolLegacy:PoolLegacy": Duration(2, "one API call"),
    "proxmoxve:index/userLegacy:UserLegacy": Duration(2, "one API call"),
    "proxmoxve:index/acl:Acl": Duration(2, "one API call"),
    "proxmoxve:sdn/vnet:Vnet": Duration(5, "one API call (pending until applied)"),
    "proxmoxve:sdn/applier:Applier": Duration(
        20, "PUT /cluster/sdn reloads the network configuration on every outer node (estimate)"),
}

# Steps without an entry (a new script or resource type) count this much, marked as a default.
DEFAULT_DURATION = Duration(60, "no table entry: 1 min assumed")

# Not part of `pulumi up`, shown next to the estimate: how long the HA drill's failover takes.
# pve9-cli.md "HA": fence delay 60 s + lock lifetime 120 s, "plan for 2-3 minutes".
HA_FAILOVER_S = (120, 180)


def duration_for(kind: str, units: int = 1) -> tuple[int, Duration, bool]:
    """(seconds, table entry, whether the default was used) for a step kind."""
    entry = STEP_DURATIONS.get(kind)
    if entry is None:
        return DEFAULT_DURATION.seconds, DEFAULT_DURATION, True
    seconds = entry.seconds * max(1, units) if entry.per_unit else entry.seconds
    return seconds, entry, False


def format_duration(seconds: float) -> str:
    """`~6 min`, `~45 s`, `~1 h 05 min`: short, and visibly an estimate."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"~{seconds} s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"~{minutes} min"
    return f"~{minutes // 60} h {minutes % 60:02d} min"


def format_offset(seconds: float) -> str:
    """An offset from the start of `pulumi up`: t+0:00, t+12:30 (minutes:seconds), t+1:02:00."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"t+{h}:{m:02d}:{s:02d}" if h else f"t+{m}:{s:02d}"

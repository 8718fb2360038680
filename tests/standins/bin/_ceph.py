"""Shared Ceph state for the Ceph stand-ins (pveceph, ceph, ceph-volume).

Cluster state: $STANDIN_STATE/cluster/ceph.json (fsid, networks, mons, mgrs, osds, config db, pools, and a
poll counter `ticks`). Every `ceph` call that talks to the cluster is one poll: it advances `ticks`, and
what was created becomes ready a few polls later (a monitor joins the quorum, an OSD boots), so scripts
must poll for it, but no wall-clock time is involved. After an OSD is created, once all OSDs are up, the
next `peering` status/health queries report HEALTH_WARN (PGs peering) before HEALTH_OK. `delays` in the state sets those poll counts;
tests that cannot afford a sleep between polls set them to 0 with `set_delays`.

Per-node disks: $STANDIN_STATE/nodes/<node>/disks.json, keyed by kernel device (`/dev/sdb`): what a disk
holds (`{"content": "ceph-osd", "cluster_fsid", "osd_id", "osd_fsid"}`, or e.g. `{"content": "ext4"}`);
nodes/<node>/blockdevs.json: each disk's serial (what lsblk shows). The disk itself is a file in the node's
tree, `dev/sdb`, with its by-id name a relative symlink to it (`add_disk`; the name depends on the outer
host's QEMU machine version, see `by_id_name`).
Installed packages live in the node's Debian state (`_debian.debian_state`), plus `ceph_release`.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from _debian import (PVE_MANAGER_VERSION, debian_state, die, fault, load, locked_json, log_call, node,  # noqa: F401
                     root, state_dir)

VERSIONS = {"squid": "19.2.3", "tentacle": "20.2.0"}
COMMITS = {"squid": "c92aebb279828e9c3c1f5d24613efca272649e62", "tentacle": "7a3b5c1e9d2f4a6b8c0d1e3f5a7b9c1d3e5f7a9b"}
# PVE 9 ships ceph-common (the `ceph` CLI) from its own repository: `ceph --version` answers before any
# `pveceph install`, naming squid, although no monitor/OSD/manager package is installed.
PVE_CLIENT_RELEASE = "squid"
# pve-manager's Ceph releases (PVE/Ceph/Releases.pm, debian/changelog): tentacle was added as a preview
# ("unsupported": pveceph install refuses it off a terminal without --allow-experimental) in 9.1.5, and
# became the default, no longer gated, in 9.1.13. Before 9.1.5 PVE 9 offers squid only.
TENTACLE_PREVIEW_FROM = (9, 1, 5)
TENTACLE_DEFAULT_FROM = (9, 1, 13)
CEPH_PACKAGES = ["ceph", "ceph-base", "ceph-common", "ceph-fuse", "ceph-mds", "ceph-mgr", "ceph-mon", "ceph-osd",
                 "ceph-volume", "gdisk", "nvme-cli", "python3-ceph-argparse", "librados2", "librbd1"]
DEFAULT_DELAYS = {"mon_quorum": 1, "osd_up": 1, "peering": 2}
DEFAULT_OSD_MEMORY_TARGET = "4294967296"
POOL_DEFAULT_SIZE = 3  # osd_pool_default_size that pveceph init writes
BY_ID = "dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_"


def empty_cluster() -> dict:
    return {"fsid": None, "public_network": None, "cluster_network": None, "mons": {}, "mgrs": {}, "osds": {},
            "config": {}, "pools": {}, "ticks": 0, "peering_polls": 0, "delays": dict(DEFAULT_DELAYS)}


def cluster_path(state: Path | None = None) -> Path:
    return (state or state_dir()) / "cluster" / "ceph.json"


def cluster_state():
    """Locked read-modify-write of the shared Ceph state."""
    return locked_json(cluster_path(), empty_cluster())


def load_cluster(state: Path) -> dict:
    path = cluster_path(state)
    return json.loads(path.read_text()) if path.exists() else empty_cluster()


def set_delays(state: Path, **delays: int) -> None:
    path = cluster_path(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_cluster(state)
    data["delays"].update(delays)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


# --- disks -------------------------------------------------------------------------------------------

def disks_path(state: Path | None = None, name: str | None = None) -> Path:
    return (state or state_dir()) / "nodes" / (name or node()) / "disks.json"


def disk_state():
    return locked_json(disks_path(), {})


def load_disks() -> dict:
    path = disks_path()
    return json.loads(path.read_text()) if path.exists() else {}


def by_id_name(serial: str, kernel_name: str, qemu_machine: int) -> str:
    """The udev by-id name of a virtio-scsi disk `scsiN` (N from sdX: sda is scsi0) with that serial.

    qemu-server (src/PVE/QemuServer/DriveDevice.pm) sets device_id=drive-scsiN from machine version 10 on;
    QEMU (hw/scsi/scsi-disk.c) uses device_id for the VPD 0x83 identifier and falls back to the serial only
    without it. udev's scsi_id turns that identifier into ID_SERIAL `0QEMU_QEMU_HARDDISK_<identifier>`.
    """
    index = ord(kernel_name[2]) - ord("a")
    return f"{BY_ID}drive-scsi{index}" if qemu_machine >= 10 else f"{BY_ID}{serial}"


def add_disk(state: Path, name: str, node_root: Path, serial: str, kernel_name: str, content: dict | None = None,
             qemu_machine: int = 10) -> None:
    """Give node `name` a disk `/dev/<kernel_name>` with this serial, holding `content` (None: blank).

    Its by-id link is what the outer host's QEMU machine version gives (`by_id_name`: 10 and later is PVE 9,
    the default; 9 is PVE 8.4); lsblk shows the serial either way (nodes/<node>/blockdevs.json).
    """
    (node_root / "dev").mkdir(parents=True, exist_ok=True)
    (node_root / "dev" / kernel_name).write_text("")
    by_id = node_root / "dev/disk/by-id"
    by_id.mkdir(parents=True, exist_ok=True)
    for old in by_id.iterdir():  # the kernel name's previous stable names (another serial or QEMU)
        if old.is_symlink() and os.readlink(old) == f"../../{kernel_name}":
            old.unlink()
    link = node_root / by_id_name(serial, kernel_name, qemu_machine)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"../../{kernel_name}")
    record_blockdev(state, name, kernel_name, serial)
    path = disks_path(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    disks = json.loads(path.read_text()) if path.exists() else {}
    if content is None:
        disks.pop(f"/dev/{kernel_name}", None)
    else:
        disks[f"/dev/{kernel_name}"] = content
    path.write_text(json.dumps(disks, indent=1, sort_keys=True))


def record_blockdev(state: Path, name: str, kernel_name: str, serial: str) -> None:
    """What lsblk shows of node `name`'s disk /dev/<kernel_name>: its serial (nodes/<node>/blockdevs.json)."""
    blockdevs = (state / "nodes" / name / "blockdevs.json")
    blockdevs.parent.mkdir(parents=True, exist_ok=True)
    devs = json.loads(blockdevs.read_text()) if blockdevs.exists() else {}
    devs[f"/dev/{kernel_name}"] = {"serial": serial, "size": "32G"}
    blockdevs.write_text(json.dumps(devs, indent=1, sort_keys=True))


def remove_disk(state: Path, name: str, node_root: Path, kernel_name: str) -> None:
    """Detach /dev/<kernel_name> from node `name` (device node, by-id links, lsblk entry)."""
    for link in (node_root / "dev/disk/by-id").iterdir():
        if link.is_symlink() and os.readlink(link) == f"../../{kernel_name}":
            link.unlink()
    (node_root / "dev" / kernel_name).unlink(missing_ok=True)
    blockdevs = state / "nodes" / name / "blockdevs.json"
    devs = json.loads(blockdevs.read_text()) if blockdevs.exists() else {}
    devs.pop(f"/dev/{kernel_name}", None)
    blockdevs.write_text(json.dumps(devs, indent=1, sort_keys=True))


def resolve_device(path: str) -> str | None:
    """The kernel device (/dev/sdb) a path in the node's tree points to, or None when it does not exist."""
    full = root() / path.lstrip("/")
    if not full.exists():
        return None
    return "/" + str(full.resolve().relative_to(root().resolve()))


# --- packages ----------------------------------------------------------------------------------------

def pve_manager_version() -> tuple[int, ...]:
    """This node's pve-manager version: debian.json's `pve_manager_version`, else _debian.PVE_MANAGER_VERSION."""
    text = load().get("pve_manager_version") or PVE_MANAGER_VERSION
    return tuple(int(part) for part in text.split("/")[0].split("."))


def set_pve_manager_version(state: Path, name: str, version: str) -> None:
    """Tests: make node `name` run pve-manager `version` (e.g. "9.1.13")."""
    with_state = load(state, name)
    with_state["pve_manager_version"] = version
    path = state / "nodes" / name / "debian.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(with_state, indent=1, sort_keys=True))


def ceph_releases() -> tuple[list[str], str, set[str]]:
    """(releases pveceph install offers, its default, the experimental ones) on this node's pve-manager."""
    version = pve_manager_version()
    if version >= TENTACLE_DEFAULT_FROM:
        return ["squid", "tentacle"], "tentacle", set()
    if version >= TENTACLE_PREVIEW_FROM:
        return ["squid", "tentacle"], "squid", {"tentacle"}
    return ["squid"], "squid", set()


def real_dpkg() -> bool:
    """STANDIN_REAL_APT=1: a booted container (tests/containers) with real apt and dpkg, where `pveceph install`
    runs real apt-get against the stand-in Proxmox repository and dpkg's database says what is installed."""
    return os.environ.get("STANDIN_REAL_APT") == "1"


def dpkg_installed() -> dict[str, str]:
    """Package -> version of every installed package, from the real dpkg database."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Version}\n"],
                         capture_output=True, text=True).stdout
    return {f[1]: f[2] for f in (line.split() for line in out.splitlines()) if len(f) == 3 and f[0] == "installed"}


def installed_packages() -> set[str]:
    if real_dpkg():
        return set(dpkg_installed())
    return set(load()["packages"])


def client_release() -> str:
    if real_dpkg():  # the release of the installed ceph-common (e.g. 19.2.3-pve1: squid)
        version = dpkg_installed().get("ceph-common")
        if version is None:
            die("bash: ceph: command not found", 127)
        return next((r for r, v in VERSIONS.items() if version.startswith(v)), version)
    return load().get("ceph_release") or PVE_CLIENT_RELEASE


def version_line(release: str) -> str:
    return f"ceph version {VERSIONS[release]} ({COMMITS[release]}) {release} (stable)"


# --- cluster views -----------------------------------------------------------------------------------

def tick(data: dict) -> None:
    data["ticks"] += 1


def quorum(data: dict) -> list[str]:
    return sorted(m for m, info in data["mons"].items() if info["ready_at"] <= data["ticks"])


def osd_is_up(data: dict, osd: dict) -> bool:
    return osd["up_at"] <= data["ticks"]


def osd_counts(data: dict) -> tuple[int, int, int]:
    osds = data["osds"].values()
    return len(osds), sum(osd_is_up(data, o) for o in osds), sum(bool(o["in"]) for o in osds)


def health(data: dict) -> tuple[str, list[tuple[str, str, str]]]:
    """(status, [(check, summary, detail)]) as the monitors would report it."""
    checks = []
    q, mons = quorum(data), sorted(data["mons"])
    if len(q) < len(mons):
        down = [m for m in mons if m not in q]
        checks.append(("MON_DOWN", f"{len(down)}/{len(mons)} mons down, quorum {','.join(q)}",
                       "\n".join(f"    mon.{m} (rank {mons.index(m)}) is down (out of quorum)" for m in down)))
    if not data["mgrs"]:
        checks.append(("MGR_DOWN", "no active mgr", ""))
    total, up, _ = osd_counts(data)
    if total < POOL_DEFAULT_SIZE:
        checks.append(("TOO_FEW_OSDS", f"OSD count {total} < osd_pool_default_size {POOL_DEFAULT_SIZE}", ""))
    if up < total:
        checks.append(("OSD_DOWN", f"{total - up} osds down", ""))
    elif total and data["peering_polls"] > 0:
        checks.append(("PG_AVAILABILITY", "Reduced data availability: 1 pg peering",
                       "    pg 1.0 is stuck peering for 61s, current state peering, last acting [0,1,2]"))
    if fault("slow-op-alert"):  # BlueStore's wording (src/os/bluestore/BlueStore.cc), kept for 24 h
        checks.append(("BLUESTORE_SLOW_OP_ALERT", "1 OSD(s) experiencing slow operations in BlueStore",
                       "     osd.0 observed slow operation indications in BlueStore"))
    if fault("recent-crash"):  # the mgr crash module (src/pybind/mgr/crash/module.py), kept for two weeks
        checks.append(("RECENT_CRASH", "1 daemons have recently crashed",
                       "    mgr.pve1 crashed on host pve1 at 2026-11-30T09:58:01.123456Z"))
    if fault("health-stays-warn"):
        other = mons[-1] if mons else "pve1"
        checks.append(("MON_CLOCK_SKEW", f"clock skew detected on mon.{other}",
                       f"    mon.{other} clock skew 0.213s > max 0.05s (latency 0.0011s)"))
    return ("HEALTH_WARN" if checks else "HEALTH_OK"), checks


def health_polled(data: dict) -> None:
    """A status/health query was answered: PGs that were peering get one poll closer to active+clean."""
    total, up, _ = osd_counts(data)
    if total and up == total and data["peering_polls"] > 0:
        data["peering_polls"] -= 1


def pg_state(data: dict) -> str:
    """The one PG's state (the .mgr pool's): peering right after OSDs came up, then active+clean."""
    total, up, _ = osd_counts(data)
    if up < total:
        return "undersized+degraded+peered"
    return "peering" if data["peering_polls"] > 0 else "active+clean"


def status_json(data: dict) -> dict:
    status, checks = health(data)
    total, up, num_in = osd_counts(data)
    q = quorum(data)
    return {
        "fsid": data["fsid"],
        "health": {"status": status, "mutes": [],
                   "checks": {c: {"severity": "HEALTH_WARN", "summary": {"message": s, "count": 1}, "muted": False}
                              for c, s, _ in checks}},
        "election_epoch": 2 * len(data["mons"]) + 1,
        "quorum": [sorted(data["mons"]).index(m) for m in q],
        "quorum_names": q,
        "quorum_age": 60,
        "monmap": {"epoch": len(data["mons"]), "min_mon_release_name": data.get("release", "squid"),
                   "num_mons": len(data["mons"])},
        "osdmap": {"epoch": 4 + 3 * total, "num_osds": total, "num_up_osds": up, "osd_up_since": 0,
                   "num_in_osds": num_in, "osd_in_since": 0, "num_remapped_pgs": 0},
        "pgmap": {"pgs_by_state": [{"state_name": pg_state(data), "count": 1}] if total else [],
                  "num_pgs": 1 if total else 0, "num_pools": 1 if total else 0, "num_objects": 2 if total else 0},
        "mgrmap": {"available": bool(data["mgrs"]), "num_standbys": max(len(data["mgrs"]) - 1, 0),
                   "modules": ["iostat", "nfs", "restful"], "services": {}},
        "servicemap": {"epoch": 1, "modified": "", "services": {}},
        "progress_events": {},
    }


def status_text(data: dict) -> str:
    status, checks = health(data)
    total, up, num_in = osd_counts(data)
    q, mgrs = quorum(data), sorted(data["mgrs"])
    lines = ["  cluster:", f"    id:     {data['fsid']}", f"    health: {status}"]
    lines += [f"            {summary}" for _, summary, _ in checks]
    lines += [" ", "  services:", f"    mon: {len(data['mons'])} daemons, quorum {','.join(q)} (age 1m)"]
    if mgrs:
        lines.append(f"    mgr: {mgrs[0]}(active, since 1m)" + (f", standbys: {', '.join(mgrs[1:])}" if mgrs[1:] else ""))
    else:
        lines.append("    mgr: no daemons active")
    lines.append(f"    osd: {total} osds: {up} up (since 30s), {num_in} in (since 30s)")
    lines += [" ", "  data:", f"    pools:   {1 if total else 0} pools, {1 if total else 0} pgs",
              f"    pgs:     {'1 ' + pg_state(data) if total else ''}".rstrip(), ""]
    return "\n".join(lines) + "\n"


def health_text(data: dict, detail: bool) -> str:
    status, checks = health(data)
    out = [status + (" " + "; ".join(s for _, s, _ in checks) if checks else "")]
    if detail:
        for check, summary, more in checks:
            out.append(f"[WRN] {check}: {summary}")
            if more:
                out.append(more)
    return "\n".join(out) + "\n"


def render_conf(data: dict) -> str:
    glob = {"auth_client_required": "cephx", "auth_cluster_required": "cephx", "auth_service_required": "cephx",
            "fsid": data["fsid"], "mon_allow_pool_delete": "true", "osd_pool_default_min_size": "2",
            "osd_pool_default_size": "3"}
    if data["public_network"]:
        glob["public_network"] = data["public_network"]
    if data["cluster_network"]:
        glob["cluster_network"] = data["cluster_network"]
    if data["mons"]:
        glob["mon_host"] = " ".join(info["addr"] for _, info in sorted(data["mons"].items()))
    sections = [("global", glob), ("client", {"keyring": "/etc/pve/priv/$cluster.$name.keyring"})]
    sections += [(f"mon.{m}", {"public_addr": info["addr"]}) for m, info in sorted(data["mons"].items())]
    return "\n".join(f"[{name}]\n" + "".join(f"\t{k} = {v}\n" for k, v in sorted(body.items()))
                     for name, body in sections)


def write_conf(data: dict) -> None:
    """pmxcfs's /etc/pve/ceph.conf, written into the calling node's tree (sharing between nodes is not modelled)."""
    path = root() / "etc/pve/ceph.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_conf(data))
    (root() / "etc/pve/ceph").mkdir(exist_ok=True)


def new_uuid() -> str:
    return str(uuid.uuid4())

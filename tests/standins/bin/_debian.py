"""Per-node Debian state shared by the install stand-ins (apt-get, dpkg-query, systemctl, uname, ...).

State file: $STANDIN_STATE/nodes/<node>/debian.json. A node without that file is an installed PVE 9 node
(what the cluster/Ceph/HA stand-ins expect); tests of the install script seed a fresh Debian 13
genericcloud node with `seed_fresh(state_dir, node)` first.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from standin_lib import die, fault, locked_json, log_call, node, node_dir, root, state_dir  # noqa: E402,F401

DEBIAN_KERNEL = "6.12.48+deb13-cloud-amd64"
PVE_KERNEL = "6.17.2-1-pve"
PVE_MANAGER_VERSION = "9.1.1/42db4a6cf33dac83"
# Bytes the curl stand-in serves as the Proxmox archive keyring (tests pass their sha256 as KEYRING_SHA256).
STANDIN_KEYRING = b"stand-in proxmox archive keyring (not a real OpenPGP key)\n"
KEYRING_URL_PREFIX = "https://enterprise.proxmox.com/debian/proxmox-archive-keyring-"

# pve-manager installs this conffile, enabled (pve-manager configs/pve-sources.sources, configs/Makefile).
PVE_ENTERPRISE_SOURCES = """Types: deb
URIs: https://enterprise.proxmox.com/debian/pve
Suites: trixie
Components: pve-enterprise
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
"""

FRESH_PACKAGES = [
    "bash", "coreutils", "cloud-init", "curl", "ca-certificates", "openssh-server", "systemd",
    "systemd-timesyncd", "grub-efi-amd64", "linux-image-cloud-amd64", f"linux-image-{DEBIAN_KERNEL}",
]
FRESH_UNITS = {
    "ssh.service": {"enabled": "enabled", "active": True},
    "ssh.socket": {"enabled": "disabled", "active": False},
    "systemd-timesyncd.service": {"enabled": "enabled", "active": True},
    "cloud-init.service": {"enabled": "enabled", "active": True},
}
PVE_PACKAGES = ["proxmox-ve", "pve-manager", "pve-cluster", "qemu-server", "proxmox-archive-keyring",
                "proxmox-default-kernel", "proxmox-kernel-6.17", f"proxmox-kernel-{PVE_KERNEL}-signed",
                "postfix", "open-iscsi", "chrony", "qemu-guest-agent"]
PVE_UNITS = {
    "pve-cluster.service": {"enabled": "enabled", "active": True},
    "pveproxy.service": {"enabled": "enabled", "active": True},
    "pvedaemon.service": {"enabled": "enabled", "active": True},
    "chrony.service": {"enabled": "enabled", "active": True},
    "postfix.service": {"enabled": "enabled", "active": True},
    "iscsid.service": {"enabled": "enabled", "active": True},
    "qemu-guest-agent.service": {"enabled": "static", "active": True},
}

# What installing a package also brings: extra packages, units it enables and starts, packages it replaces.
PACKAGE_EFFECTS = {
    "proxmox-default-kernel": {"adds": ["proxmox-kernel-6.17", f"proxmox-kernel-{PVE_KERNEL}-signed"]},
    "proxmox-ve": {"adds": ["pve-manager", "pve-cluster", "qemu-server", "proxmox-archive-keyring"],
                   "units": ["pve-cluster.service", "pveproxy.service", "pvedaemon.service"]},
    "chrony": {"units": ["chrony.service"], "replaces": ["systemd-timesyncd"]},
    "postfix": {"units": ["postfix.service"]},
    "open-iscsi": {"units": ["iscsid.service"]},
    "qemu-guest-agent": {"units": ["qemu-guest-agent.service"], "static": True},
    "corosync-qnetd": {"units": ["corosync-qnetd.service"]},  # Debian enables and starts it
    "corosync-qdevice": {},  # started by `pvecm qdevice setup` on every node
}


def installed_pve_state() -> dict:
    return {
        "packages": sorted(set(FRESH_PACKAGES) - {"systemd-timesyncd", "linux-image-cloud-amd64",
                                                   f"linux-image-{DEBIAN_KERNEL}"} | set(PVE_PACKAGES)),
        "running_kernel": PVE_KERNEL, "default_kernel": PVE_KERNEL,
        "units": {**{k: v for k, v in FRESH_UNITS.items() if k != "systemd-timesyncd.service"}, **PVE_UNITS},
        "debconf": {}, "apt_lists": ["debian", "proxmox"], "scheduled": [], "hostname": None,
    }


def fresh_state() -> dict:
    return {
        "packages": sorted(FRESH_PACKAGES), "running_kernel": DEBIAN_KERNEL, "default_kernel": DEBIAN_KERNEL,
        "units": json.loads(json.dumps(FRESH_UNITS)), "debconf": {}, "apt_lists": ["debian"],
        "scheduled": [], "hostname": None,
    }


def state_path(state: Path | None = None, name: str | None = None) -> Path:
    if state is None:
        return node_dir(name) / "debian.json"
    return state / "nodes" / (name or node()) / "debian.json"


def seed_fresh(state: Path, name: str, packages: list[str] | None = None) -> None:
    """Make `name` a freshly booted Debian 13 genericcloud VM (optionally with other packages)."""
    data = fresh_state()
    if packages is not None:
        data["packages"] = sorted(packages)
    path = state_path(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def load(state: Path | None = None, name: str | None = None) -> dict:
    path = state_path(state, name)
    return json.loads(path.read_text()) if path.exists() else installed_pve_state()


def debian_state():
    """Locked read-modify-write of this node's state."""
    return locked_json(state_path(), installed_pve_state())


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def hostname(data: dict) -> str:
    return data.get("hostname") or node()


def env_flag() -> str:
    return os.environ.get("DEBIAN_FRONTEND", "")

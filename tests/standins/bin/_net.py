"""Network state of a node for the stand-in ip, ifreload and networkctl (what the kernel and the two network
managers of a Debian 13 cloud VM with PVE on it hold).

State: $STANDIN_STATE/nodes/<node>/net.json
  links     {name: {"kind": "ether"|"bridge", "addrs": ["10.10.10.11/24"], "master": None|"vmbr0"}}
  routes    [{"dst": "default", "via": "10.10.10.1", "dev": "ens18"}]
  networkd  links systemd-networkd manages (it has a .network file for them under /run/systemd/network)
Files in the node's tree (PVE_LAB_ROOT) are what cloud-init rendered: with the netplan renderer (Debian
cloud images) /etc/netplan/50-cloud-init.yaml and netplan's generated /run/systemd/network/10-netplan-<nic>.network;
with the ENI renderer /etc/network/interfaces.d/50-cloud-init, sourced by /etc/network/interfaces.
`seed_cloud_node` sets a node up like that; `boot` recomputes the state from the files, as a reboot does
(cloud-init renders its network config again unless /etc/cloud/cloud.cfg.d/*.cfg says
`network: {config: disabled}`; then networkd applies its .network files, then ifupdown2's networking.service
applies /etc/network/interfaces). Sources: cloud-init doc/rtd/reference/network-config.rst (disabling
network configuration), ifupdown2 (ifupdown2/addons/bridge.py, address.py), systemd-networkd.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

from _debian import debian_state, installed_pve_state, die, log_call, node, root, state_dir  # noqa: F401

NETPLAN_FILE = "etc/netplan/50-cloud-init.yaml"
ENI_FILE = "etc/network/interfaces.d/50-cloud-init"
INTERFACES = "etc/network/interfaces"
NETWORKD_DIR = "run/systemd/network"
CLOUD_CFG_D = "etc/cloud/cloud.cfg.d"


def net_path(state: Path | None = None, name: str | None = None) -> Path:
    return (state or state_dir()) / "nodes" / (name or node()) / "net.json"


def load(state: Path | None = None, name: str | None = None) -> dict:
    path = net_path(state, name)
    if not path.exists():
        die("stand-in network tools: no network state for this node (tests call _net.seed_cloud_node)", 2)
    return json.loads(path.read_text())


def save(data: dict, state: Path | None = None, name: str | None = None) -> None:
    net_path(state, name).write_text(json.dumps(data, indent=1, sort_keys=True))


def seed_cloud_node(state: Path, name: str, node_root: Path, address: str, gateway: str,
                    link1: str | None = None, renderer: str = "netplan") -> None:
    """A PVE node as pve-lab's install leaves it: cloud-init configured ens18 (and ens19 for link1)."""
    nics = {"ens18": address, **({"ens19": link1} if link1 else {})}
    (node_root / CLOUD_CFG_D).mkdir(parents=True, exist_ok=True)
    (node_root / "etc/cloud/cloud-init-network.json").write_text(
        json.dumps({"renderer": renderer, "nics": nics, "gateway": gateway}))
    render_cloud_network(node_root)
    data = {"links": {"lo": {"kind": "loopback", "addrs": ["127.0.0.1/8"], "master": None}}, "routes": [],
            "networkd": []}
    for nic in nics:
        data["links"][nic] = {"kind": "ether", "addrs": [], "master": None}
    save(data, state, name)
    path = state / "nodes" / name / "debian.json"
    debian = json.loads(path.read_text()) if path.exists() else installed_pve_state()
    for unit in ("systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service"):
        debian["units"][unit] = {"enabled": "enabled" if renderer == "netplan" else "disabled",
                                 "active": renderer == "netplan"}
    debian["units"]["networking.service"] = {"enabled": "enabled", "active": True}
    path.write_text(json.dumps(debian, indent=1, sort_keys=True))
    boot(state, name, node_root, render=False)


def cloud_network_disabled(node_root: Path) -> bool:
    folder = node_root / CLOUD_CFG_D
    return any(re.search(r"^network:\s*\{\s*config:\s*disabled\s*\}", f.read_text(), re.M)
               for f in sorted(folder.glob("*.cfg")))


def render_cloud_network(node_root: Path) -> None:
    """cloud-init's network stage: write the VM's ipconfig in the image's renderer format."""
    meta = json.loads((node_root / "etc/cloud/cloud-init-network.json").read_text())
    nics, gateway = meta["nics"], meta["gateway"]
    if meta["renderer"] == "netplan":
        lines = ["# This file is generated from information provided by the datasource.", "network:",
                 "    version: 2", "    ethernets:"]
        for nic, cidr in nics.items():
            lines += [f"        {nic}:", "            addresses:", f"            - {cidr}"]
            if nic == "ens18":
                lines += ["            routes:", "            -   to: default", f"                via: {gateway}"]
        (node_root / NETPLAN_FILE).parent.mkdir(parents=True, exist_ok=True)
        (node_root / NETPLAN_FILE).write_text("\n".join(lines) + "\n")
        netplan_generate(node_root)
    else:
        lines = ["auto lo", "iface lo inet loopback", ""]
        for nic, cidr in nics.items():
            lines += [f"auto {nic}", f"iface {nic} inet static", f"    address {cidr}"]
            if nic == "ens18":
                lines.append(f"    gateway {gateway}")
            lines.append("")
        (node_root / ENI_FILE).parent.mkdir(parents=True, exist_ok=True)
        (node_root / ENI_FILE).write_text("\n".join(lines))
        interfaces = node_root / INTERFACES
        if not interfaces.exists():
            interfaces.write_text("source /etc/network/interfaces.d/*\n")


def netplan_generate(node_root: Path) -> None:
    """netplan's generator (at boot, `netplan apply`): /run/systemd/network/10-netplan-<nic>.network from
    /etc/netplan/50-cloud-init.yaml (the stand-in reads the same ipconfig the yaml was written from)."""
    folder = node_root / NETWORKD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("10-netplan-*.network"):
        f.unlink()
    if not (node_root / NETPLAN_FILE).exists():
        return
    meta = json.loads((node_root / "etc/cloud/cloud-init-network.json").read_text())
    for nic, cidr in meta["nics"].items():
        route = f"\n[Route]\nGateway={meta['gateway']}\n" if nic == "ens18" else ""
        (folder / f"10-netplan-{nic}.network").write_text(f"[Match]\nName={nic}\n\n[Network]\nAddress={cidr}\n{route}")


def networkd_config(node_root: Path) -> dict[str, dict]:
    """{link: {"address", "gateway"}} from the .network files networkd reads."""
    config = {}
    for f in sorted((node_root / NETWORKD_DIR).glob("*.network")):
        text = f.read_text()
        name = re.search(r"^Name=(\S+)", text, re.M)
        address = re.search(r"^Address=(\S+)", text, re.M)
        gateway = re.search(r"^Gateway=(\S+)", text, re.M)
        if name:
            config[name.group(1)] = {"address": address and address.group(1), "gateway": gateway and gateway.group(1)}
    return config


def parse_interfaces(node_root: Path) -> dict[str, dict]:
    """ifupdown2's view of /etc/network/interfaces (with `source` globs): {iface: {method, address, gateway, ports}}."""
    stanzas: dict[str, dict] = {}

    def read(path: Path) -> None:
        current = None
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] == "source":
                pattern = words[1].lstrip("/")
                for included in sorted(node_root.glob(pattern)):
                    if included.is_file():
                        read(included)
                current = None
            elif words[0] == "iface":
                current = stanzas.setdefault(words[1], {"method": words[3] if len(words) > 3 else "manual",
                                                        "address": None, "gateway": None, "ports": []})
            elif words[0] in ("auto", "allow-hotplug"):
                current = None
            elif current is not None:
                if words[0] == "address":
                    current["address"] = words[1]
                elif words[0] == "gateway":
                    current["gateway"] = words[1]
                elif words[0] == "bridge-ports":
                    current["ports"] = [p for p in words[1:] if p != "none"]

    path = node_root / INTERFACES
    if path.exists():
        read(path)
    return stanzas


def apply_interfaces(data: dict, node_root: Path) -> list[str]:
    """ifreload -a / networking.service: create bridges, enslave ports, add addresses and the gateway.

    Addresses the file does not name are left where they are (ifupdown2 only adds what is configured), so an
    address moved to a bridge must be flushed from the port by whoever moves it. Returns error lines.
    """
    errors = []
    stanzas = parse_interfaces(node_root)
    for name, st in stanzas.items():
        for port in st["ports"]:
            if port not in data["links"]:
                errors.append(f"error: {name}: bridge port {port} does not exist")
    if errors:
        return errors
    for name, st in stanzas.items():
        if st["method"] == "loopback":
            continue
        link = data["links"].setdefault(name, {"kind": "bridge" if st["ports"] or name.startswith("vmbr") else "ether",
                                               "addrs": [], "master": None})
        for port in st["ports"]:
            data["links"][port]["master"] = name
        if st["address"] and st["address"] not in link["addrs"]:
            link["addrs"].append(st["address"])
        if st["gateway"]:
            data["routes"] = [r for r in data["routes"] if r["dst"] != "default"]
            data["routes"].append({"dst": "default", "via": st["gateway"], "dev": name})
    return []


def apply_networkd(data: dict, node_root: Path) -> None:
    config = networkd_config(node_root)
    data["networkd"] = sorted(n for n in config if n in data["links"])
    for name, c in config.items():
        if name in data["links"] and c["address"] and c["address"] not in data["links"][name]["addrs"]:
            data["links"][name]["addrs"].append(c["address"])
        if c["gateway"]:
            data["routes"] = [r for r in data["routes"] if r["dst"] != "default"]
            data["routes"].append({"dst": "default", "via": c["gateway"], "dev": name})


def boot(state: Path, name: str, node_root: Path, render: bool = True) -> dict:
    """A reboot: links come up empty; cloud-init (unless disabled), networkd, then networking.service apply."""
    data = load(state, name)
    for link in list(data["links"]):
        if data["links"][link]["kind"] == "bridge":
            del data["links"][link]
        else:
            data["links"][link].update(addrs=["127.0.0.1/8"] if link == "lo" else [], master=None)
    data["routes"], data["networkd"] = [], []
    if render and not cloud_network_disabled(node_root):
        render_cloud_network(node_root)
    netplan_generate(node_root)  # /run starts empty; netplan's generator fills it from /etc/netplan
    debian = json.loads((state / "nodes" / name / "debian.json").read_text())
    networkd = debian["units"].get("systemd-networkd.service", {})
    networkd["active"] = networkd.get("enabled") == "enabled"
    (state / "nodes" / name / "debian.json").write_text(json.dumps(debian, indent=1, sort_keys=True))
    if networkd["active"]:
        apply_networkd(data, node_root)
    apply_interfaces(data, node_root)
    save(data, state, name)
    return data


def links_with(data: dict, address: str) -> list[str]:
    """The links that hold IPv4 `address` (any prefix)."""
    return [n for n, link in data["links"].items() if any(a.split("/")[0] == address for a in link["addrs"])]


def check_cidr(value: str) -> str:
    ipaddress.ip_interface(value)
    return value

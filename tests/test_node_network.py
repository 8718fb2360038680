"""components/scripts/node-network.sh against the stand-in ip/ifreload/networkctl/systemctl (tests/standins/bin/_net.py).

A node is seeded as pve-lab's install leaves it: PVE installed, the NIC (and the link1 NIC) configured by
cloud-init, either through netplan + systemd-networkd (Debian cloud images) or through
/etc/network/interfaces.d/50-cloud-init (cloud-init's ENI renderer). `_net.boot` is a reboot.
"""
from __future__ import annotations

import json
import re
import sys

import pytest

from node_runner import STANDIN_BIN, FakeNode, standin_log

sys.path.insert(0, str(STANDIN_BIN))
import _net  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

ENV = {"NODE_IP": "10.10.10.11", "NODE_PREFIX": "24", "GATEWAY": "10.10.10.1", "LINK1_IP": "10.10.20.11",
       "LINK1_PREFIX": "24", "DNS_SERVERS": "1.1.1.1 9.9.9.9", "SEARCH_DOMAIN": "lab.example"}
MUTATING = re.compile(r"^pve1: (ip (addr (flush|add)|route replace)|ifreload|systemctl (enable|disable)|networkctl)")


@pytest.fixture(params=["netplan", "eni"])
def node(request, tmp_path) -> FakeNode:
    n = FakeNode("pve1", tmp_path)
    _net.seed_cloud_node(tmp_path, "pve1", n.root, "10.10.10.11/24", "10.10.10.1", link1="10.10.20.11/24",
                         renderer=request.param)
    n.renderer = request.param
    return n


def net(n: FakeNode) -> dict:
    return _net.load(n.state, "pve1")


def units(n: FakeNode) -> dict:
    return json.loads((n.state / "nodes/pve1/debian.json").read_text())["units"]


def assert_bridged(data: dict) -> None:
    assert _net.links_with(data, "10.10.10.11") == ["vmbr0"], data["links"]
    assert data["links"]["ens18"] == {"kind": "ether", "addrs": [], "master": "vmbr0"}
    assert data["links"]["ens19"]["addrs"] == ["10.10.20.11/24"]
    assert [r for r in data["routes"] if r["dst"] == "default"] == [{"dst": "default", "via": "10.10.10.1", "dev": "vmbr0"}]


def test_the_seeded_node_is_what_cloud_init_made(node):
    data = net(node)
    assert _net.links_with(data, "10.10.10.11") == ["ens18"] and "vmbr0" not in data["links"]
    if node.renderer == "netplan":
        assert data["networkd"] == ["ens18", "ens19"]
        assert (node.root / _net.NETPLAN_FILE).is_file()
    else:
        assert (node.root / _net.ENI_FILE).is_file()


def test_the_address_moves_to_vmbr0_and_stays_there_after_a_reboot(node):
    r = node.run_script("node-network", env=ENV)
    assert r.returncode == 0, r.output
    assert r.stdout == ""
    assert_bridged(net(node))
    interfaces = (node.root / "etc/network/interfaces").read_text()
    assert "iface ens18 inet manual" in interfaces
    assert "auto vmbr0\niface vmbr0 inet static\n    address 10.10.10.11/24\n    gateway 10.10.10.1\n" \
           "    bridge-ports ens18\n    bridge-stp off\n    bridge-fd 0\n" in interfaces
    assert "auto ens19\niface ens19 inet static\n    address 10.10.20.11/24\n" in interfaces
    assert (node.root / "etc/cloud/cloud.cfg.d/99-disable-network-config.cfg").read_text() == \
        "network: {config: disabled}\n"
    for rendered in (_net.NETPLAN_FILE, _net.ENI_FILE):
        assert not (node.root / rendered).exists()
    kept = _net.NETPLAN_FILE if node.renderer == "netplan" else _net.ENI_FILE
    assert (node.root / "var/backups/pve-lab-network" / kept).is_file()
    assert (node.root / "etc/resolv.conf").read_text() == "search lab.example\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n"
    u = units(node)
    for unit in ("systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service"):
        assert u[unit]["enabled"] == "disabled" and not u[unit]["active"]
    # The address was never on two links at once: flushed from the NIC right before ifreload put it on vmbr0.
    calls = [c for c in standin_log(node.state) if MUTATING.match(c)]
    assert calls[-2:] == ["pve1: ip addr flush dev ens18", "pve1: ifreload -a"]
    assert_bridged(_net.boot(node.state, "pve1", node.root))


def test_without_turning_cloud_init_off_a_reboot_would_put_the_address_on_two_links(node):
    """Why 99-disable-network-config.cfg: cloud-init renders its network config again at every boot."""
    assert node.run_script("node-network", env=ENV).returncode == 0
    (node.root / "etc/cloud/cloud.cfg.d/99-disable-network-config.cfg").unlink()
    data = _net.boot(node.state, "pve1", node.root)
    if node.renderer == "eni":  # interfaces sources interfaces.d/*: ens18 static again, beside vmbr0
        assert sorted(_net.links_with(data, "10.10.10.11")) == ["ens18", "vmbr0"]
    else:  # netplan's file is back, but networkd is disabled: nothing applies it (the harm comes when it runs)
        assert (node.root / _net.NETPLAN_FILE).exists()


def test_a_second_run_changes_nothing(node):
    assert node.run_script("node-network", env=ENV).returncode == 0
    files = {p: p.read_bytes() for p in node.root.rglob("*") if p.is_file()}
    before = len(standin_log(node.state))
    again = node.run_script("node-network", env=ENV)
    assert again.returncode == 0, again.output
    assert "vmbr0 already holds 10.10.10.11 (port ens18): nothing to move" in again.stderr
    assert not [c for c in standin_log(node.state)[before:] if MUTATING.match(c)]
    assert {p: p.read_bytes() for p in node.root.rglob("*") if p.is_file()} == files
    assert_bridged(net(node))


def test_a_changed_gateway_on_a_bridged_node_is_applied(node):
    assert node.run_script("node-network", env=ENV).returncode == 0
    r = node.run_script("node-network", env={**ENV, "GATEWAY": "10.10.10.254"})
    assert r.returncode == 0, r.output
    assert "applied the changed /etc/network/interfaces" in r.stderr
    assert "    gateway 10.10.10.254\n" in (node.root / "etc/network/interfaces").read_text()
    assert [r["via"] for r in net(node)["routes"] if r["dst"] == "default"] == ["10.10.10.254"]


def test_when_vmbr0_does_not_come_up_the_old_network_is_put_back(node):
    arm_fault(node.state, "ifreload-fails", times=1)
    r = node.run_script("node-network", env=ENV)
    assert r.returncode == 1
    assert "could not move 10.10.10.11 to vmbr0 (ifreload -a exit 1: error: vmbr0:" in r.stderr
    assert "the previous configuration is back" in r.stderr
    data = net(node)
    assert _net.links_with(data, "10.10.10.11") == ["ens18"]
    assert [r["dev"] for r in data["routes"] if r["dst"] == "default"] == ["ens18"]
    assert not (node.root / "etc/cloud/cloud.cfg.d/99-disable-network-config.cfg").exists()
    kept = _net.NETPLAN_FILE if node.renderer == "netplan" else _net.ENI_FILE
    assert (node.root / kept).is_file()
    if node.renderer == "netplan":
        assert units(node)["systemd-networkd.service"]["active"]
        assert not (node.root / "etc/network/interfaces").exists()
    else:
        assert "vmbr0" not in (node.root / "etc/network/interfaces").read_text()
    assert _net.links_with(_net.boot(node.state, "pve1", node.root), "10.10.10.11") == ["ens18"]
    again = node.run_script("node-network", env=ENV)
    assert again.returncode == 0, again.output
    assert_bridged(net(node))


def test_a_wrong_node_address_is_refused_before_anything_changes(node):
    r = node.run_script("node-network", env={**ENV, "NODE_IP": "10.10.10.99"})
    assert r.returncode == 1
    assert "no interface of this node has 10.10.10.99" in r.stderr
    assert not [c for c in standin_log(node.state) if MUTATING.match(c)]
    assert not (node.root / "etc/cloud/cloud.cfg.d/99-disable-network-config.cfg").exists()


@pytest.mark.parametrize("env, message", [
    ({"NODE_PREFIX": ""}, "missing environment variable(s): NODE_PREFIX"),
    ({"NODE_PREFIX": "33"}, "NODE_PREFIX='33' is not a prefix length (1-32)"),
    ({"GATEWAY": "gw"}, "GATEWAY='gw' is not an IPv4 address"),
    ({"LINK1_PREFIX": ""}, "LINK1_IP is set but LINK1_PREFIX is not"),
    # written into /etc/resolv.conf (lib/common.sh input checks)
    ({"SEARCH_DOMAIN": "lab.internal\nnameserver 203.0.113.9"}, "SEARCH_DOMAIN=$'lab.internal\\nnameserver 203.0.113.9' must be a single line"),
    ({"DNS_SERVERS": "10.10.10.1 resolver"}, "DNS_SERVERS='10.10.10.1 resolver' has 'resolver', which is not an IPv4 address"),
])
def test_bad_input_is_named(node, env, message):
    r = node.run_script("node-network", env={**ENV, **env})
    assert r.returncode == 1 and message in r.stderr


def test_the_programs_network_command_runs_unchanged(default_lab, tmp_path):
    from harness import command_text

    n = FakeNode("pve2", tmp_path)
    _net.seed_cloud_node(tmp_path, "pve2", n.root, "10.10.10.12/24", "10.10.10.1")
    r = n.run(command_text(default_lab.named("lab-pve2-network")))
    assert r.returncode == 0, r.output
    data = _net.load(tmp_path, "pve2")
    assert _net.links_with(data, "10.10.10.12") == ["vmbr0"] and data["links"]["ens18"]["master"] == "vmbr0"
    assert (n.root / "etc/resolv.conf").read_text() == "search lab.internal\nnameserver 10.10.10.1\n"

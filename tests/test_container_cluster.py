"""The cluster steps on three booted trixie containers, on a private network the test creates, with the
program's own commands; only what only Proxmox ships is a stand-in (pvecm, pvesh; tests/standins/bin).

Each container gets the stand-ins read-only under /opt/pve-lab-standins and, first on its PATH, wrappers
for just the Proxmox tools; the stand-ins' shared state is bind-mounted at the same path in every node,
and each node's /etc/pve is its folder in that state, as pmxcfs shares /etc/pve between members.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from containers.fixtures import container_host, package_hosts, trixie_image  # noqa: F401 (fixtures)
from containers.lab import STANDINS, LabNode
from containers.nspawn import LabNetwork
from containers.program import run_env
from harness import evaluate_lab
from pvelab.evaluate import MOCK_FINGERPRINT, MOCK_ROOT_PASSWORD, unwrap

sys.path.insert(0, str(STANDINS / "bin"))
import _cluster  # noqa: E402

PROXMOX_TOOLS = ("pvecm", "pvesh", "pveceph", "ceph", "ceph-volume")
STANDIN_MOUNT = "/opt/pve-lab-standins"
WRAPPERS = "/opt/pve-lab-test-bin"
NODES = ("pve1", "pve2", "pve3")
CLUSTER_STEPS = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
                 ("lab-cluster-join-pve2", "pve2"), ("lab-cluster-join-pve3", "pve3"), ("lab-cluster-quorum", "pve1")]
INSTALL_PVE = "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q proxmox-ve"
PROXMOX_SOURCES = """Types: deb
URIs: http://download.proxmox.com/debian/pve
Suites: trixie
Components: pve-no-subscription
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
"""


@pytest.fixture(scope="module")
def lab(package_hosts, trixie_image, tmp_path_factory):
    ev = evaluate_lab()
    assert ev.error is None, ev.error
    commands = {r.name: r for r in ev.records if r.type == "command:remote:Command"}
    state = tmp_path_factory.mktemp("standin-state")
    (state / "cluster").mkdir()
    # The program polls every 5 s: corosync "restarts" at once, so no step has to wait out a poll.
    (state / "cluster" / "instant-restart").write_text("")
    _cluster.set_root_password(state, "pve1", MOCK_ROOT_PASSWORD)
    # The mock runtime answers the fingerprint step with MOCK_FINGERPRINT: pve1's certificate has it.
    _cluster.set_fingerprint(state, "pve1", MOCK_FINGERPRINT)
    wrappers = {f"{WRAPPERS.lstrip('/')}/{tool}": f'#!/bin/sh\nexec {STANDIN_MOUNT}/bin/{tool} "$@"\n'
                for tool in PROXMOX_TOOLS}
    nodes = {}
    for name in NODES:
        pve = state / "nodes" / name / "root" / "etc" / "pve"
        pve.mkdir(parents=True)
        fqdn = run_env(unwrap(commands[f"lab-{name}-prepare"].inputs["create"]))["NODE_FQDN"]
        nodes[name] = LabNode(
            name, fqdn, tmp_path_factory.mktemp(name), package_hosts, trixie_image,
            binds=(f"--bind-ro={STANDINS}:{STANDIN_MOUNT}", f"--bind={state}:{state}", f"--bind={pve}:/etc/pve"),
            session_env={"PATH": f"{WRAPPERS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "STANDIN_STATE": str(state), "STANDIN_NODE": name},
            files={**wrappers, "etc/apt/sources.list.d/proxmox.sources": PROXMOX_SOURCES})
    network = LabNetwork()
    try:
        yield start_lab(nodes, commands, network, package_hosts.keyring.read_bytes(), state)
    finally:
        for node in nodes.values():
            node.destroy()
        network.close()


def start_lab(nodes, commands, network, keyring_bytes: bytes, state) -> dict:
    """Boot the nodes at once, wire them to the lab network, install proxmox-ve on them at once."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.create(), nodes.values()))
    for name, node in nodes.items():
        ip = run_env(unwrap(commands[f"lab-{name}-prepare"].inputs["create"]))["NODE_IP"]
        network.attach(node.container, f"{ip}/24")
        keyring = node.file("usr/share/keyrings/proxmox-archive-keyring.gpg")
        keyring.parent.mkdir(parents=True, exist_ok=True)
        keyring.write_bytes(keyring_bytes)
        # what the prepare step does: the node name maps to the node's address (pmxcfs needs it)
        hosts = node.file("etc/hosts")
        hosts.write_text(hosts.read_text().replace(f"127.0.1.1 {node.fqdn} {name}", f"{ip} {node.fqdn} {name}"))
    # Installed PVE nodes: proxmox-ve from the stand-in repository with real apt (the install steps that do
    # this are tested in test_container_install.py).
    with ThreadPoolExecutor(len(nodes)) as pool:
        installs = list(pool.map(lambda n: n.run(INSTALL_PVE, timeout=600), nodes.values()))
    for r in installs:
        assert r.returncode == 0, r.output[-3000:]
    print(f"3 nodes booted and installed in {time.monotonic() - started:.1f}s")
    return {"nodes": nodes, "commands": commands, "state": state}


def run_steps(lab, steps):
    results = {}
    for name, host in steps:
        record = lab["commands"][name]
        stdin = unwrap(record.inputs.get("stdin")) or ""
        results[name] = lab["nodes"][host].run(unwrap(record.inputs["create"]), stdin=stdin)
    return results


def corosync_confs(lab) -> dict:
    """Each node's /etc/pve/corosync.conf, as the node sees it."""
    return {n: node.run("cat /etc/pve/corosync.conf").stdout for n, node in lab["nodes"].items()}


def test_the_nodes_reach_each_other_on_their_lab_addresses(lab):
    r = lab["nodes"]["pve2"].run("python3 -c \"import socket; s = socket.socket(); s.settimeout(5); "
                                 "print(s.connect_ex(('10.10.10.11', 22)))\"")
    assert r.stdout.strip() == "0", r.output  # pve1's real sshd answers on its lab address


def test_the_cluster_steps_form_a_quorate_cluster_and_a_rerun_changes_nothing(lab):
    first = run_steps(lab, CLUSTER_STEPS)
    for name, r in first.items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert first["lab-cluster-fingerprint"].stdout.strip() == MOCK_FINGERPRINT
    assert "Quorate:          Yes" in first["lab-cluster-quorum"].stdout
    conf = corosync_confs(lab)
    assert len(set(conf.values())) == 1 and "name: pve3" in conf["pve1"]
    again = run_steps(lab, CLUSTER_STEPS)
    for name, r in again.items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert corosync_confs(lab) == conf

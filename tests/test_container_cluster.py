"""The cluster steps on three booted trixie containers, on a private network the test creates, with the
program's own commands; only what only Proxmox ships is a stand-in (pvecm, pvesh; tests/standins/bin).

Each container gets the stand-ins read-only under /opt/pve-lab-standins and, first on its PATH, wrappers
for just the Proxmox tools; the stand-ins' shared state is bind-mounted at the same path in every node,
and each node's /etc/pve is its folder in that state, as pmxcfs shares /etc/pve between members.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from containers import early
from containers.fixtures import container_host  # noqa: F401 (fixture)
from containers.image import TrixieImage
from containers.lab import STANDINS, LabNode, PackageHosts, destroy_all
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
REACH_PVE1_SSH = ("python3 -c \"import socket; s = socket.socket(); s.settimeout(5); "
                  "print(s.connect_ex(('10.10.10.11', 22)))\"")
CLUSTER_STEPS = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
                 ("lab-cluster-join-pve2", "pve2"), ("lab-cluster-join-pve3", "pve3"), ("lab-cluster-quorum", "pve1")]
INSTALL_PVE = "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get install -y -q proxmox-ve"
PROXMOX_SOURCES = """Types: deb
URIs: http://download.proxmox.com/debian/pve
Suites: trixie
Components: pve-no-subscription
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
"""


def prepare(hosts: PackageHosts, image: TrixieImage) -> tuple:
    """Main thread: the program's commands (the default lab, evaluated on the mock runtime)."""
    ev = evaluate_lab()
    assert ev.error is None, ev.error
    return hosts, image, {r.name: r for r in ev.records if r.type == "command:remote:Command"}


def run_cluster(prepared: tuple) -> dict:
    """Background thread: three nodes, the cluster steps twice; what they printed and left."""
    hosts, image, commands = prepared
    folder = Path(tempfile.mkdtemp(prefix="pve-lab-cluster-"))
    state = folder / "standin-state"
    (state / "cluster").mkdir(parents=True)
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
            name, fqdn, folder / name, hosts, image,
            binds=(f"--bind-ro={STANDINS}:{STANDIN_MOUNT}", f"--bind={state}:{state}", f"--bind={pve}:/etc/pve"),
            session_env={"PATH": f"{WRAPPERS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "STANDIN_STATE": str(state), "STANDIN_NODE": name},
            files={**wrappers, "etc/apt/sources.list.d/proxmox.sources": PROXMOX_SOURCES})
    network = LabNetwork()
    try:
        lab = start_lab(nodes, commands, network, hosts.keyring.read_bytes(), state)
        seen = {"reach": nodes["pve2"].run(REACH_PVE1_SSH)}
        seen["first"] = run_steps(lab, CLUSTER_STEPS)
        seen["conf_first"] = corosync_confs(lab)
        seen["again"] = run_steps(lab, CLUSTER_STEPS)
        seen["conf_again"] = corosync_confs(lab)
        return seen
    finally:
        destroy_all(nodes.values())
        network.close()
        shutil.rmtree(folder, ignore_errors=True)


early.register(__name__, prepare, run_cluster)


@pytest.fixture(scope="module")
def seen(container_host):
    return early.result(__name__)


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


def test_the_nodes_reach_each_other_on_their_lab_addresses(seen):
    assert seen["reach"].stdout.strip() == "0", seen["reach"].output  # pve1's real sshd on its lab address


def test_the_cluster_steps_form_a_quorate_cluster_and_a_rerun_changes_nothing(seen):
    for name, r in seen["first"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert seen["first"]["lab-cluster-fingerprint"].stdout.strip() == MOCK_FINGERPRINT
    assert "Quorate:          Yes" in seen["first"]["lab-cluster-quorum"].stdout
    conf = seen["conf_first"]
    assert len(set(conf.values())) == 1 and "name: pve3" in conf["pve1"], conf
    for name, r in seen["again"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert seen["conf_again"] == conf

"""The cluster steps, then the Ceph steps, on three booted trixie containers, on a private network the test
creates, with the program's own commands; only what only Proxmox/Ceph ship is a stand-in (pvecm, pvesh,
pveceph, ceph, ceph-volume; tests/standins/bin), plus lsblk for the OSD disk a container cannot have.

`pveceph install` runs the real apt-get against the stand-in Ceph repository (dummy ceph-* packages of squid
19.2.3, tests/standins/proxmox_repo.py), so ceph-install.sh's real dpkg-query sees what real dpkg installed.

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
import _ceph  # noqa: E402
import _cluster  # noqa: E402

PROXMOX_TOOLS = ("pvecm", "pvesh", "pveceph", "ceph", "ceph-volume")
# A container has no disk of its own to give an OSD (no loop devices, and /sys/block shows the host's disks):
# the OSD disk is a file /dev/sdb with the by-id link a PVE 9 VM's udev makes, and lsblk is the stand-in
# that shows its serial (what QEMU's VPD page 0x80 gives; the QEMU disk test pins that for real).
DISK_STANDINS = ("lsblk",)
OSD_DISK = "sdb"
STANDIN_MOUNT = "/opt/pve-lab-standins"
WRAPPERS = "/opt/pve-lab-test-bin"
NODES = ("pve1", "pve2", "pve3")
REACH_PVE1_SSH = ("python3 -c \"import socket; s = socket.socket(); s.settimeout(5); "
                  "print(s.connect_ex(('10.10.10.11', 22)))\"")
# The cluster steps in the order of the program's graph, each on the node its connection names: node 1
# creates; before each join a surviving member checks for a stale membership of that node (evict); node 1's
# own rejoin check runs through node 2 (a no-op on a first build); then the quorum wait.
CLUSTER_STEPS = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
                 ("lab-cluster-evict-pve2", "pve1"), ("lab-cluster-join-pve2", "pve2"),
                 ("lab-cluster-evict-pve3", "pve1"), ("lab-cluster-join-pve3", "pve3"),
                 ("lab-cluster-fingerprint-pve2", "pve2"), ("lab-cluster-evict-pve1", "pve2"),
                 ("lab-cluster-join-pve1", "pve1"), ("lab-cluster-quorum", "pve1")]
# The Ceph steps in the program's order; the steps of one group run at once, as the program runs them
# (components/ceph.py: installs and OSDs in parallel, monitors one after another).
CEPH_STEPS = [[(f"lab-ceph-install-{n}", n) for n in NODES], [("lab-ceph-init", "pve1")],
              *[[(f"lab-ceph-mon-{n}", n)] for n in NODES], [(f"lab-ceph-osd-{n}", n) for n in NODES],
              [("lab-ceph-health", "pve1")]]
# What a re-run must leave as it was: dpkg's database, the Ceph and cluster configuration, the daemons' folders.
SNAPSHOT = ("sha256sum /var/lib/dpkg/status; find /etc/ceph /etc/pve /etc/apt/sources.list.d -type f -print0 "
            "| sort -z | xargs -0 sha256sum; find /var/lib/ceph | sort")
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
    # Every poll of the Ceph stand-ins is ready at once (the scripts' poll loops are tested on the stand-ins).
    _ceph.set_delays(state, mon_quorum=0, osd_up=0, peering=0)
    wrappers = {f"{WRAPPERS.lstrip('/')}/{tool}": f'#!/bin/sh\nexec {STANDIN_MOUNT}/bin/{tool} "$@"\n'
                for tool in PROXMOX_TOOLS + DISK_STANDINS}
    nodes = {}
    for name in NODES:
        pve = state / "nodes" / name / "root" / "etc" / "pve"
        pve.mkdir(parents=True)
        fqdn = run_env(unwrap(commands[f"lab-{name}-prepare"].inputs["create"]))["NODE_FQDN"]
        nodes[name] = LabNode(
            name, fqdn, folder / name, hosts, image,
            binds=(f"--bind-ro={STANDINS}:{STANDIN_MOUNT}", f"--bind={state}:{state}", f"--bind={pve}:/etc/pve"),
            session_env={"PATH": f"{WRAPPERS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "STANDIN_STATE": str(state), "STANDIN_NODE": name, "STANDIN_REAL_APT": "1"},
            files={**wrappers, "etc/apt/sources.list.d/proxmox.sources": PROXMOX_SOURCES},
            scripts=(unwrap(commands[f"lab-{name}-scripts"].inputs["create"]),
                     unwrap(commands[f"lab-{name}-scripts"].inputs["stdin"])))
    network = LabNetwork()
    try:
        lab = start_lab(nodes, commands, network, hosts.keyring.read_bytes(), state)
        seen = {"reach": nodes["pve2"].run(REACH_PVE1_SSH)}
        seen["first"] = run_steps(lab, CLUSTER_STEPS)
        seen["conf_first"] = corosync_confs(lab)
        seen["again"] = run_steps(lab, CLUSTER_STEPS)
        seen["conf_again"] = corosync_confs(lab)
        started = time.monotonic()
        present_osd_disks(lab, commands)
        seen["ceph_first"] = run_groups(lab, CEPH_STEPS)
        seen["ceph_seconds"] = time.monotonic() - started
        seen["snapshot_first"] = snapshots(lab)
        seen["ceph_state_first"] = ceph_state(state)
        seen["dpkg"] = nodes["pve1"].run("dpkg-query -W -f '${db:Status-Status} ${Package} ${Version}\\n' "
                                         "ceph ceph-mon ceph-osd ceph-mgr ceph-common ceph-volume gdisk nvme-cli")
        started = time.monotonic()
        seen["ceph_again"] = run_groups(lab, CEPH_STEPS)
        seen["ceph_again_seconds"] = time.monotonic() - started
        seen["snapshot_again"] = snapshots(lab)
        seen["ceph_state_again"] = ceph_state(state)
        seen["requests"] = nodes["pve2"].requests()
        print(f"Ceph steps: {seen['ceph_seconds']:.1f}s, again {seen['ceph_again_seconds']:.1f}s")
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
        # what pvecm's join checks read from the node's interfaces (Setup.pm assert_joinable)
        _cluster.set_addresses(state, name, ip)
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
    addresses = {n: run_env(unwrap(commands[f"lab-{n}-prepare"].inputs["create"]))["NODE_IP"] for n in nodes}
    return {"nodes": nodes, "commands": commands, "state": state, "addresses": addresses}


def run_steps(lab, steps):
    results = {}
    for name, host in steps:
        record = lab["commands"][name]
        assert record.plain("connection")["host"] == lab["addresses"][host], f"{name} runs on another node"
        stdin = unwrap(record.inputs.get("stdin")) or ""
        results[name] = lab["nodes"][host].run(unwrap(record.inputs["create"]), stdin=stdin)
        if results[name].returncode != 0:  # later steps depend on this one, as in the program
            break
    return results


def run_groups(lab, groups):
    """Each group's steps at once, the groups one after another; stops after a group with a failed step."""
    results = {}
    for group in groups:
        with ThreadPoolExecutor(len(group)) as pool:
            done = list(pool.map(lambda step: run_steps(lab, [step]), group))
        for r in done:
            results.update(r)
        if any(r.returncode != 0 for r in results.values()):
            break
    return results


def present_osd_disks(lab, commands) -> None:
    """Each node's OSD disk with the serial the program gives it: the device, its by-id link, what lsblk shows."""
    for name, node in lab["nodes"].items():
        serial = run_env(unwrap(commands[f"lab-ceph-osd-{name}"].inputs["create"]))["OSD_SERIALS"]
        by_id = _ceph.by_id_name(serial, OSD_DISK, qemu_machine=10)
        r = node.run(f": > /dev/{OSD_DISK} && mkdir -p /dev/disk/by-id && ln -sfn ../../{OSD_DISK} /{by_id}")
        assert r.returncode == 0, r.output
        _ceph.record_blockdev(lab["state"], name, OSD_DISK, serial)


def snapshots(lab) -> dict:
    return {n: node.run(SNAPSHOT).stdout for n, node in lab["nodes"].items()}


def ceph_state(state) -> dict:
    """The Ceph stand-ins' cluster, without their poll counter."""
    data = _ceph.load_cluster(state)
    return {k: data[k] for k in ("fsid", "public_network", "cluster_network", "mons", "mgrs", "osds", "config")}


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


def test_the_ceph_steps_install_real_packages_and_build_a_healthy_ceph(seen):
    for name, r in seen["ceph_first"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert len(seen["ceph_first"]) == sum(len(g) for g in CEPH_STEPS)
    # real dpkg installed the stand-in repository's packages (and Debian's gdisk and nvme-cli)
    installed = dict(line.split(" ", 1)[1].split() for line in seen["dpkg"].stdout.splitlines()
                     if line.startswith("installed "))
    assert installed["ceph-mon"] == installed["ceph-osd"] == installed["ceph-mgr"] == _ceph.VERSIONS["squid"] + "-pve1"
    assert {"ceph", "ceph-common", "ceph-volume", "gdisk", "nvme-cli"} <= set(installed), seen["dpkg"].output
    assert any("download.proxmox.com/debian/ceph-squid/pool/ceph-mon_" in line for line in seen["requests"])
    assert "ceph version 19.2.3" in seen["ceph_first"]["lab-ceph-install-pve2"].stdout
    osds = seen["ceph_state_first"]["osds"]
    assert sorted((o["host"], o["device"]) for o in osds.values()) == [(n, f"/dev/{OSD_DISK}") for n in NODES]
    assert sorted(seen["ceph_state_first"]["mons"]) == list(NODES)
    assert "health: HEALTH_OK" in seen["ceph_first"]["lab-ceph-health"].stdout
    assert all(f"/var/lib/ceph/mon/ceph-{n}" in seen["snapshot_first"][n] for n in NODES)


def test_a_rerun_of_the_ceph_steps_changes_nothing(seen):
    for name, r in seen["ceph_again"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert "already installed" in seen["ceph_again"]["lab-ceph-install-pve3"].output
    assert "already holds osd." in seen["ceph_again"]["lab-ceph-osd-pve1"].output
    assert seen["snapshot_again"] == seen["snapshot_first"]
    assert seen["ceph_state_again"] == seen["ceph_state_first"]

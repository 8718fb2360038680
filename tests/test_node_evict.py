"""components/scripts/node-evict.sh against the stand-ins: a rebuilt node VM (same name, new instance) is removed
from the cluster and from Ceph by a surviving member, then joins again; nothing else is ever evicted.

A rebuilt VM is `_cluster.rebuild_node`: the node's state is wiped (a fresh PVE install in no cluster) while the
cluster still lists it, as after `pulumi up --replace` of a node VM or a VM deleted outside Pulumi.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from harness import command_text
from node_runner import STANDIN_BIN, FakeNode, Result, standin_log
from pvelab.evaluate import MOCK_FINGERPRINT, MOCK_ROOT_PASSWORD, mock_mac, unwrap
from test_cluster_scripts import CLUSTER, FAST, IPS, Lab
from test_ceph_scripts import full_run, health, install, make_lab, mon, ok, osd

sys.path.insert(0, str(STANDIN_BIN))
import _ceph  # noqa: E402
import _cluster  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

OLD, NEW = "9101/BC:24:11:00:00:01", "9101/BC:24:11:0A:0B:0C"
DELNODE = re.compile(r"^pve1: pvecm delnode ")


def evict(node: FakeNode, name: str = "pve2", instance: str = NEW, **env) -> Result:
    return node.run_script("node-evict", env={"NODE_NAME": name, "INSTANCE": instance, **FAST, **env})


def instances(node: FakeNode) -> str:
    path = node.root / "etc/pve/pve-lab/instances"
    return path.read_text() if path.exists() else ""


def instant_restarts(lab: Lab) -> Lab:
    """corosync restarts at once after create/join (no settling answers to poll through): faster tests."""
    (lab.state / "cluster").mkdir(parents=True, exist_ok=True)
    (lab.state / "cluster" / "instant-restart").write_text("")
    return lab


def first_build(lab: Lab) -> None:
    """create, then for each other node: evict (a no-op) and join, then quorum: the program's order."""
    instant_restarts(lab)
    ok(lab.create())
    fp = ok(lab.fingerprint()).stdout.strip()
    for i, name in ((2, "pve2"), (3, "pve3")):
        ok(evict(lab.nodes["pve1"], name, OLD if name == "pve2" else "9102/BC:24:11:00:00:02"))
        ok(lab.join(name, i, fingerprint=fp))
    ok(lab.quorum(3))


def set_addresses_from_program(ev, state) -> None:
    """Each node's addresses as the program's cluster commands name them (LINK0/LINK1): a join needs its links
    configured on the joining node (Setup.pm assert_joinable)."""
    for host in ("pve1", "pve2", "pve3"):
        line = command_text(ev.named(f"lab-cluster-join-{host}")).splitlines()[-1]
        _cluster.set_addresses(state, host, *re.findall(r"\bLINK[01]=(\S+)", line))


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path)


@pytest.fixture(scope="module")
def first_built(tmp_path_factory) -> Path:
    """The state of one `first_build`, made once for this module (read-only: tests get a copy)."""
    state = tmp_path_factory.mktemp("first-build")
    first_build(Lab(state))
    return state


@pytest.fixture
def built(first_built, tmp_path) -> Lab:
    """A lab after `first_build` (a copy of the module's, the same as building it again)."""
    state = tmp_path / "lab"
    shutil.copytree(first_built, state, symlinks=True)
    return Lab(state)


def test_on_a_first_build_eviction_is_a_no_op_that_records_the_instance(built):
    lab = built
    assert not [c for c in lab.calls() if DELNODE.match(c)]
    assert instances(lab.nodes["pve1"]) == f"pve2 {OLD}\npve3 9102/BC:24:11:00:00:02\n"
    # a re-run with the same instance reads state and changes nothing
    before = instances(lab.nodes["pve1"])
    r = ok(evict(lab.nodes["pve1"], "pve2", OLD))
    assert "already recorded as VM instance" in r.stderr and instances(lab.nodes["pve1"]) == before


def test_a_rebuilt_node_still_listed_cannot_join_until_it_is_evicted(built):
    lab = built
    _cluster.rebuild_node(lab.state, "pve2")
    lab.nodes["pve2"] = FakeNode("pve2", lab.state)
    refused = lab.join("pve2", 3)
    assert refused.returncode != 0 and "can't add existing node 'pve2'" in refused.output
    r = ok(evict(lab.nodes["pve1"]))
    assert "pvecm delnode pve2" in r.stderr
    assert [c for c in lab.calls() if DELNODE.match(c)] == ["pve1: pvecm delnode pve2"]
    assert f"pve2 {NEW}" in instances(lab.nodes["pve1"])
    ok(lab.join("pve2", 3))
    assert "Quorate:          Yes" in ok(lab.quorum(3)).stdout
    # the next `up` (same instance): nothing to evict, no second delnode
    ok(evict(lab.nodes["pve1"]))
    assert len([c for c in lab.calls() if DELNODE.match(c)]) == 1


def test_a_live_member_is_never_evicted(built):
    lab = built
    r = evict(lab.nodes["pve1"])  # a new instance id, but the old VM still runs as pve2
    assert r.returncode == 1
    assert "pve2 is online in the cluster" in r.stderr and "Refusing to remove a live member" in r.stderr
    assert not [c for c in lab.calls() if DELNODE.match(c)]


def test_an_offline_member_without_a_recorded_instance_is_not_guessed(lab):
    lab.form(3)  # a lab built before instances were recorded
    _cluster.power_off(lab.state, "pve2")
    r = evict(lab.nodes["pve1"])
    assert r.returncode == 1 and "no VM instance was recorded for it" in r.stderr
    assert "if it is only powered off, start it" in r.stderr.splitlines()[-1]
    _cluster.power_on(lab.state, "pve2")
    r = ok(evict(lab.nodes["pve1"]))  # online: this is the current VM, recorded as such
    assert "recording it as VM instance" in r.stderr and f"pve2 {NEW}" in instances(lab.nodes["pve1"])


def test_eviction_waits_for_quorum_then_fails_with_the_last_status(built):
    lab = built
    _cluster.rebuild_node(lab.state, "pve2")
    arm_fault(lab.state, "no-quorum")
    r = evict(lab.nodes["pve1"], DEADLINE_S="0.3")
    assert r.returncode == 1
    assert "did not become quorate within 0.3s" in r.stderr and "Quorate: No" in r.stderr
    assert "Start the members that are down" in r.stderr.splitlines()[-1]
    assert not [c for c in lab.calls() if DELNODE.match(c)]
    assert f"pve2 {OLD}" in instances(lab.nodes["pve1"])  # not recorded: the next run tries again


def test_eviction_is_refused_on_the_node_itself_and_outside_a_cluster(lab):
    r = evict(lab.nodes["pve2"])
    assert r.returncode == 1 and "this is pve2 itself" in r.stderr
    r = evict(lab.nodes["pve1"])
    assert r.returncode == 1 and "this node is in no cluster" in r.stderr


def test_a_rebuilt_node_gets_its_ceph_monitor_and_osd_back(built):
    lab = built
    state = lab.state
    nodes = make_lab(state)
    _ceph.set_delays(state, mon_quorum=0, osd_up=0, peering=0)
    full_run(nodes)
    old = _ceph.load_cluster(state)
    old_osd = next(k for k, o in old["osds"].items() if o["host"] == "pve2")
    # pmxcfs shares /etc/pve/ceph.conf; the stand-ins write it on the calling node only: give pve1 the full one.
    (nodes["pve1"].root / "etc/pve/ceph.conf").write_text(_ceph.render_conf(old))
    conf = (nodes["pve1"].root / "etc/pve/ceph.conf").read_text()
    assert "[mon.pve2]" in conf and "10.10.10.12" in conf

    _cluster.rebuild_node(state, "pve2")  # new VM: new empty disk, no Ceph packages
    fresh = FakeNode("pve2", state)
    _ceph.add_disk(state, "pve2", fresh.root, "pvelab-osd0", "sdb")
    r = ok(evict(nodes["pve1"]))
    data = _ceph.load_cluster(state)
    assert sorted(data["mons"]) == ["pve1", "pve3"]
    assert old_osd not in data["osds"] and all(o["host"] != "pve2" for o in data["osds"].values())
    conf = (nodes["pve1"].root / "etc/pve/ceph.conf").read_text()
    assert "[mon.pve2]" not in conf
    mon_host = next(line for line in conf.splitlines() if "mon_host" in line)
    assert "10.10.10.12" not in mon_host and "10.10.10.11" in mon_host and "10.10.10.13" in mon_host
    assert f"purging osd.{old_osd} of pve2" in r.stderr
    # the old OSD was still up for the monitors: marked down first (purge answers EBUSY otherwise)
    calls = [c for c in standin_log(state) if re.search(rf"ceph .*osd (down|purge) {old_osd}\b", c)]
    assert [c.split(" osd ")[1].split()[0] for c in calls] == ["down", "purge"]

    ok(lab.join("pve2", 3))
    ok(install(fresh))
    ok(mon(fresh))
    ok(osd(fresh))
    r = ok(health(nodes["pve1"]))
    assert "HEALTH_OK" in r.stdout
    data = _ceph.load_cluster(state)
    assert sorted(data["mons"]) == ["pve1", "pve2", "pve3"] and len(data["osds"]) == 3
    # evicting again (same instance) touches nothing
    calls = len(standin_log(state))
    ok(evict(nodes["pve1"]))
    assert not [c for c in standin_log(state)[calls:] if re.search(r": (pvecm delnode|ceph (mon remove|osd purge))", c)]


def test_the_programs_evict_and_join_commands_rejoin_a_rebuilt_node(default_lab, tmp_path):
    """The exact `create` text of the program's cluster steps: first build, then pve3's VM rebuilt."""
    from pvelab import evaluate

    state = tmp_path
    nodes = {n: FakeNode(n, state) for n in ("pve1", "pve2", "pve3")}
    _cluster.set_root_password(state, "pve1", MOCK_ROOT_PASSWORD)
    _cluster.set_fingerprint(state, "pve1", MOCK_FINGERPRINT)
    set_addresses_from_program(default_lab, state)
    (state / "cluster").mkdir()
    (state / "cluster" / "instant-restart").write_text("")

    def run_steps(ev, steps):
        for name, host in steps:
            record = ev.named(name)
            r = nodes[host].run(command_text(record), stdin=unwrap(record.inputs.get("stdin")) or "")
            assert r.returncode == 0, f"{name}: {r.output}"

    order = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
             ("lab-cluster-evict-pve2", "pve1"), ("lab-cluster-join-pve2", "pve2"),
             ("lab-cluster-evict-pve3", "pve1"), ("lab-cluster-join-pve3", "pve3"),
             ("lab-cluster-fingerprint-pve2", "pve2"), ("lab-cluster-evict-pve1", "pve2"),
             ("lab-cluster-join-pve1", "pve1"), ("lab-cluster-quorum", "pve1")]
    run_steps(default_lab, order)
    assert f"pve3 9102/{mock_mac('lab-pve3-vm', 0)}" in instances(nodes["pve1"])
    assert not [c for c in standin_log(state) if DELNODE.match(c) or ": pvecm delnode" in c]

    # pve3's VM is created anew: a new MAC, the same VMID
    from harness import evaluate_lab

    evaluate.MOCK_REBUILT_VMS.add("lab-pve3-vm")
    try:
        rebuilt = evaluate_lab()
    finally:
        evaluate.MOCK_REBUILT_VMS.clear()
    changed = {r.name for r in rebuilt.records if r.type == "command:remote:Command"
               and unwrap(r.inputs.get("triggers")) != unwrap(default_lab.named(r.name).inputs.get("triggers"))}
    # every step of pve3 re-runs, plus the cluster/Ceph checks over all nodes; nothing of pve1/pve2 does
    assert changed == {"lab-pve3-scripts", "lab-pve3-apt-proxy", "lab-pve3-prepare", "lab-pve3-reboot",
                       "lab-pve3-finish", "lab-pve3-ready", "lab-pve3-network",
                       "lab-cluster-evict-pve3", "lab-cluster-join-pve3", "lab-cluster-quorum",
                       "lab-ceph-install-pve3", "lab-ceph-mon-pve3", "lab-ceph-osd-pve3", "lab-ceph-health"}
    _cluster.rebuild_node(state, "pve3")
    nodes["pve3"] = FakeNode("pve3", state)
    run_steps(rebuilt, [("lab-cluster-evict-pve3", "pve1"), ("lab-cluster-join-pve3", "pve3"),
                        ("lab-cluster-quorum", "pve1")])
    assert [c for c in standin_log(state) if DELNODE.match(c)] == ["pve1: pvecm delnode pve3"]
    assert CLUSTER in (nodes["pve3"].root / "etc/pve/corosync.conf").read_text()
    assert IPS["pve3"] in (nodes["pve1"].root / "etc/pve/corosync.conf").read_text()


def test_a_rebuilt_node_1_rejoins_through_node_2(default_lab, tmp_path):
    """Node 1 created the cluster; rebuilt, it must not create a second one: node 2 evicts it, it joins node 2."""
    from harness import evaluate_lab
    from pvelab import evaluate

    state = tmp_path
    nodes = {n: FakeNode(n, state) for n in ("pve1", "pve2", "pve3")}
    for n in nodes:
        _cluster.set_root_password(state, n, MOCK_ROOT_PASSWORD)
    set_addresses_from_program(default_lab, state)
    (state / "cluster").mkdir()
    (state / "cluster" / "instant-restart").write_text("")

    def run_steps(ev, steps):
        for name, host in steps:
            record = ev.named(name)
            r = nodes[host].run(command_text(record), stdin=unwrap(record.inputs.get("stdin")) or "")
            assert r.returncode == 0, f"{name}: {r.output}"

    def with_fingerprints(ev):  # the mock answers every fingerprint step with MOCK_FINGERPRINT
        for n in nodes:
            _cluster.set_fingerprint(state, n, MOCK_FINGERPRINT)
        return ev

    first_build = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
                   ("lab-cluster-evict-pve2", "pve1"), ("lab-cluster-join-pve2", "pve2"),
                   ("lab-cluster-evict-pve3", "pve1"), ("lab-cluster-join-pve3", "pve3"),
                   ("lab-cluster-fingerprint-pve2", "pve2"), ("lab-cluster-evict-pve1", "pve2"),
                   ("lab-cluster-join-pve1", "pve1"), ("lab-cluster-quorum", "pve1")]
    run_steps(with_fingerprints(default_lab), first_build)

    evaluate.MOCK_REBUILT_VMS.add("lab-pve1-vm")
    try:
        rebuilt = evaluate_lab()
    finally:
        evaluate.MOCK_REBUILT_VMS.clear()
    changed = {r.name for r in rebuilt.records if r.type == "command:remote:Command"
               and unwrap(r.inputs.get("triggers")) != unwrap(default_lab.named(r.name).inputs.get("triggers"))}
    assert {"lab-cluster-evict-pve1", "lab-cluster-join-pve1", "lab-cluster-quorum"} <= changed
    assert not {"lab-cluster-create", "lab-cluster-fingerprint", "lab-cluster-join-pve2"} & changed
    _cluster.rebuild_node(state, "pve1")
    nodes["pve1"] = FakeNode("pve1", state)
    _cluster.set_root_password(state, "pve1", MOCK_ROOT_PASSWORD)
    run_steps(with_fingerprints(rebuilt), [("lab-cluster-evict-pve1", "pve2"), ("lab-cluster-join-pve1", "pve1"),
                                           ("lab-cluster-quorum", "pve1")])
    assert [c for c in standin_log(state) if ": pvecm delnode" in c] == ["pve2: pvecm delnode pve1"]
    assert not [c for c in standin_log(state) if c.startswith("pve1: pvecm create")][1:]  # created once only
    conf = (nodes["pve1"].root / "etc/pve/corosync.conf").read_text()
    assert f"cluster_name: {CLUSTER}" in conf and "name: pve1" in conf

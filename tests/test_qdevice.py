"""QDevice for even node counts: the graph on Pulumi's mock runtime, and the node scripts against the stand-ins.

Scripts run for real (tests/node_runner.FakeNode): a 2-node fake cluster, a fresh Debian fake node as the
QNetd host, and the stand-in `pvecm qdevice setup` (pve-cluster src/PVE/CLI/pvecm.pm setup_qdevice).
"""
from __future__ import annotations

import json
import sys

import pytest

from harness import COMMAND, VM, command_text, evaluate_lab, leaked_secrets
from node_runner import STANDIN_BIN, FakeNode
from pvelab.provider_types import check_all
from pvelab.qdevice import qdevice_plan
from pvelab.spec import SpecError, parse_spec
from test_cluster_scripts import FAST, IPS, Lab

sys.path.insert(0, str(STANDIN_BIN))
import _cluster  # noqa: E402
import _debian  # noqa: E402

TWO_NODES = {"nodes": {"count": 2, "qdevice": True}, "ha": {"enabled": False}, "ceph": {"enabled": False}}


# ------------------------------------------------------------------ spec and graph

def test_even_counts_with_a_qdevice_are_accepted_and_odd_ones_refused():
    from harness import deep_merge, lab_raw

    spec = parse_spec(deep_merge(lab_raw(), TWO_NODES))
    plan = qdevice_plan(spec)
    assert (plan.hostname, plan.ip, plan.vmid) == ("pve-qdevice", "10.10.10.13", 9102)
    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(lab_raw(), {"nodes": {"qdevice": True}}))
    assert "pve-lab:lab.nodes.qdevice: a QDevice is for an even node count, and nodes.count is 3" in err.value.render()
    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(lab_raw(), {"nodes": {"count": 4}}))
    assert "add a QDevice (nodes.qdevice: true)" in err.value.render()
    assert qdevice_plan(parse_spec(lab_raw())) is None


def test_qdevice_graph_for_two_nodes():
    ev = evaluate_lab(TWO_NODES)
    assert ev.error is None, ev.error
    assert check_all(ev.records) == [] and leaked_secrets(ev) == []
    vm = ev.named("lab-qdevice-vm")
    assert vm.type == VM and vm.plain("vmId") == 9102 and vm.plain("name") == "pve-qdevice"
    assert vm.plain("memory")["dedicated"] == 512 and vm.plain("stopOnDestroy") is True
    assert vm.plain("initialization")["ipConfigs"][0]["ipv4"]["address"] == "10.10.10.13/24"
    quorum = ev.named("lab-cluster-quorum")
    pubkey, qnetd, setup = (ev.named(f"lab-qdevice-{s}") for s in ("pubkey", "qnetd", "setup"))
    packages = [ev.named(f"lab-qdevice-packages-pve{i}") for i in (1, 2)]
    assert all(r.type == COMMAND for r in (pubkey, qnetd, setup, *packages))
    assert ev.depends_on(pubkey, quorum) and ev.depends_on(qnetd, pubkey) and ev.depends_on(qnetd, vm)
    assert all(ev.depends_on(setup, p) for p in packages) and ev.depends_on(setup, qnetd)
    run = command_text(setup).splitlines()[-1]
    assert run.endswith('bash "$HOME/pve-lab/qdevice-setup.sh" setup')
    assert "QNETD_ADDRESS=10.10.10.13" in run and "EXPECTED_NODES=2" in run
    assert not setup.inputs.get("delete") and vm.parent == ev.named("lab-qdevice").urn


def test_no_qdevice_by_default():
    ev = evaluate_lab()
    assert not [r for r in ev.records if "qdevice" in r.name]


# ------------------------------------------------------------------ scripts against the stand-ins

QNETD_IP = "10.10.10.13"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIQnetdHostKeyForTests"


class QLab(Lab):
    def __init__(self, state):
        super().__init__(state)
        self.qnetd = FakeNode("qdevice", state)
        _debian.seed_fresh(state, "qdevice")
        (state / "cluster").mkdir(parents=True, exist_ok=True)
        (state / "cluster" / "hosts.json").write_text(json.dumps({QNETD_IP: "qdevice"}))
        key = self.qnetd.root / "etc/ssh/ssh_host_ed25519_key.pub"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(HOST_KEY + " root@pve-qdevice\n")
        ssh = self.nodes["pve1"].root / "root/.ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        (ssh / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        (ssh / "id_rsa.pub").write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQFirstNode root@pve1\n")

    def step(self, node, mode, **env):
        return self.nodes[node].run_script("qdevice-setup", [mode], env={**FAST, **env})

    def qnetd_step(self, key):
        return self.qnetd.run_script("qdevice-qnetd", env={"AUTHORIZED_KEY": key, **FAST})

    def all_steps(self):
        pub = self.step("pve1", "pubkey")
        assert pub.returncode == 0, pub.output
        qn = self.qnetd_step(pub.stdout.strip())
        assert qn.returncode == 0, qn.output
        for node in ("pve1", "pve2"):
            r = self.step(node, "packages")
            assert r.returncode == 0, r.output
        return self.step("pve1", "setup", QNETD_ADDRESS=QNETD_IP, QNETD_HOST_KEY=qn.stdout.strip(),
                         EXPECTED_NODES="2"), qn


@pytest.fixture
def qlab(tmp_path):
    lab = QLab(tmp_path)
    lab.form(2)
    return lab


def test_qdevice_setup_gives_the_tie_breaking_vote(qlab):
    setup, qnetd = qlab.all_steps()
    assert setup.returncode == 0, setup.output
    assert qnetd.stdout == HOST_KEY + "\n"
    assert "corosync-qnetd" in _debian.load(qlab.state, "qdevice")["packages"]
    auth = (qlab.qnetd.root / "root/.ssh/authorized_keys").read_text()
    assert auth == "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQFirstNode root@pve1\n"
    known = (qlab.nodes["pve1"].root / "root/.ssh/known_hosts").read_text()
    assert known == f"{QNETD_IP} {HOST_KEY}\n"
    assert "Flags:            Quorate Qdevice" in setup.stdout and "Total votes:      3" in setup.stdout
    conf = (qlab.nodes["pve2"].root / "etc/pve/corosync.conf").read_text()
    assert f"host: {QNETD_IP}" in conf and "algorithm: ffsplit" in conf
    # the chapter's point: one of two nodes fails, the QDevice's vote keeps the other quorate
    _cluster.power_off(qlab.state, "pve2")
    status = qlab.nodes["pve1"].run("pvecm status")
    assert status.returncode == 0 and "Quorate:          Yes" in status.stdout and "Total votes:      2" in status.stdout


def test_second_run_changes_nothing(qlab):
    first, _ = qlab.all_steps()
    before = {p: p.read_text() for p in qlab.state.glob("nodes/*/root/**/*") if p.is_file()}
    calls = len(qlab.calls())
    second, _ = qlab.all_steps()
    assert second.returncode == 0 and second.stdout.split("Date:")[0] == first.stdout.split("Date:")[0]
    assert not [c for c in qlab.calls()[calls:] if "pvecm qdevice setup" in c or "apt-get install" in c]
    after = {p: p.read_text() for p in qlab.state.glob("nodes/*/root/**/*") if p.is_file()}
    assert after == before


def test_two_nodes_without_a_qdevice_lose_quorum_with_one_node(qlab):
    _cluster.power_off(qlab.state, "pve2")
    status = qlab.nodes["pve1"].run("pvecm status")
    assert status.returncode == 2 and "Quorate:          No" in status.stdout


def test_setup_before_the_key_is_authorized_fails_with_what_to_do(qlab):
    for node in ("pve1", "pve2"):
        assert qlab.step(node, "packages").returncode == 0
    result = qlab.step("pve1", "setup", QNETD_ADDRESS=QNETD_IP, QNETD_HOST_KEY=HOST_KEY, EXPECTED_NODES="2")
    assert result.returncode == 1
    assert "Permission denied (publickey)" in result.stderr
    assert "pvecm qdevice setup 10.10.10.13 failed" in result.stderr and "corosync-qnetd must run" in result.stderr


def test_a_changed_qnetd_host_key_is_not_overwritten(qlab):
    known = qlab.nodes["pve1"].root / "root/.ssh/known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"{QNETD_IP} ssh-ed25519 AAAAOldKey\n")
    result = qlab.step("pve1", "setup", QNETD_ADDRESS=QNETD_IP, QNETD_HOST_KEY=HOST_KEY, EXPECTED_NODES="2")
    assert result.returncode == 1 and "another host key for 10.10.10.13" in result.stderr
    assert "ssh-keygen -R 10.10.10.13" in result.stderr
    assert known.read_text() == f"{QNETD_IP} ssh-ed25519 AAAAOldKey\n"


def test_setup_refuses_an_odd_count_and_a_missing_root_key(qlab):
    result = qlab.step("pve1", "setup", QNETD_ADDRESS=QNETD_IP, QNETD_HOST_KEY=HOST_KEY, EXPECTED_NODES="3")
    assert result.returncode == 1 and "a QDevice is for an even node count" in result.stderr
    (qlab.nodes["pve1"].root / "root/.ssh/id_rsa.pub").unlink()
    result = qlab.step("pve1", "pubkey")
    assert result.returncode == 1 and "pvecm updatecerts" in result.stderr and result.stdout == ""


def test_qnetd_refuses_a_key_that_is_not_one(qlab):
    result = qlab.qnetd_step("not a key; rm -rf /")
    assert result.returncode == 1 and "AUTHORIZED_KEY is not an OpenSSH public key line" in result.stderr

"""components/scripts/cluster-*.sh run for real (tests/node_runner.FakeNode) against the stand-in pvecm/pvesh.

One FakeNode per nested node, all sharing one stand-in state folder (the fake cluster). Nodes without
debian.json are installed PVE 9 nodes. The first node's root password is known to the stand-ins through
_cluster.set_root_password; the joins send it on stdin, exactly as the command provider does.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import command_text
from node_runner import STANDIN_BIN, FakeNode, Result, standin_log
from pvelab.evaluate import MOCK_FINGERPRINT, MOCK_ROOT_PASSWORD, unwrap

sys.path.insert(0, str(STANDIN_BIN))
import _cluster  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent.parent / "components" / "scripts"
PASSWORD = "Pw with 'quotes' $HOME and spaces"
CLUSTER = "pve-lab"
IPS = {f"pve{i}": f"10.10.10.{10 + i}" for i in range(1, 6)}
LINK1 = {f"pve{i}": f"10.10.20.{10 + i}" for i in range(1, 6)}
FAST = {"DEADLINE_S": "30", "POLL_S": "0.02"}  # a bound for a loaded machine: success never waits it out
SHORT = {"DEADLINE_S": "0", "POLL_S": "0.02"}  # timeout tests: the deadline has passed after one try
MUTATING = re.compile(r"^\S+: pvecm (create|add)\b")


class Lab:
    def __init__(self, state: Path):
        self.state = state
        self.nodes = {name: FakeNode(name, state) for name in IPS}
        _cluster.set_root_password(state, "pve1", PASSWORD)
        for name in IPS:
            _cluster.set_addresses(state, name, IPS[name], LINK1[name])

    def create(self, **env) -> Result:
        return self.nodes["pve1"].run_script(
            "cluster-create", env={"CLUSTER_NAME": CLUSTER, "LINK0": IPS["pve1"], **FAST, **env})

    def fingerprint(self) -> Result:
        return self.nodes["pve1"].run_script("cluster-fingerprint", env=FAST)

    def join(self, name: str, expected: int, fingerprint: str | None = None, password: str = PASSWORD,
             **env) -> Result:
        env = {"CLUSTER_NAME": CLUSTER, "FIRST_IP": IPS["pve1"], "LINK0": IPS[name],
               "FINGERPRINT": fingerprint or _cluster.fingerprint("pve1", self.state),
               "EXPECTED_NODES": str(expected), **FAST, **env}
        return self.nodes[name].run_script("cluster-join", env=env, stdin=password + "\n")

    def quorum(self, expected: int = 3, **env) -> Result:
        return self.nodes["pve1"].run_script("cluster-quorum", env={"EXPECTED_NODES": str(expected), **FAST, **env})

    def form(self, count: int = 3) -> list[Result]:
        """create, fingerprint, joins in order, quorum; every step must succeed. The last result is quorum's."""
        steps = [self.create()]
        fp = self.fingerprint()
        steps.append(fp)
        for i in range(2, count + 1):
            steps.append(self.join(f"pve{i}", i, fingerprint=fp.stdout.strip()))
        steps.append(self.quorum(count))
        for step in steps:
            assert step.returncode == 0, step.output
        return steps

    def calls(self) -> list[str]:
        return standin_log(self.state)

    def snapshot(self) -> dict:
        """Everything the cluster's state consists of: configs, memberships, each node's corosync.conf."""
        files = sorted((self.state / "cluster" / "clusters").glob("*.json"))
        files += sorted(self.state.glob("nodes/*/cluster"))
        files += sorted(self.state.glob("nodes/*/root/etc/pve/corosync.conf"))
        return {str(f.relative_to(self.state)): f.read_text() for f in files}


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path)


def error_lines(result: Result) -> str:
    return "\n".join(line for line in result.stderr.splitlines() if line.startswith("pve-lab:"))


# --- the normal path ------------------------------------------------------------------------------

def test_three_nodes_form_a_quorate_cluster_in_order(lab):
    out = lab.form(3)[-1]
    assert "Quorate:          Yes" in out.stdout and "Nodes:            3" in out.stdout
    assert out.stdout.startswith("Cluster information\n-------------------\nName:             pve-lab\n")
    # `pvecm nodes` follows the status: every member by name, in node id order
    assert re.search(r"^\s+1\s+1 pve1 \(local\)\n\s+2\s+1 pve2\n\s+3\s+1 pve3$", out.stdout, re.M)
    conf = (lab.nodes["pve3"].root / "etc/pve/corosync.conf").read_text()
    assert "cluster_name: pve-lab" in conf
    for i in (1, 2, 3):
        assert f"name: pve{i}\n    nodeid: {i}\n    quorum_votes: 1\n    ring0_addr: {IPS[f'pve{i}']}" in conf
    adds = [c for c in lab.calls() if ": pvecm add" in c]
    assert [c.split(":")[0] for c in adds] == ["pve2", "pve3"]
    assert all(f"--fingerprint {_cluster.fingerprint('pve1', lab.state)}" in c for c in adds)


def test_fingerprint_prints_only_the_first_nodes_certificate_fingerprint(lab):
    assert lab.create().returncode == 0
    result = lab.fingerprint()
    assert result.returncode == 0, result.output
    assert result.stdout == _cluster.fingerprint("pve1", lab.state) + "\n"
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}\n", result.stdout)


def test_fingerprint_parses_stdout_only_and_logs_pvesh_warnings(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "stderr-warning")
    result = lab.fingerprint()
    assert result.returncode == 0, result.output
    assert result.stdout == _cluster.fingerprint("pve1", lab.state) + "\n"
    assert "pvesh said on stderr: Use of uninitialized value" in result.stderr


def test_fingerprint_before_the_cluster_exists_fails_clearly(lab):
    result = lab.nodes["pve1"].run_script("cluster-fingerprint", env=SHORT)
    assert result.returncode == 1 and result.stdout == ""
    assert "no join information" in result.stderr and "node is not in a cluster" in result.stderr


def test_second_formation_changes_nothing_and_makes_no_mutating_call(lab):
    first = lab.form(3)[-1]
    before, calls_before = lab.snapshot(), len(lab.calls())
    second = lab.form(3)[-1]
    assert lab.snapshot() == before
    again = lab.calls()[calls_before:]
    assert again, "the second run must still read the state"
    assert not [c for c in again if MUTATING.match(c)]
    assert second.stdout.split("\n", 1)[1].replace(re.search(r"Date:.*", second.stdout).group(0), "") == \
        first.stdout.split("\n", 1)[1].replace(re.search(r"Date:.*", first.stdout).group(0), "")
    assert "already a member of cluster 'pve-lab': nothing to join" in lab.join("pve2", 2).stderr


def test_link1_goes_into_corosync_for_every_node(lab):
    assert lab.create(LINK1=LINK1["pve1"]).returncode == 0
    result = lab.join("pve2", 2, LINK1=LINK1["pve2"])
    assert result.returncode == 0, result.output
    conf = (lab.nodes["pve1"].root / "etc/pve/corosync.conf").read_text()
    assert f"ring1_addr: {LINK1['pve1']}" in conf and f"ring1_addr: {LINK1['pve2']}" in conf
    assert "linknumber: 1" in conf
    # a join without link1 into a two-link cluster is refused by pvecm, and the script says so
    bad = lab.join("pve3", 3)
    assert bad.returncode == 1
    assert "link 1 exists in cluster config but wasn't specified" in bad.stderr
    assert "pvecm add exited 0, but pve3 is not a member of cluster 'pve-lab'" in bad.stderr


def test_join_leaves_etc_pve_first(lab):
    """pvecm add refuses to run inside /etc/pve; the script changes to / first."""
    assert lab.create().returncode == 0
    node = lab.nodes["pve2"]
    node.home = node.root / "etc" / "pve" / "root-home"
    node.home.mkdir(parents=True)
    result = lab.join("pve2", 2)
    assert result.returncode == 0, result.output
    assert "Navigate out of /etc/pve" not in result.stderr


# --- faults ---------------------------------------------------------------------------------------

def test_create_on_a_node_of_another_cluster_fails_then_succeeds_once_cleared(lab):
    _cluster.seed_foreign_cluster(lab.state, "pve1", "oldlab", IPS["pve1"])
    result = lab.create()
    assert result.returncode == 1
    assert "this node is already in cluster 'oldlab' (its /etc/pve/corosync.conf), not in 'pve-lab'" in result.stderr
    assert "re-create this node" in error_lines(result).splitlines()[-1]
    assert not [c for c in lab.calls() if MUTATING.match(c)]
    _cluster.leave_all_clusters(lab.state, "pve1")
    assert lab.create().returncode == 0


def test_join_of_a_node_in_another_cluster_fails_then_succeeds_once_cleared(lab):
    assert lab.create().returncode == 0
    _cluster.seed_foreign_cluster(lab.state, "pve2", "oldlab", IPS["pve2"])
    result = lab.join("pve2", 2)
    assert result.returncode == 1
    assert "pve2 is already in cluster 'oldlab' (its /etc/pve/corosync.conf), not in 'pve-lab'" in result.stderr
    assert not [c for c in lab.calls() if ": pvecm add" in c]
    _cluster.leave_all_clusters(lab.state, "pve2")
    assert lab.join("pve2", 2).returncode == 0


def test_join_of_a_node_with_the_clusters_config_but_not_in_its_node_list_fails_clearly(lab):
    """A half-done join: corosync.conf of the lab's cluster here, but this node is not in its node list."""
    assert lab.create().returncode == 0
    conf = lab.nodes["pve1"].root / "etc/pve/corosync.conf"
    target = lab.nodes["pve2"].root / "etc/pve/corosync.conf"
    target.parent.mkdir(parents=True)
    target.write_text(conf.read_text())
    result = lab.join("pve2", 2)
    assert result.returncode == 1
    assert "pve2 has the /etc/pve/corosync.conf of cluster 'pve-lab' but is not in its node list" in result.stderr
    assert not [c for c in lab.calls() if ": pvecm add" in c]


def test_create_refuses_a_name_pvecm_would_refuse(lab):
    result = lab.create(CLUSTER_NAME="lab-")
    assert result.returncode == 1 and "not ending in '-'" in result.stderr
    assert not [c for c in lab.calls() if MUTATING.match(c)]
    assert lab.nodes["pve1"].run("pvecm create lab- --link0 10.10.10.11").stderr.startswith(
        "400 Parameter verification failed.\nclustername: value does not look like a valid node name")


def test_a_create_that_hangs_is_stopped_at_the_deadline(lab):
    hang = lab.state / "hang-bin"
    hang.mkdir()
    (hang / "pvecm").write_text("#!/bin/sh\n[ \"$1\" = create ] && sleep 60\nexec " + str(STANDIN_BIN / "pvecm") + " \"$@\"\n")
    (hang / "pvecm").chmod(0o755)
    lab.nodes["pve1"].extra_env["PATH"] = f"{hang}:{lab.nodes['pve1'].env()['PATH']}"
    started = time.monotonic()
    result = lab.create(DEADLINE_S="1")
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and "pvecm create did not finish within 1s and was stopped" in result.stderr


def test_create_whose_task_failed_with_exit_0_is_caught(lab):
    arm_fault(lab.state, "create-task-failed", times=1)
    result = lab.create()
    assert result.returncode == 1
    # The CLI task runner prints the bare error (no "TASK ERROR:") and pvecm exits 0 (RESTEnvironment.pm).
    assert "\ncan't lock file '/var/lock/pvecm.lock' - got timeout\n" in result.stderr
    assert "pvecm create exited 0, but this node is not in cluster 'pve-lab' afterwards" in result.stderr
    assert lab.create().returncode == 0


def test_join_whose_task_failed_with_exit_0_is_caught(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "join-task-failed", times=1)
    result = lab.join("pve2", 2)
    assert result.returncode == 1
    assert "pvecm add exited 0, but pve2 is not a member of cluster 'pve-lab' afterwards" in result.stderr
    assert "An error occurred on the cluster node: invalid corosync.conf" in result.stderr
    assert lab.join("pve2", 2).returncode == 0


def test_transient_lock_timeout_is_retried_within_the_deadline(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "join-lock-timeout", times=2)
    result = lab.join("pve2", 2)
    assert result.returncode == 0, result.output
    assert result.stderr.count("got lock request timeout") == 2
    assert "retrying" in result.stderr
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 3


def test_the_members_local_lock_timeout_is_retried(lab):
    """ClusterConfig.pm addnode takes the member's /var/lock/pvecm.lock (10 s) before the cluster lock."""
    assert lab.create().returncode == 0
    arm_fault(lab.state, "member-lock-timeout", times=2)
    result = lab.join("pve2", 2)
    assert result.returncode == 0, result.output
    assert result.stderr.count(
        "An error occurred on the cluster node: can't lock file '/var/lock/pvecm.lock' - got timeout") == 2
    assert "/var/lock/pvecm.lock was held by another cluster operation" in result.stderr
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 3


def test_a_join_that_waits_for_quorum_forever_is_stopped_at_the_deadline(lab):
    """Setup.pm finish_join loops on check_cfs_quorum without a deadline: corosync blocked hangs pvecm add."""
    assert lab.create().returncode == 0
    arm_fault(lab.state, "corosync-blocked")
    started = time.monotonic()
    result = lab.join("pve2", 2, DEADLINE_S="2")
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "waiting for quorum..." in result.stderr
    lines = error_lines(result).splitlines()
    assert "pvecm add was stopped after 2s: 10.10.10.11 added pve2 to cluster 'pve-lab'" in lines[-2]
    assert "UDP 5405-5412" in lines[-1] and "pvecm delnode pve2" in lines[-1]
    # A re-run does not try pvecm add again on the half-joined node: it says what state the node is in.
    again = lab.join("pve2", 2, DEADLINE_S="2")
    assert again.returncode == 1
    assert "pve2 has /etc/corosync/corosync.conf but no /etc/pve/corosync.conf" in again.stderr
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 1


def test_a_hung_pvecm_status_is_stopped_at_each_steps_deadline(lab):
    """`pvecm status` execs corosync-quorumtool, which blocks when corosync hangs: every poll is bounded."""
    assert lab.create().returncode == 0
    arm_fault(lab.state, "quorumtool-hangs")
    started = time.monotonic()
    result = lab.quorum(1, DEADLINE_S="2")
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "was not quorate with 1 members online within 2s" in error_lines(result)
    assert "'pvecm status' exit 124" in error_lines(result) and "corosync hung?" in error_lines(result)


def test_a_join_that_cannot_reach_the_api_in_time_is_stopped(lab, monkeypatch):
    assert lab.create().returncode == 0
    hang = lab.state / "hang-bin"
    hang.mkdir()
    (hang / "pvecm").write_text("#!/bin/sh\ncat >/dev/null; echo \"Establishing API connection with host '$2'\"; sleep 60\n")
    (hang / "pvecm").chmod(0o755)
    lab.nodes["pve2"].extra_env["PATH"] = f"{hang}:{lab.nodes['pve2'].env()['PATH']}"
    started = time.monotonic()
    result = lab.join("pve2", 2, DEADLINE_S="1")
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert "pvecm add did not finish within 1s and was stopped before 10.10.10.11 accepted pve2" in result.stderr


@pytest.mark.parametrize("leftover, reason", [
    ("authkey", "* authentication key '/etc/corosync/authkey' already exists"),
    ("address", "* link0: cannot use IP '10.10.10.12', not found on local node!"),
])
def test_assert_joinable_refusals_stop_at_once(lab, leftover, reason):
    assert lab.create().returncode == 0
    if leftover == "authkey":
        key = lab.nodes["pve2"].root / "etc/corosync/authkey"
        key.parent.mkdir(parents=True)
        key.write_text("old\n")
    else:
        _cluster.set_addresses(lab.state, "pve2", "10.10.10.99")
    result = lab.join("pve2", 2)
    assert result.returncode == 1
    assert reason in result.stderr and "pvecm refused to join this node (pve2)" in result.stderr
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 1


def test_pvecm_add_off_a_terminal_reads_the_password_without_a_prompt(lab):
    assert lab.create().returncode == 0
    result = lab.join("pve2", 2)
    assert result.returncode == 0, result.output
    assert "Please enter superuser" not in result.output


def test_pvecm_status_outside_a_cluster_or_without_pmxcfs_exits_2(lab):
    """Corosync.pm check_conf_exists / Cluster.pm check_cfs_is_mounted die after a failed file test (errno 2)."""
    node = lab.nodes["pve2"]
    no_conf = node.run("pvecm status")
    assert no_conf.returncode == 2
    assert "Corosync config '/etc/pve/corosync.conf' does not exist" in no_conf.stderr
    (lab.state / "nodes" / "pve2" / "pmxcfs-down").write_text("")
    assert node.run("pvecm status").returncode == 2
    assert "pmxcfs) not mounted" in node.run("pvecm nodes").stderr


def test_lock_held_until_the_deadline_fails_then_rerun_succeeds(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "join-lock-timeout")
    result = lab.join("pve2", 2, **SHORT)
    assert result.returncode == 1
    assert "could not join cluster 'pve-lab' within 0s: the cluster was locked or not quorate" in result.stderr
    (lab.state / "faults" / "join-lock-timeout").unlink()
    assert lab.join("pve2", 2).returncode == 0


def test_a_join_while_another_holds_the_cluster_lock_waits_for_it(lab):
    """The real trap of joins at the same time: the cfs lock is busy. The join retries and gets in after."""
    import fcntl

    assert lab.create().returncode == 0
    lock_path = _cluster.clusters_dir(lab.state) / f"{CLUSTER}.cfs-lock"
    result = {}
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another join holds the lock
        joiner = threading.Thread(target=lambda: result.setdefault("pve2", lab.join("pve2", 2)))
        joiner.start()
        deadline = time.monotonic() + 120  # a bound for a loaded machine, not a wait: it ends on the condition
        while len([c for c in lab.calls() if "pve2: pvecm add" in c]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # until pve2 failed on the lock once and tries again
        fcntl.flock(lock, fcntl.LOCK_UN)
    joiner.join()
    assert result["pve2"].returncode == 0, result["pve2"].output
    assert "cfs-lock 'file-corosync_conf' error: got lock request timeout" in result["pve2"].stderr


def test_join_right_after_another_without_its_quorum_wait_is_retried(lab):
    """After a join corosync settles; a join in that window gets 'cluster not ready - no quorum?' and retries."""
    assert lab.create().returncode == 0
    assert lab.join("pve2", 2).returncode == 0
    data = _cluster.load_cluster(CLUSTER, lab.state)
    data["settling"] = ["noquorum", "noquorum", "noquorum"]
    _cluster.cluster_path(CLUSTER, lab.state).write_text(json.dumps(data))
    result = lab.join("pve3", 3)
    assert result.returncode == 0, result.output
    assert "cluster not ready - no quorum?" in result.stderr and "retrying" in result.stderr


def test_first_node_refusing_connections_fails_clearly_then_rerun_succeeds(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "api-refused")
    result = lab.join("pve2", 2, **SHORT)
    assert result.returncode == 1
    assert "Can't connect to 10.10.10.11:8006 (Connection refused)" in result.stderr
    assert "https://10.10.10.11:8006 did not accept the connection" in result.stderr
    assert "not SSH (--use_ssh)" in result.stderr
    (lab.state / "faults" / "api-refused").unlink()
    assert lab.join("pve2", 2).returncode == 0


def test_refused_connection_for_a_while_is_retried(lab):
    assert lab.create().returncode == 0
    arm_fault(lab.state, "api-refused", times=2)
    result = lab.join("pve2", 2)
    assert result.returncode == 0, result.output
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 3


def test_wrong_password_fails_at_once_with_what_to_do(lab):
    assert lab.create().returncode == 0
    result = lab.join("pve2", 2, password="not-the-password")
    assert result.returncode == 1
    assert "the first node (10.10.10.11) rejected the root password (401 authentication failure)" in result.stderr
    assert "pulumi stack output --show-secrets rootPassword" in error_lines(result).splitlines()[-1]
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 1, "a wrong password is not retried"
    assert lab.join("pve2", 2).returncode == 0


def test_fingerprint_mismatch_fails_at_once(lab):
    assert lab.create().returncode == 0
    wrong = ":".join(["AB"] * 32)
    result = lab.join("pve2", 2, fingerprint=wrong)
    assert result.returncode == 1
    assert f"the API certificate of 10.10.10.11 does not have the fingerprint {wrong}" in result.stderr
    assert len([c for c in lab.calls() if ": pvecm add" in c]) == 1
    assert lab.join("pve2", 2).returncode == 0


def test_node_that_may_not_join_gets_the_reason(lab):
    assert lab.create().returncode == 0
    _cluster.add_guests(lab.state, "pve2")
    result = lab.join("pve2", 2)
    assert result.returncode == 1
    assert "* this host already contains virtual guests" in result.stderr
    assert "pvecm refused to join this node (pve2)" in result.stderr
    assert "no guests" in error_lines(result).splitlines()[-1]
    (lab.state / "nodes" / "pve2" / "guests").unlink()
    assert lab.join("pve2", 2).returncode == 0


def test_quorum_timeout_shows_pvecm_status(lab):
    lab.form(3)
    _cluster.power_off(lab.state, "pve2")
    _cluster.power_off(lab.state, "pve3")
    result = lab.quorum(3, **SHORT)
    assert result.returncode == 1 and result.stdout == ""
    assert "last 'pvecm status' (exit 2):" in result.stderr
    assert "Quorate:          No" in result.stderr and "Total votes:      1" in result.stderr
    assert "was not quorate with 3 members online within 0s (members: pve1 pve2 pve3; online: 1;" in result.stderr
    _cluster.power_on(lab.state, "pve2")
    _cluster.power_on(lab.state, "pve3")
    assert lab.quorum(3).returncode == 0


def test_create_waits_for_quorum_with_a_deadline(lab):
    (lab.state / "cluster").mkdir()
    (lab.state / "cluster" / "instant-restart").write_text("")  # the first status already shows the votes
    arm_fault(lab.state, "no-quorum")
    result = lab.create(**SHORT)
    assert result.returncode == 1
    assert "cluster 'pve-lab' did not become quorate within 0s" in result.stderr
    assert "Quorate:          No" in result.stderr and "Quorum:           1 Activity blocked" in result.stderr
    (lab.state / "faults" / "no-quorum").unlink()
    again = lab.create()
    assert again.returncode == 0 and "nothing to create" in again.stderr


def test_shrinking_a_running_lab_is_refused_at_once(lab):
    lab.form(4)
    calls = len(lab.calls())
    result = lab.quorum(3, DEADLINE_S="30")
    assert result.returncode == 1
    # refused at once, from corosync.conf: not after polling `pvecm status` until the deadline
    assert not [c for c in lab.calls()[calls:] if "pvecm status" in c], "a shrink is refused before any poll"
    assert "the cluster has 4 members (pve1 pve2 pve3 pve4), more than EXPECTED_NODES=3 (nodes.count): " \
           "removing nodes from a running lab is refused (extra, the last joined: pve4)" in result.stderr
    assert "destroy and re-create it" in error_lines(result).splitlines()[-1]


def test_quorum_on_a_node_without_cluster_fails_at_once(lab):
    result = lab.quorum(3, DEADLINE_S="30")
    assert result.returncode == 1 and "this node is in no cluster" in result.stderr


@pytest.mark.parametrize("env, message", [
    ({"CLUSTER_NAME": ""}, "missing environment variable(s): CLUSTER_NAME"),
    ({"FINGERPRINT": "AA:BB"}, "FINGERPRINT='AA:BB' is not a SHA-256 fingerprint"),
    ({"LINK0": "pve2"}, "LINK0='pve2' is not an IPv4 address"),
    ({"EXPECTED_NODES": "two"}, "EXPECTED_NODES='two' must be a whole number of nodes"),
    ({"CLUSTER_NAME": "Pve_Lab"}, "CLUSTER_NAME='Pve_Lab' is not allowed"),
    ({"CLUSTER_NAME": "lab-"}, "CLUSTER_NAME='lab-' is not allowed"),  # pvecm would refuse it (pve-node format)
])
def test_join_input_errors_name_the_variable(lab, env, message):
    result = lab.join("pve2", 2, **env)
    assert result.returncode == 1 and message in result.stderr
    assert not [c for c in lab.calls() if ": pvecm" in c]


def test_join_without_a_password_on_stdin_fails_clearly(lab):
    assert lab.create().returncode == 0
    result = lab.join("pve2", 2, password="")
    assert result.returncode == 1 and "no root password on stdin" in result.stderr


# --- secrets --------------------------------------------------------------------------------------

def test_the_password_never_shows(lab):
    outputs = lab.form(3)
    outputs.append(lab.join("pve4", 4, password="wrong " + PASSWORD))  # a failing join, too
    seen = "".join(p.read_text() for p in lab.state.glob("nodes/*/pvecm-add-seen.txt"))
    assert "argv:" in seen and "parent" in seen, "the stand-in recorded what pvecm add could see"
    scripts = "".join(p.read_text() for p in lab.state.glob("nodes/*/home/pve-lab/*.sh"))
    assert scripts
    for text in ("\n".join(lab.calls()), seen, scripts, *(r.stdout + r.stderr for r in outputs)):
        assert PASSWORD not in text


# --- the commands the real program builds ---------------------------------------------------------

def test_the_programs_commands_run_unchanged_against_the_stand_ins(default_lab, tmp_path):
    """Script and component agree on variable names: run the exact `create` text of each cluster step."""
    ev = default_lab
    state = tmp_path
    nodes = {n: FakeNode(n, state) for n in ("pve1", "pve2", "pve3")}
    _cluster.set_root_password(state, "pve1", MOCK_ROOT_PASSWORD)
    for host in nodes:  # the node's own address, as the join command names it (LINK0)
        step = "lab-cluster-create" if host == "pve1" else f"lab-cluster-join-{host}"
        _cluster.set_addresses(state, host, re.search(r"\bLINK0=(\S+)", command_text(ev.named(step)).splitlines()[-1]).group(1))
    # The mock runtime answers the fingerprint step with MOCK_FINGERPRINT; let pve1's certificate have it.
    _cluster.set_fingerprint(state, "pve1", MOCK_FINGERPRINT)
    # POLL_S in the real commands is 5 s: let corosync restart at once so that no step needs to poll.
    (state / "cluster").mkdir()
    (state / "cluster" / "instant-restart").write_text("")
    steps = [("lab-cluster-create", "pve1"), ("lab-cluster-fingerprint", "pve1"),
             ("lab-cluster-join-pve2", "pve2"), ("lab-cluster-join-pve3", "pve3"), ("lab-cluster-quorum", "pve1")]
    results = {}
    for name, host in steps:
        record = ev.named(name)
        stdin = unwrap(record.inputs.get("stdin")) or ""
        results[name] = nodes[host].run(command_text(record), stdin=stdin)
        assert results[name].returncode == 0, f"{name}: {results[name].output}"
    assert results["lab-cluster-fingerprint"].stdout.strip() == MOCK_FINGERPRINT
    assert "Quorate:          Yes" in results["lab-cluster-quorum"].stdout
    assert "Nodes:            3" in results["lab-cluster-quorum"].stdout
    assert MOCK_ROOT_PASSWORD not in "\n".join(standin_log(state))


def test_scripts_are_shellcheck_clean():
    import subprocess

    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = sorted(str(p) for p in SCRIPTS.glob("cluster-*.sh"))
    assert len(scripts) == 4
    # -x: follow `source lib/common.sh`, so the helpers are checked as the scripts use them.
    proc = subprocess.run([str(shellcheck), "-x", "-S", "style", *scripts, str(SCRIPTS / "lib/common.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout

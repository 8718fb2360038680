"""Day two on the mock graph: resource options that decide what `up` twice, a resize, a replace, fewer HA
VMs and destroy do (read against bpg, pulumi-command and the Pulumi engine; README "Day two"), and the
rolling restart's two halves: apply_pending against fakepve, node-restart-wait.sh against the stand-ins.
"""
from __future__ import annotations

import itertools
import sys

import pytest

from harness import API_TOKEN, COMMAND, PROVIDER, command_text, evaluate_lab, is_secret_input
from node_runner import STANDIN_BIN, Result
from ops_fixtures import FAST, TOKEN, ca, ops_servers, outer_fake, serve  # noqa: F401
from pvelab.evaluate import unwrap
from pvelab.inner_api import CREDENTIAL_ENV, credential_env_problems, inner_endpoint
from pvelab.ops.api import Endpoint, PveClient, TokenAuth
from pvelab.ops.apply_pending import apply_pending, pending_changes
from test_cluster_scripts import Lab

sys.path.insert(0, str(STANDIN_BIN))
import _ceph  # noqa: E402
import _cluster  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

LOCAL = "command:local:Command"
NODES = ("pve1", "pve2", "pve3")


def node_vms(ev):
    return [ev.named(f"lab-{n}-vm") for n in NODES]


# --------------------------------------------------------------------------- node VMs


def test_node_vms_are_deleted_before_their_replacement_and_never_reboot_on_update(default_lab):
    for vm in node_vms(default_lab):
        # bpg's id is the VMID: a replacement created first would fail with "VMID already exists"
        assert vm.options["deleteBeforeReplace"] is True, vm.name
        # bpg reboots after a change that needs it unless reboot_after_update is false: all nodes at once
        assert vm.plain("rebootAfterUpdate") is False, vm.name
        # the guest agent is installed by `finish`: bpg must not wait for its IP report on create/refresh
        assert vm.plain("agent")["waitForIp"] == {"disabled": True}, vm.name


def test_the_ha_test_vm_is_never_stopped_by_an_update(default_lab):
    vm = default_lab.named("lab-ha-vm-100")
    # started=false + a restart-needing change: bpg would stop it (an HA stop request) and never start it
    assert vm.plain("started") is False and vm.plain("rebootAfterUpdate") is False


def test_no_step_sends_its_previous_output_back(default_lab):
    steps = [r for r in default_lab.records if r.type in (COMMAND, LOCAL)]
    assert len(steps) > 30
    for r in steps:
        assert r.plain("addPreviousOutputInEnv") is False, r.name


def test_scripts_are_shipped_once_per_node_and_every_step_is_one_line(default_lab):
    ev = default_lab
    for node in NODES:
        bundle = ev.named(f"lab-{node}-scripts")
        assert ev.depends_on(bundle, ev.named(f"lab-{node}-vm"))
        assert "cat > \"$HOME/pve-lab/node-evict.sh.tmp\"" in unwrap(bundle.inputs["stdin"])
        host = bundle.plain("connection")["host"]
        for r in ev.of_type(COMMAND):
            if r.plain("connection")["host"] == host and not r.name.endswith("-scripts"):
                assert ev.depends_on(r, bundle), f"{r.name} runs before {node}'s scripts are there"
    for r in ev.of_type(COMMAND):  # what pulumi-command prints first when a step fails: one short line
        text = command_text(r)
        assert "\n" not in text.strip() and len(text) < 400, r.name
    assert command_text(ev.named("lab-pve1-scripts")).startswith("bash -s -- pve-lab-scripts ")


@pytest.mark.parametrize("overrides", [
    {"nodes": {"count": 4, "qdevice": True}},  # the QNetd VM
    {"nodes": {"source": "template"}},  # the template builder and the clones
], ids=["qdevice", "template"])
def test_every_vm_a_step_runs_on_gets_the_scripts_first(overrides):
    """A step's one line runs a script from $HOME/pve-lab: every host a step dials has a scripts step before it."""
    ev = evaluate_lab(overrides)
    assert ev.error is None, ev.error
    bundles = {r.plain("connection")["host"]: r for r in ev.of_type(COMMAND) if r.name.endswith("-scripts")}
    for r in ev.of_type(COMMAND):
        if not r.name.endswith("-scripts"):
            bundle = bundles.get(r.plain("connection")["host"])
            assert bundle is not None and ev.depends_on(r, bundle), f"{r.name} runs before its host has the scripts"


# --------------------------------------------------------------------------- inner objects and provider


def test_inner_objects_are_deleted_with_the_cluster_not_retained(default_lab):
    ev = default_lab
    cluster = ev.named("lab-cluster-create")
    for name in ("lab-ceph-pool", "lab-ha-vm-100", "lab-ha-ha-100", "lab-ha-rule"):
        r = ev.named(name)
        assert r.options["deletedWith"] == cluster.urn and r.options["retainOnDelete"] is False, name
    # the pool's dispatch node may differ from the one a lab was built with: never a replacement for it
    assert "nodeName" in ev.named("lab-ceph-pool").options["ignoreChanges"]


def test_fewer_ha_test_vms_leave_no_retained_leftovers():
    two, one = evaluate_lab({"ha": {"testVms": 2}}), evaluate_lab({"ha": {"testVms": 1}})
    assert two.error is None and one.error is None
    gone = {r.name for r in two.records} - {r.name for r in one.records}
    assert gone == {"lab-ha-vm-101", "lab-ha-ha-101"}
    for name in gone:  # a real delete through the nested API when only these go
        assert two.named(name).options["retainOnDelete"] is False
    assert unwrap(one.named("lab-ha-rule").inputs["resources"]) == ["vm:100"]


def test_the_inner_provider_avoids_the_drills_node_and_ignores_credentials_in_the_environment(default_lab):
    inner = default_lab.named("lab-inner")
    assert inner.type == PROVIDER and inner.plain("endpoint") == "https://10.10.10.12:8006/"
    assert inner.plain("apiToken") == "" and is_secret_input(inner, "password")
    ev = evaluate_lab({"ha": {"preferredNode": "pve2"}})
    assert ev.named("lab-inner").plain("endpoint") == "https://10.10.10.11:8006/"


def test_inner_endpoint_falls_back_to_the_first_node_without_ha():
    from pvelab.spec import parse_spec
    from harness import lab_raw

    raw = lab_raw()
    raw["ha"] = {"enabled": False}
    assert inner_endpoint(parse_spec(raw)).hostname == "pve1"


@pytest.mark.parametrize("name", CREDENTIAL_ENV)
def test_an_exported_credential_variable_is_refused_with_what_to_do(monkeypatch, name):
    monkeypatch.setenv(name, "root@pam!x=00000000-0000-0000-0000-000000000000")
    ev = evaluate_lab()
    assert ev.error is not None and f"environment: {name} set" in str(ev.error)
    assert f"env -u {name} pulumi up" in str(ev.error)
    assert "00000000-0000" not in str(ev.error)


def test_credential_env_problems_is_quiet_without_them():
    assert credential_env_problems({"PATH": "/bin", "PROXMOX_VE_API_TOKEN": ""}) == []


# --------------------------------------------------------------------------- rolling restart (graph)


def restart_chain(ev):
    return [ev.named(f"lab-restart-{kind}-{n}") for n in NODES for kind in ("apply", "back")]


def test_a_size_change_restarts_one_node_at_a_time():
    before, after = evaluate_lab(), evaluate_lab({"nodes": {"memoryMiB": 12288}})
    assert before.error is None and after.error is None
    for vm in node_vms(after):
        assert vm.plain("memory")["dedicated"] == 12288 and vm.plain("rebootAfterUpdate") is False
    chain = restart_chain(after)
    # every apply/back step re-runs after the change (new triggers), nothing else of the cluster does
    changed = {r.name for r in after.records if r.type in (COMMAND, LOCAL)
               and unwrap(r.inputs.get("triggers")) != unwrap(before.named(r.name).inputs.get("triggers"))}
    assert changed == {r.name for r in chain}
    # a strict chain: apply pve1 -> back pve1 -> apply pve2 -> ... never two restarts at once
    for earlier, later in zip(chain, chain[1:]):
        assert after.depends_on(later, earlier), (later.name, earlier.name)
    applies = [r for r in chain if r.type == LOCAL]
    for a, b in itertools.combinations(applies, 2):
        assert after.depends_on(b, a) or after.depends_on(a, b)
    # the wait for a node runs on its neighbour; the first restart only after the lab is complete
    assert after.named("lab-restart-back-pve1").plain("connection")["host"] == "10.10.10.12"
    assert after.depends_on(applies[0], after.named("lab-ceph-health"))


def test_the_restart_step_gets_the_outer_token_as_a_secret_only(default_lab):
    apply = default_lab.named("lab-restart-apply-pve2")
    assert is_secret_input(apply, "environment")
    env = apply.plain("environment")
    assert env["PVE_LAB_VMID"] == "9101" and env["PVE_LAB_OUTER_API_TOKEN"] == API_TOKEN
    assert "TOKEN" not in unwrap(apply.inputs["create"]) and "pvelab.ops.apply_pending" in unwrap(apply.inputs["create"])


# --------------------------------------------------------------------------- apply_pending against fakepve


def outer_client_for(fake, ca) -> PveClient:
    return PveClient([Endpoint(fake.url, ca, "pve")], TokenAuth(TOKEN), FAST, what="outer host")


def vm_of(fake, vmid):
    return next(v for v in fake.vms if v.vmid == vmid)


def test_apply_pending_reboots_only_the_vm_with_pending_changes(serve, ca):
    fake = serve(outer_fake(lab_vms=True))
    client = outer_client_for(fake, ca)
    vm = vm_of(fake, 9101)
    vm.pending["memory"] = "12288"
    assert pending_changes(client, "pve", 9101) == [f"memory: {vm.config.get('memory', '(unset)')} -> 12288"]
    lines = []
    assert apply_pending(client, "pve", 9100, 5, 0.02, out=lines.append) is False
    assert apply_pending(client, "pve", 9101, 5, 0.02, out=lines.append) is True
    posts = [p for m, p, _ in fake.requests if m == "POST"]
    assert [p.split("/qemu/")[1] for p in posts] == ["9101/status/reboot"]
    assert str(vm_of(fake, 9101).config["memory"]) == "12288" and not vm_of(fake, 9101).pending
    assert lines[0] == "VM 9100: no pending changes, no restart" and "reboot to apply memory" in lines[1]
    # `up` again: nothing pending any more, nothing restarted
    assert apply_pending(client, "pve", 9101, 5, 0.02, out=lines.append) is False


def test_apply_pending_starts_a_stopped_vm_instead(serve, ca):
    fake = serve(outer_fake(lab_vms=True))
    client = outer_client_for(fake, ca)
    vm = vm_of(fake, 9102)
    vm.status = vm.qmpstatus = "stopped"
    vm.pending["cores"] = 6
    assert apply_pending(client, "pve", 9102, 5, 0.02, out=lambda s: None) is True
    assert vm_of(fake, 9102).status == "running" and str(vm_of(fake, 9102).config["cores"]) == "6"


def test_apply_pending_main_reports_a_missing_variable_without_a_traceback(capsys):
    from pvelab.ops.apply_pending import main

    assert main({}) == 1
    err = capsys.readouterr().err
    assert err.startswith("pve-lab: error: missing environment variable PVE_LAB_OUTER_ENDPOINT")
    assert "Traceback" not in err


# --------------------------------------------------------------------------- node-restart-wait.sh


FAST_WAIT = {"DEADLINE_S": "0.3", "POLL_S": "0.02"}


def wait_for(lab: Lab, node: str = "pve2", on: str = "pve3", **env) -> Result:
    return lab.nodes[on].run_script("node-restart-wait", env={"NODE_NAME": node, "EXPECTED_NODES": "3",
                                                             **FAST_WAIT, **env})


@pytest.fixture
def formed(tmp_path) -> Lab:
    lab = Lab(tmp_path)
    (tmp_path / "cluster").mkdir(exist_ok=True)
    (tmp_path / "cluster" / "instant-restart").write_text("")
    lab.form(3)
    return lab


def test_a_node_back_in_a_healthy_cluster_lets_the_next_one_go(formed):
    r = wait_for(formed)  # HA never used yet (a first build): ha-manager lists no LRM, nothing to wait for
    assert r.returncode == 0, r.output
    assert "pve2 is back: cluster quorate with 3 nodes" in r.stderr
    _cluster.activate_ha(formed.state)
    r = wait_for(formed)
    assert r.returncode == 0, r.output


def test_a_node_that_never_comes_back_stops_the_rolling_restart(formed):
    _cluster.power_off(formed.state, "pve2")
    r = wait_for(formed)
    assert r.returncode == 1
    assert "gave up after 0.3s waiting for pve2 after its restart: pve2 is not back in the cluster" in r.stderr
    assert "The next node is not restarted" in r.stderr.splitlines()[-1]


def test_quorum_that_never_returns_stops_the_rolling_restart(formed):
    arm_fault(formed.state, "no-quorum")
    r = wait_for(formed)
    assert r.returncode == 1 and "the cluster is not quorate (" in r.stderr and "Quorate: No" in r.stderr


def test_an_unhealthy_ceph_or_a_dead_lrm_holds_the_next_node(formed):
    node = formed.nodes["pve3"]
    (node.root / "etc/pve").mkdir(parents=True, exist_ok=True)
    (node.root / "etc/pve/ceph.conf").write_text("[global]\n")
    with _ceph_state(formed.state) as data:
        data.update(fsid="f" * 8, mons={"pve1": {"addr": "10.10.10.11", "ready_at": 0}})
    r = wait_for(formed)
    assert r.returncode == 1 and "Ceph is not healthy: HEALTH_WARN" in r.stderr
    (node.root / "etc/pve/ceph.conf").unlink()
    _cluster.activate_ha(formed.state)
    (formed.state / "faults").mkdir(exist_ok=True)
    (formed.state / "faults" / "lrm-dead").write_text("pve2\n")
    r = wait_for(formed)
    assert r.returncode == 1 and "the HA LRM of pve2 is not back: lrm pve2 (old timestamp - dead?" in r.stderr


def _ceph_state(state):
    import contextlib
    import json

    @contextlib.contextmanager
    def edit():
        path = _ceph.cluster_path(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _ceph.load_cluster(state)
        yield data
        path.write_text(json.dumps(data))
    return edit()


def test_the_programs_wait_command_runs_against_the_stand_ins(default_lab, formed):
    record = default_lab.named("lab-restart-back-pve2")
    assert record.plain("connection")["host"] == "10.10.10.13"
    r = formed.nodes["pve3"].run(command_text(record))
    assert r.returncode == 0, r.output


# --------------------------------------------------------------------------- apt output stays on the node


def test_apt_output_goes_to_a_log_on_the_node_and_the_step_output_stays_small(tmp_path):
    from test_install_script import fresh_node, perform_reboot, run

    node = fresh_node(tmp_path)
    outputs = [run(node, "prepare")]
    outputs.append(run(node, "reboot"))
    perform_reboot(node)
    outputs.append(run(node, "finish"))
    for r in outputs:
        assert r.returncode == 0, r.output
        # no apt output in the step's output (what Pulumi keeps in its state)
        assert "Reading package lists" not in r.output and "newly installed" not in r.output, r.output
    log = (node.root / "var/log/pve-lab/apt.log").read_text()
    assert "Reading package lists" in log and "newly installed" in log
    assert "(its output: /var/log/pve-lab/apt.log)" in outputs[-1].stderr


def test_an_apt_failure_names_the_log_and_shows_its_last_lines(tmp_path):
    from test_install_script import fresh_node, run

    node = fresh_node(tmp_path)
    arm_fault(node.state, "apt-fail", times=1)
    r = run(node, "prepare")
    assert r.returncode == 1
    assert "Failed to fetch" in r.stderr  # the tail of the log
    assert "all of it in /var/log/pve-lab/apt.log on pve1" in r.stderr


def test_a_rebuilt_node_1_rejoins_and_never_creates_a_second_cluster(default_lab):
    from pvelab import evaluate

    evaluate.MOCK_REBUILT_VMS.add("lab-pve1-vm")
    try:
        rebuilt = evaluate_lab()
    finally:
        evaluate.MOCK_REBUILT_VMS.clear()
    changed = {r.name for r in rebuilt.records if r.type == COMMAND
               and unwrap(r.inputs.get("triggers")) != unwrap(default_lab.named(r.name).inputs.get("triggers"))}
    # node 2 evicts node 1's old membership, node 1 joins through node 2; `pvecm create` never runs again
    assert {"lab-cluster-evict-pve1", "lab-cluster-join-pve1", "lab-cluster-quorum", "lab-ceph-mon-pve1"} <= changed
    assert "lab-cluster-create" not in changed
    assert not {"lab-cluster-join-pve2", "lab-cluster-evict-pve2", "lab-cluster-join-pve3"} & changed
    evict, join = rebuilt.named("lab-cluster-evict-pve1"), rebuilt.named("lab-cluster-join-pve1")
    assert evict.plain("connection")["host"] == "10.10.10.12" and "FIRST_IP=10.10.10.12" in command_text(join)
    assert rebuilt.depends_on(join, evict) and rebuilt.depends_on(rebuilt.named("lab-cluster-quorum"), join)

"""`python -m pvelab plan`: the real program evaluated offline, shown as tree, steps, totals and a picture."""
from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from harness import SECRET_VALUES, deep_merge, evaluate_lab, lab_raw

from pvelab.cli import main
from pvelab.evaluate import unwrap
from pvelab.plan.dot import render_dot
from pvelab.plan.durations import STEP_DURATIONS
from pvelab.plan.model import COMMAND, HostCapacity, build_plan
from pvelab.plan.svg import render_svg
from pvelab.plan.text import render_json, render_text
from pvelab.spec import SpecError, parse_spec

NODES = {"pve1": ("10.10.10.11", 9100), "pve2": ("10.10.10.12", 9101), "pve3": ("10.10.10.13", 9102)}
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """`plan` writes plan-out/ in the current folder unless --out is given: never into the checkout (parallel
    test workers would share it)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def default_plan(default_lab):
    return build_plan(default_lab, stack="lab")


def run_plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_stack(tmp_path: Path, name: str, lab: dict, extra: dict | None = None) -> Path:
    doc = {"config": {"pve-lab:lab": lab, **(extra or {})}}
    (tmp_path / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def svg_texts(svg: str) -> str:
    root = ET.fromstring(svg)  # raises on invalid XML
    return "\n".join("".join(el.itertext()) for el in root.iter(f"{SVG_NS}text"))


# ------------------------------------------------------------------ the command, end to end


def test_plan_default_stack_text_and_pictures(capsys, tmp_path):
    code, out, err = run_plan(capsys, "-s", "lab", "--out", str(tmp_path))
    assert code == 0, err
    tree = out.split("Resource tree", 1)[1].split("Nested nodes", 1)[0]
    for host, (ip, vmid) in NODES.items():
        assert f"lab-{host}  [NestedPveNode]  {host}  {ip}/24  VMID {vmid}  4 vCPU, 8 GiB RAM, disks 32 + 32 GiB" in tree
    assert tree.count("[NestedPveNode]") == 3
    # the joins, in order: pve2 before pve3, each on its own node
    levels = out.split("Parallel levels", 1)[1]
    assert levels.index("lab-cluster-join-pve2") < levels.index("lab-cluster-join-pve3")
    assert "Estimated wall time of `pulumi up`: ~" in out and "ESTIMATE" in out
    svg = (tmp_path / "lab.svg").read_text()
    dot = (tmp_path / "lab.dot").read_text()
    texts = svg_texts(svg)
    for host, (ip, vmid) in NODES.items():
        assert host in texts and ip in texts and f"VMID {vmid}" in texts
    assert dot.startswith("digraph ") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")


def test_plan_json_round_trips_and_matches_the_tree(capsys, tmp_path, default_lab):
    code, out, err = run_plan(capsys, "--format", "json", "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "pve-lab-plan/1"
    assert data["ok"] is True and data["problems"] == [] and data["error"] is None
    tree_names = {n["name"] for n in _walk(data["tree"])}
    assert tree_names == {r.name for r in default_lab.records} | {"lab"}
    assert [n["hostname"] for n in data["nodes"]] == list(NODES)
    assert [(n["ip"], n["vmid"]) for n in data["nodes"]] == list(NODES.values())
    assert sorted(s["id"] for s in data["steps"]) == sorted(k for level in data["levels"] for k in level)
    totals = data["totals"]
    assert (totals["vcpu"], totals["memory_mib"], totals["disk_gib"]) == (12, 3 * 8192, 3 * 64.0)
    # the default lab ends with the rolling restart's checks (on a first build: nothing pending, reads only)
    assert data["critical_path"][0] == "lab-image" and data["critical_path"][-1] == "lab-restart-back-pve3"
    assert data["estimate"]["is_estimate"] is True and data["estimate"]["wall_time_s"] > 0
    assert data["files"] == {"svg": str(tmp_path / "lab.svg"), "dot": str(tmp_path / "lab.dot")}
    # the same tree as the model's
    assert data["tree"] == build_plan(default_lab, stack="lab").to_dict()["tree"]


def _walk(node: dict):
    yield node
    for child in node["children"]:
        yield from _walk(child)


def test_bad_config_exits_2_with_the_validation_message(capsys, tmp_path):
    bad = deep_merge(lab_raw(), {"nodes": {"count": 4}, "ceph": {"pool": {"minSize": 1}}})
    write_stack(tmp_path, "broken", bad)
    with pytest.raises(SpecError) as expected:
        parse_spec(bad)
    code, out, err = run_plan(capsys, "-s", "broken", "--project-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.strip() == expected.value.render()  # what `pulumi up` prints for the same file
    assert "pve-lab:lab.nodes.count: 4 is even" in err
    assert out == "" and not (tmp_path / "o").exists()
    code, out, err = run_plan(capsys, "-s", "broken", "--project-dir", str(tmp_path), "--format", "json")
    assert code == 2 and json.loads(out)["problems"] == expected.value.problems


def test_missing_stack_file_names_the_stack(capsys, tmp_path):
    code, out, err = run_plan(capsys, "-s", "nosuch", "--project-dir", str(tmp_path))
    assert code == 2 and "stack 'nosuch': no file Pulumi.nosuch.yaml" in err


@pytest.mark.parametrize("flag,value", [("--host-cores", "0"), ("--host-memory-gib", "lots"),
                                        ("--host-disk-gib", "nan"), ("-s", "../x")])
def test_bad_flags_get_one_message_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", flag, value])
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err


def test_out_must_be_a_folder(capsys, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("")
    code, out, err = run_plan(capsys, "--out", str(target))
    assert code == 1 and err == f"plan: --out {target}: cannot write the picture (it is a file, not a folder)\n"


def test_program_failure_is_one_clear_line(capsys, monkeypatch):
    import pvelab.plan.stack as stack_module

    def broken(config):
        raise FileNotFoundError(2, "No such file or directory", "components/scripts/cluster-create.sh")

    monkeypatch.setattr(stack_module, "evaluate_stack", broken)
    code, out, err = run_plan(capsys)
    assert code == 1
    assert err.startswith("plan: the Pulumi program failed under the mock runtime: FileNotFoundError")
    assert "Traceback" not in err and out == ""


def test_fit_against_the_outer_host(capsys, tmp_path):
    code, out, _ = run_plan(capsys, "--out", str(tmp_path), "--format", "json", "--host-cores", "2",
                            "--host-memory-gib", "16", "--host-disk-gib", "1000")
    fit = {f["what"]: f for f in json.loads(out)["totals"]["fit"]}
    assert code == 0
    assert fit["memory"]["fits"] is False and fit["memory"]["need"] == 26  # 24 GiB of VMs + 2 GiB for the host
    assert fit["cpu"]["fits"] is False and "cannot start" in fit["cpu"]["note"]  # a 4-vCPU VM on 2 cores
    assert fit["disk"]["fits"] is True
    code, out, _ = run_plan(capsys, "--out", str(tmp_path), "--host-cores", "16", "--host-memory-gib", "64")
    assert "memory: needs 26 GiB, host has 64 GiB: fits" in out and "DOES NOT FIT" not in out


# ------------------------------------------------------------------ the model against the recorded graph


def test_steps_run_where_their_connection_points(default_lab, default_plan):
    ip_to_node = {ip: host for host, (ip, _) in NODES.items()}
    commands = [r for r in default_lab.records if r.type == COMMAND]
    assert len(commands) > 20  # install, cluster and Ceph steps
    for r in commands:
        assert default_plan.step(r.name).lane == ip_to_node[unwrap(r.inputs["connection"])["host"]], r.name
    assert [s.lane for s in (default_plan.step("lab-cluster-join-pve2"), default_plan.step("lab-cluster-join-pve3"))] \
        == ["pve2", "pve3"]
    # inner API via pve2: not pve1, which the HA test VM prefers (its lane) and the HA drill stops by default
    for name in ("lab-ceph-pool", "lab-ha-ha-100", "lab-ha-rule"):
        assert default_plan.step(name).lane == "pve2"
    assert default_plan.step("lab-ha-vm-100").lane == "pve1"
    assert default_plan.step("lab-image").lane == "outer"
    assert default_plan.step("lab-pve2-vm").lane == "pve2"


def test_joins_are_chained_and_levels_match_depends_on(default_lab, default_plan):
    steps = {s.id: s for s in default_plan.steps}
    join2, join3 = steps["lab-cluster-join-pve2"], steps["lab-cluster-join-pve3"]
    assert join2.level < join3.level
    # between two joins, the next node's eviction check (a no-op on a first build) on the first node
    assert join3.depends_on == ["lab-cluster-evict-pve3"] and "lab-cluster-join-pve2" in steps["lab-cluster-evict-pve3"].depends_on
    by_name = {r.name: r for r in default_lab.records}

    def closure(step_id):
        seen, stack = set(), list(steps[step_id].waits_for)
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(steps[k].waits_for)
        return seen

    for a in steps:
        waits = closure(a)
        for b in steps:
            if a != b:
                # the same answer as Evaluation.depends_on (components = their children, providers followed)
                assert default_lab.depends_on(by_name[a], by_name[b]) == (b in waits), (a, b)
    for level in default_plan.levels:  # nothing on one level waits for anything on the same level
        for a in level:
            assert not closure(a) & set(level)
    # the pool waits for the last monitor and the OSDs, beside the health wait; the HA test VM waits for both;
    # the inner provider's wait for quorum comes through the provider
    assert steps["lab-ceph-pool"].depends_on == ["lab-ceph-mon-pve3", "lab-ceph-osd-pve1", "lab-ceph-osd-pve2",
                                                 "lab-ceph-osd-pve3"]
    assert "lab-ceph-pool" not in closure("lab-ceph-health") and "lab-ceph-health" not in closure("lab-ceph-pool")
    assert {"lab-ceph-pool", "lab-ceph-health"} <= set(steps["lab-ha-vm-100"].depends_on)
    assert "lab-cluster-quorum" in closure("lab-ha-rule")


def test_critical_path_is_the_longest_chain(default_plan):
    steps = {s.id: s for s in default_plan.steps}
    path = default_plan.critical_path
    for before, after in zip(path, path[1:]):
        assert before in steps[after].waits_for
    assert sum(steps[k].estimate_s for k in path) == default_plan.estimate_s
    assert default_plan.estimate_s == max(s.finish_s for s in steps.values())
    assert not steps[path[0]].waits_for
    # the install chain of one node and the serial monitors are on it
    assert {"lab-pve1-finish", "lab-ceph-mon-pve3", "lab-ceph-health"} <= set(path)
    # Each node's Ceph install starts when that node is ready (its network step), beside cluster formation,
    # not after quorum; Ceph init waits for both, so the longer of the two is on the path. (With the evict
    # checks and node 1's rejoin step in the cluster chain, forming the cluster is the longer one by default.)
    for node in ("pve1", "pve2", "pve3"):
        install = steps[f"lab-ceph-install-{node}"]
        assert install.start_s == steps[f"lab-{node}-network"].finish_s
        assert install.start_s < steps["lab-cluster-quorum"].start_s
    before_init = [k for k in path if k.startswith("lab-ceph-install-") or k == "lab-cluster-quorum"]
    assert len(before_init) == 1 and path[path.index(before_init[0]) + 1] == "lab-ceph-init"


def test_node_1s_own_join_is_a_membership_check_on_a_first_build(default_plan):
    # node 1 ran `pvecm create`; its join step (a rejoin through node 2 after a rebuild) changes nothing on a
    # first build (cluster-join.sh's membership check), so it is not estimated as a full join
    steps = {s.id: s for s in default_plan.steps}
    assert steps["lab-cluster-join-pve1"].kind == "cluster-join@creator"
    assert steps["lab-cluster-join-pve1"].estimate_s == STEP_DURATIONS["cluster-join@creator"].seconds
    assert {steps[f"lab-cluster-join-{n}"].kind for n in ("pve2", "pve3")} == {"cluster-join"}


def test_the_health_wait_settles_after_the_osds_not_after_its_own_start(default_plan):
    # PGs peer from the moment the OSDs are up, while the monitors 2 and 3 are still being added: the poll
    # ends settle_s after the last OSD step, or one read after its own start, whichever is later
    steps = {s.id: s for s in default_plan.steps}
    health, entry = steps["lab-ceph-health"], STEP_DURATIONS["ceph-health"]
    last_osd = max(steps[f"lab-ceph-osd-{n}"].finish_s for n in ("pve1", "pve2", "pve3"))
    assert health.start_s == steps["lab-ceph-mon-pve3"].finish_s
    assert health.finish_s == max(health.start_s + entry.seconds, last_osd + entry.settle_s)
    assert health.finish_s - health.start_s == health.estimate_s < entry.settle_s


def test_every_default_step_has_a_documented_duration(default_plan):
    assert [s.id for s in default_plan.steps if s.estimate_is_default] == []
    assert all(entry.source for entry in STEP_DURATIONS.values())


def test_node_figures_come_from_the_recorded_vm_inputs(default_lab):
    """Change a recorded VM input: the plan follows it (it does not recompute from the spec)."""
    ev = copy.copy(default_lab)
    ev.records = [copy.deepcopy(r) if r.name == "lab-pve2-vm" else r for r in default_lab.records]
    vm = next(r for r in ev.records if r.name == "lab-pve2-vm")
    vm.inputs["memory"]["dedicated"] = 4096.0
    vm.inputs["cpu"]["cores"] = 2.0
    plan = build_plan(ev)
    pve2 = next(n for n in plan.nodes if n.hostname == "pve2")
    assert (pve2.memory_mib, pve2.cores) == (4096, 2)
    assert plan.totals.memory_mib == 2 * 8192 + 4096 and plan.totals.vcpu == 10


def test_topology_shows_ceph_roles_pool_and_ha(default_plan):
    for node in default_plan.nodes:
        assert node.ceph_roles == ["MON", "MGR", "OSD x1"] and node.link0 == node.ip and node.link1 is None
    assert default_plan.pool.name == "vmpool" and (default_plan.pool.size, default_plan.pool.min_size) == (3, 2)
    assert default_plan.ha.preferred_node == "pve1" and default_plan.ha.resources == ["vm:100"]
    texts = svg_texts(render_svg(default_plan))
    assert "corosync link0" in texts and "corosync link1" not in texts
    assert "vm:100 ha-test-100" in texts and "HA preferred node" in texts and "Ceph pool vmpool" in texts


def test_link1_and_a_second_osd_appear_when_configured():
    ev = evaluate_lab({"network": {"link1": {"cidr": "10.10.20.0/24", "firstAddress": "10.10.20.11"}},
                       "nodes": {"cephDisks": 2, "memoryMiB": 10240}, "ha": {"preferredNode": "pve2"}})
    assert ev.error is None, ev.error
    plan = build_plan(ev)
    assert [n.link1 for n in plan.nodes] == ["10.10.20.11", "10.10.20.12", "10.10.20.13"]
    assert plan.network == {"link0": "10.10.10.0/24", "link1": "10.10.20.0/24"}
    assert all(n.ceph_roles[-1] == "OSD x2" for n in plan.nodes)
    assert plan.ha.preferred_node == "pve2"
    texts = svg_texts(render_svg(plan))
    assert "corosync link1" in texts and "10.10.20.0/24" in texts and "10.10.20.13" in texts
    assert "Ceph OSD x2" in texts
    assert '"link1"' in render_dot(plan)


def test_no_secret_in_any_output(tmp_path, capsys):
    # a stack file that (wrongly) holds the root password in plain text: the plan must not echo it either
    plain_password = "Plain-Text-Root-Pw-31337"
    write_stack(tmp_path, "leaky", lab_raw(), {"pve-lab:rootPassword": plain_password})
    outputs = []
    for fmt in ("text", "json"):
        code, out, err = run_plan(capsys, "-s", "leaky", "--project-dir", str(tmp_path), "--format", fmt,
                                  "--out", str(tmp_path / "out"))
        assert code == 0, err
        outputs += [out, err]
    outputs += [(tmp_path / "out" / "leaky.svg").read_text(), (tmp_path / "out" / "leaky.dot").read_text()]
    for text in outputs:
        for secret in (*SECRET_VALUES, plain_password):
            assert secret not in text


def test_redaction_guard_blanks_a_secret_that_slipped_through(default_plan):
    secret = SECRET_VALUES[0]
    assert default_plan.redact(f"title {secret} end") == "title [secret] end"
    assert secret not in render_text(default_plan) + render_json(default_plan)


def test_host_capacity_in_the_model(default_lab):
    plan = build_plan(default_lab, host=HostCapacity(cores=12, memory_gib=26, disk_gib=191))
    fit = {f.what: f.fits for f in plan.totals.fit}
    assert fit == {"cpu": True, "memory": True, "disk": False} and plan.totals.fits is False


def test_a_classroom_student_stack_plans_with_known_steps():
    ev = evaluate_lab({"student": {"id": "s01", "user": "s01pool@pve", "pool": "s01pool",
                                   "network": {"mode": "sdn", "zone": "lab", "vnet": "s01net", "vnetTag": 101}}})
    assert ev.error is None, ev.error
    plan = build_plan(ev, stack="s01")
    outer = {s.title for s in plan.steps if s.lane == "outer"}
    assert {"resource pool s01pool", "user s01pool@pve", "ACL PVEVMUser on /pool/s01pool", "SDN apply"} <= outer
    assert [s.id for s in plan.steps if s.estimate_is_default] == []
    ET.fromstring(render_svg(plan))


def test_plan_runs_the_policy_packs_sanity_rules(capsys, tmp_path):
    code, out, _ = run_plan(capsys, "--out", str(tmp_path))
    assert code == 0 and "Policy: the lab passes the sanity rules" in out
    # An even node count passes validation when acknowledged, but the class policy still refuses it.
    even = deep_merge(lab_raw(), {"nodes": {"count": 4, "acknowledgeEvenCount": True}})
    write_stack(tmp_path, "even", even)
    code, out, _ = run_plan(capsys, "-s", "even", "--project-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 0
    assert "Policy: 1 violation(s); `pulumi up --policy-pack policy` would refuse this stack" in out
    assert "[quorum] 4 nested nodes" in out
    code, out, _ = run_plan(capsys, "-s", "even", "--project-dir", str(tmp_path), "--format", "json")
    assert [v.split("]")[0] for v in json.loads(out)["policy"]] == ["[quorum"]

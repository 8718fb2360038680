"""nodes.source: template on Pulumi's mock runtime: the golden template in the graph, clones of it, and the
same cluster/Ceph/HA graph after the nodes as on the apt path."""
from __future__ import annotations

import pytest

from harness import COMMAND, VM, command_text, deep_merge, evaluate_lab, lab_raw, leaked_secrets
from ops_fixtures import ca, ops_servers, serve  # noqa: F401
from pvelab.evaluate import MOCK_NEXT_VMID, SECRET_SIG, SIG_KEY, mock_mac, unwrap
from pvelab.node_template import builder_hostname, template_key
from pvelab.provider_types import check_all
from pvelab.spec import SpecError, parse_spec

LOCAL = "command:local:Command"
TEMPLATE = {"nodes": {"source": "template"}}


@pytest.fixture(scope="module")
def tpl():
    ev = evaluate_lab(TEMPLATE)
    assert ev.error is None, ev.error
    return ev


def run_line(r) -> str:
    return command_text(r).rstrip("\n").splitlines()[-1]


def names(ev, typ):
    return sorted(r.name for r in ev.of_type(typ))


def dep_names(ev, r):
    by_urn = ev.by_urn()
    return sorted(by_urn[u].name for u in r.dependencies if u in by_urn)


def after_the_nodes(ev) -> dict:
    """Every resource of the cluster, Ceph, HA and rolling-restart stages: inputs and what it waits for, by name."""
    out = {}
    for r in ev.records:
        if r.name.startswith(("lab-cluster", "lab-ceph", "lab-ha", "lab-inner", "lab-restart")):
            out[r.name] = (r.type, unwrap(r.inputs), dep_names(ev, r), r.options)
    return out


def converts(ev):
    """The template path's local step (the rolling restart has local steps of its own on both paths)."""
    return [r for r in ev.of_type(LOCAL) if r.name.endswith("-convert")]


def test_the_apt_path_stays_the_default(default_lab):
    assert not [r for r in default_lab.records if r.type == "pve-lab:index:NodeTemplate"] and not converts(default_lab)
    assert not [r for r in default_lab.of_type(VM) if r.plain("clone")]


def test_both_paths_share_the_cluster_ceph_and_ha_graph(default_lab, tpl):
    apt, template = after_the_nodes(default_lab), after_the_nodes(tpl)
    assert apt.keys() == template.keys() and len(apt) > 20
    for name in apt:
        assert apt[name] == template[name], name


def test_the_template_is_built_in_order_on_one_builder(tpl):
    key = template_key(parse_spec(lab_raw() | {"nodes": {**lab_raw()["nodes"], "source": "template"}}))
    prefix = f"lab-template-{key}"
    builder = tpl.named(f"{prefix}-builder")
    assert builder.plain("vmId") is None  # PVE's next free id: a new key never collides with the old template
    assert builder.options["ignoreChanges"][:2] == ["template", "started"]
    assert {"memory", "cpu", "initialization", "networkDevices"} <= set(builder.options["ignoreChanges"])
    assert "pve-lab-template" in builder.plain("tags") and "pve-lab-node" not in builder.plain("tags")
    assert [d["interface"] for d in builder.plain("disks")] == ["scsi0"]
    assert builder.plain("stopOnDestroy") is True
    chain = ["builder", "prepare", "reboot", "finish", "ready", "ceph", "seal", "convert"]
    for earlier, later in zip(chain, chain[1:]):
        assert tpl.depends_on(tpl.named(f"{prefix}-{later}"), tpl.named(f"{prefix}-{earlier}")), later
    seal = run_line(tpl.named(f"{prefix}-seal"))
    assert f"NODE_HOSTNAME={builder_hostname(parse_spec(lab_raw() | TEMPLATE_RAW()))}" in seal
    assert "TEMPLATE_KEY=" + key in seal
    assert "NODE_IP=10.10.10.14" in command_text(tpl.named(f"{prefix}-prepare"))


def TEMPLATE_RAW():
    return deep_merge(lab_raw(), TEMPLATE)


def test_the_conversion_is_a_local_step_whose_token_stays_secret(tpl):
    convert = next(r for r in tpl.of_type(LOCAL) if r.name.endswith("-convert"))
    env = convert.inputs["environment"]
    # the token makes the whole environment a secret (in the state and in every log)
    assert isinstance(env, dict) and env.get(SIG_KEY) == SECRET_SIG
    assert unwrap(env)["PVE_API_TOKEN"].startswith("root@pam!")
    assert "PVE_API_TOKEN" not in run_line(convert)
    assert unwrap(env)["VMID"] == str(MOCK_NEXT_VMID)
    assert "outer-template.sh" in command_text(convert)
    assert leaked_secrets(tpl) == []


def test_nodes_are_linked_clones_that_get_their_identity_on_first_boot(tpl):
    convert = next(r for r in tpl.of_type(LOCAL) if r.name.endswith("-convert"))
    for i in (1, 2, 3):
        vm = tpl.named(f"lab-pve{i}-vm")
        assert vm.plain("clone") == {"vmId": MOCK_NEXT_VMID, "full": False, "nodeName": "pve"}
        assert "importFrom" not in vm.plain("disks")[0]
        assert vm.options["deleteBeforeReplace"] is True
        assert vm.plain("rebootAfterUpdate") is False  # pending changes go through the rolling restart
        assert tpl.depends_on(vm, convert)
        steps = [tpl.named(f"lab-pve{i}-{s}") for s in ("scripts", "identity", "apt-proxy", "prepare", "pve", "ready",
                                                         "network")]
        for earlier, later in zip(steps, steps[1:]):
            assert tpl.depends_on(later, earlier)
        # One identity key for every step of the clone and its cluster/Ceph steps: the VM instance (VMID/MAC).
        # A clone of a new template keeps its VMID but is a new VM with new MACs, so all of them run again.
        instance = [f"{9099 + i}/{mock_mac(f'lab-pve{i}-vm', 0)}"]
        for step in steps + [tpl.named(f"lab-cluster-join-pve{i}"), tpl.named(f"lab-ceph-osd-pve{i}")]:
            assert unwrap(step.inputs["triggers"]) == instance, step.name
        assert run_line(steps[0]).startswith("bash -s -- pve-lab-scripts ")
        assert "node-firstboot.sh\" identity" in run_line(steps[1])
        assert "BUILDER_HOSTNAME=pvelab-builder-" in run_line(steps[1])
        assert "install-pve.sh\" prepare" in run_line(steps[3])
        assert "node-firstboot.sh\" ready" in run_line(steps[5])
        assert "node-network.sh" in run_line(steps[6])
        assert not [r for r in tpl.of_type(COMMAND) if r.name in (f"lab-pve{i}-finish", f"lab-pve{i}-reboot")]
    assert tpl.stack_outputs["pveVersions"].value["pve1"].startswith("pve-manager/9")


def test_full_clones_when_the_storage_has_no_linked_clones():
    ev = evaluate_lab({"nodes": {"source": "template"}, "template": {"linkedClones": False}})
    assert ev.error is None, ev.error
    assert ev.named("lab-pve1-vm").plain("clone")["full"] is True


def test_every_input_matches_the_provider_types(tpl):
    assert check_all(tpl.records) == []


def test_a_changed_release_or_script_is_a_new_template(monkeypatch):
    base = parse_spec(TEMPLATE_RAW())
    assert template_key(base) == template_key(parse_spec(TEMPLATE_RAW()))
    tentacle = parse_spec(deep_merge(TEMPLATE_RAW(), {"ceph": {"release": "tentacle"}}))
    assert template_key(tentacle) != template_key(base)
    import pvelab.node_template as nt

    before = template_key(base)
    real = nt.script_text
    monkeypatch.setattr(nt, "script_text", lambda name: real(name) + ("# changed\n" if name == "node-seal" else ""))
    assert template_key(base) != before


def test_a_size_change_keeps_the_template_but_not_the_clone_sizes():
    a = evaluate_lab(TEMPLATE)
    b = evaluate_lab({"nodes": {"source": "template", "memoryMiB": 12288}})
    builder = lambda ev: next(r for r in ev.of_type(VM) if r.name.endswith("-builder"))  # noqa: E731
    assert builder(a).name == builder(b).name  # same key: no new template
    assert "memory" in builder(b).options["ignoreChanges"]  # the template itself is not touched
    assert b.named("lab-pve1-vm").plain("memory")["dedicated"] == 12288


def test_a_new_key_names_a_new_builder_resource():
    a = evaluate_lab(TEMPLATE)
    b = evaluate_lab({"nodes": {"source": "template"}, "ceph": {"release": "tentacle"}})
    builders = [names(ev, VM) for ev in (a, b)]
    assert [n for n in builders[0] if "builder" in n] != [n for n in builders[1] if "builder" in n]


def test_an_existing_template_is_cloned_and_nothing_is_built():
    ev = evaluate_lab({"nodes": {"source": "template"}, "template": {"vmId": 9050}})
    assert ev.error is None, ev.error
    assert not converts(ev) and not [r for r in ev.of_type(VM) if "builder" in r.name]
    assert ev.named("lab-pve2-vm").plain("clone")["vmId"] == 9050
    assert "BUILDER_HOSTNAME" not in run_line(ev.named("lab-pve2-identity"))


def test_destroy_removes_clones_before_the_template(tpl):
    builder = next(r for r in tpl.of_type(VM) if r.name.endswith("-builder"))
    for i in (1, 2, 3):
        assert tpl.depends_on(tpl.named(f"lab-pve{i}-vm"), builder)
    # the conversion never dials a node, and nothing in the template path dials one on destroy
    assert all(not r.plain("delete") for r in tpl.of_type(COMMAND) + tpl.of_type(LOCAL))


@pytest.mark.parametrize("overrides, message", [
    ({"nodes": {"source": "golden"}}, "pve-lab:lab.nodes.source: 'golden' is not allowed (allowed: apt, template)"),
    ({"nodes": {"source": "template"}, "template": {"builderAddress": "10.10.10.13"}},
     "pve-lab:lab.template.builderAddress: the template builder's address 10.10.10.13 is taken by a node, the QDevice VM or the gateway"),
    # the QDevice VM takes the address after the nodes: the default builder address moves on past it
    ({"nodes": {"count": 4, "qdevice": True, "source": "template"}, "template": {"builderAddress": "10.10.10.15"}},
     "pve-lab:lab.template.builderAddress: the template builder's address 10.10.10.15 is taken by a node, the QDevice VM or the gateway"),
    ({"nodes": {"source": "template"}, "template": {"builderAddress": "10.10.10.300"}},
     "pve-lab:lab.template.builderAddress: '10.10.10.300' is not allowed: 7-15 characters, an IPv4 address"),
    ({"nodes": {"source": "template"}, "template": {"builderAddress": "10.10.11.5"}},
     "pve-lab:lab.template.builderAddress: the template builder's address 10.10.11.5 is not a usable host of 10.10.10.0/24"),
    ({"nodes": {"source": "template"}, "template": {"vmId": 12}},
     "pve-lab:lab.template.vmId: 12 is out of range (allowed: 100..999999999)"),
])
def test_bad_template_config_is_one_clear_error(overrides, message):
    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(lab_raw(), overrides))
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_plan_knows_every_template_step(tpl):
    from pvelab.plan.model import build_plan

    plan = build_plan(tpl, stack="lab")
    assert plan.ok, plan.problems
    assert [s.id for s in plan.steps if s.estimate_is_default] == []
    kinds = {s.id: s.kind for s in plan.steps}
    assert kinds["lab-pve1-vm"] == "vm:outer@clone"
    assert kinds["lab-pve1-prepare"] == "install-pve:prepare@clone"
    assert kinds["lab-ceph-install-pve1"] == "ceph-install@clone"
    assert any(k == "outer-template" for k in kinds.values()) and any(k == "vm:builder" for k in kinds.values())
    assert any(s.endswith("-convert") for s in plan.critical_path)


def test_preflight_checks_that_the_storage_can_hold_linked_clones(serve, ca):
    from ops_fixtures import FAST, TOKEN, outer_fake
    from pvelab.ops.connect import outer_client
    from pvelab.ops.preflight import run_preflight

    fake = serve(outer_fake())
    fake.storages["local"]["content"] += ",images"

    def check(overrides):
        spec = parse_spec(deep_merge(TEMPLATE_RAW(), overrides))
        results = run_preflight(spec, outer_client(spec, fake.url, ca, FAST, token=TOKEN))
        return next(r for r in results if r.name == "node template")

    assert check({}).status == "pass"  # local-lvm: LVM-thin
    bad = check({"outer": {"storage": "local"}})
    assert bad.status == "fail" and "storage local is of type dir: no linked clones" in bad.detail
    assert "template.linkedClones: false" in bad.fix
    assert check({"outer": {"storage": "local"}, "template": {"linkedClones": False}}).status == "pass"


def test_the_default_builder_address_skips_the_qdevice_vm():
    from pvelab.node_template import builder_ip
    from pvelab.qdevice import qdevice_plan

    spec = parse_spec(deep_merge(lab_raw(), {"nodes": {"count": 4, "qdevice": True, "source": "template"}}))
    assert qdevice_plan(spec).ip == "10.10.10.15" and builder_ip(spec) == "10.10.10.16"


def test_the_builder_gets_the_scripts_first_and_is_keyed_on_its_instance(tpl):
    key = template_key(parse_spec(TEMPLATE_RAW()))
    prefix = f"lab-template-{key}"
    builder, scripts = tpl.named(f"{prefix}-builder"), tpl.named(f"{prefix}-scripts")
    assert run_line(scripts).startswith("bash -s -- pve-lab-scripts ")
    assert tpl.depends_on(scripts, builder)
    for step in ("apt-proxy", "prepare", "ready", "ceph", "seal"):
        record = tpl.named(f"{prefix}-{step}")
        assert tpl.depends_on(record, scripts), step
        assert unwrap(record.inputs["triggers"]) == [f"{MOCK_NEXT_VMID}/{mock_mac(f'{prefix}-builder', 0)}"], step


def test_a_re_cloned_node_runs_its_cluster_and_ceph_steps_again():
    """A new template (here: another template.vmId) replaces the clones: bpg's clone.vm_id is ForceNew
    (proxmoxtf/resource/vm/vm.go), and qemu-server gives every clone new MACs. The mock answers a re-created
    VM with a new MAC (MOCK_REBUILT_VMS); every step keyed on the instance must change with it."""
    from pvelab import evaluate

    before = evaluate_lab({"nodes": {"source": "template"}, "template": {"vmId": 9050}})
    evaluate.MOCK_REBUILT_VMS.add("lab-pve2-vm")
    try:
        after = evaluate_lab({"nodes": {"source": "template"}, "template": {"vmId": 9051}})
    finally:
        evaluate.MOCK_REBUILT_VMS.clear()
    assert before.named("lab-pve2-vm").plain("clone")["vmId"] == 9050
    assert after.named("lab-pve2-vm").plain("clone")["vmId"] == 9051
    assert after.named("lab-pve2-vm").options["deleteBeforeReplace"] is True
    changed = {r.name for r in after.of_type(COMMAND)
               if unwrap(r.inputs.get("triggers")) != unwrap(before.named(r.name).inputs.get("triggers"))}
    node_steps = {f"lab-pve2-{s}" for s in ("scripts", "identity", "apt-proxy", "prepare", "pve", "ready", "network")}
    cluster_and_ceph = {"lab-cluster-evict-pve2", "lab-cluster-join-pve2", "lab-cluster-quorum",
                        "lab-ceph-install-pve2", "lab-ceph-mon-pve2", "lab-ceph-osd-pve2", "lab-ceph-health"}
    assert node_steps | cluster_and_ceph <= changed
    assert not [n for n in changed if "pve1" in n or "pve3" in n]

"""A class on the template path: the class-images stack builds one golden template per outer node and
every student's stack clones its node's template (classroom/templates.py, classroom/class_templates.py)."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from harness import VM, leaked_secrets

from pvelab.classroom.allocate import allocate
from pvelab.classroom.automation import IMAGES_TOKEN_KEY, images_program
from pvelab.classroom.roster import load_roster
from pvelab.evaluate import PLACEHOLDER_SECRETS, evaluate_config, unwrap
from pvelab.provider_types import check_all as check_provider_types
from test_classroom_automation import run_inline

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"
TOKEN = PLACEHOLDER_SECRETS["pve-lab:outerApiToken"]


def template_roster():
    roster = load_roster(EXAMPLE)
    roster.lab = copy.deepcopy(roster.lab)
    roster.lab.setdefault("nodes", {})["source"] = "template"
    return roster


@pytest.fixture(scope="module")
def plan():
    plan = allocate(template_roster())
    assert plan.ok, plan.problems
    return plan


def test_each_student_clones_the_template_of_their_outer_node(plan):
    base = plan.roster.allocation.vmid_base
    for st in plan.students:
        index = [n.name for n in plan.roster.outer_nodes].index(st.outer_node)
        assert st.lab["template"]["vmId"] == base - 1 - index
        assert st.spec.template.vm_id == base - 1 - index


def test_one_build_per_outer_node_in_the_first_students_vlan(plan):
    builds = {b.node: b for b in plan.template_builds}
    assert sorted(builds) == sorted({st.outer_node for st in plan.students})
    for node, build in builds.items():
        first = min((st for st in plan.students if st.outer_node == node), key=lambda s: s.slot)
        assert build.vlan_tag == first.lab["student"]["network"]["vlanTag"]
        assert build.lab["network"] == first.lab["network"]
        assert "student" not in build.lab and "vmId" not in build.lab.get("template", {})
        assert build.vmid == first.lab["template"]["vmId"]
        assert build.image_file_id == first.lab["image"]["fileId"]


def test_sdn_mode_has_no_builder_network_and_says_so():
    roster = template_roster()
    network = dataclasses.replace(roster.allocation.network, mode="sdn", zone="classes", vnet_prefix="ha")
    roster.allocation = dataclasses.replace(roster.allocation, network=network)
    plan = allocate(roster, strict=False)
    assert any("nodes.source: template needs allocation.network.mode vlan" in p for p in plan.problems)


@pytest.fixture(scope="module")
def images_graph(plan):
    program = images_program(plan.image_downloads, "https://pve.example.internal:8006/", True, plan.template_builds)
    return run_inline(program, {IMAGES_TOKEN_KEY: TOKEN}, [IMAGES_TOKEN_KEY])


def test_the_images_stack_builds_a_template_per_node_with_the_students_vmid(plan, images_graph):
    records, outputs = images_graph
    builders = {r.plain("nodeName"): r for r in records if r.type == VM}
    assert {b.node: b.vmid for b in plan.template_builds} == {n: int(r.plain("vmId")) for n, r in builders.items()}
    for r in builders.values():
        assert "pve-lab-template" in r.plain("tags")
        assert r.options["deleteBeforeReplace"] is True and r.options["replaceOnChanges"] == ["description"]
    converts = [r for r in records if r.type == "command:local:Command"]
    assert len(converts) == len(builders)
    assert sorted(outputs["templateVmIds"].value) == sorted(builders)
    assert check_provider_types(records) == []
    from pvelab.evaluate import plaintext_strings

    assert not any(TOKEN in s for r in records for s in plaintext_strings(r.inputs))


def test_a_students_stack_builds_nothing_and_clones(plan):
    st = plan.students[0]
    ev = evaluate_config({**st.config(), **PLACEHOLDER_SECRETS}, list(PLACEHOLDER_SECRETS), stack=st.stack)
    assert ev.ok, ev.error
    vms = [r for r in ev.of_type(VM) if "pve-lab-node" in (r.plain("tags") or [])]
    assert len(vms) == 3 and all(unwrap(r.inputs["clone"])["vmId"] == st.lab["template"]["vmId"] for r in vms)
    # nothing of the template is built here (the rolling restart's own local steps are on every lab)
    assert not [r for r in ev.records if "builder" in r.name
                or (r.type == "command:local:Command" and r.name.endswith("-convert"))]
    assert not [r for r in ev.records if r.name.endswith("-finish")]
    assert leaked_secrets(ev) == []


# ---------------------------------------------------------------- the class package cache

CACHE = {"address": "10.100.255.10/24", "gateway": "10.100.255.1", "vlanTag": 1099}


def cache_roster(cache=CACHE):
    roster = template_roster()
    from pvelab.classroom.class_cache import parse_class_cache

    problems: list = []
    roster.class_cache = parse_class_cache(cache, problems)
    assert problems == []
    return roster


def test_every_lab_and_builder_fetches_through_the_class_cache():
    plan = allocate(cache_roster())
    assert plan.ok, plan.problems
    assert all(st.lab["aptProxy"] == "http://10.100.255.10:3142" for st in plan.students)
    assert all(b.lab["aptProxy"] == "http://10.100.255.10:3142" for b in plan.template_builds)
    assert plan.cache_site.node == plan.students[0].outer_node


def test_a_bad_class_cache_is_one_clear_error(tmp_path):
    import yaml

    from pvelab.classroom.roster import RosterError

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["classCache"] = {"address": "10.100.255.10", "gateway": "10.100.255.1", "colour": "red"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RosterError) as err:
        load_roster(path)
    text = "\n".join(err.value.problems)
    assert "roster.classCache.colour: unknown key" in text
    assert "roster.classCache.address: '10.100.255.10' is not an address with its prefix" in text


def test_the_images_stack_makes_the_cache_before_the_builders():
    plan = allocate(cache_roster())
    program = images_program(plan.image_downloads, "https://pve.example.internal:8006/", True, plan.template_builds,
                             plan.cache_site)
    records, outputs = run_inline(program, {IMAGES_TOKEN_KEY: TOKEN}, [IMAGES_TOKEN_KEY])
    by_urn = {r.urn: r for r in records}
    cache_vm = next(r for r in records if r.type == VM and "pve-lab-cache" in r.plain("tags"))
    install = next(r for r in records if r.name == "class-cache-install")
    assert cache_vm.plain("networkDevices")[0]["vlanId"] == 1099
    assert cache_vm.plain("initialization")["ipConfigs"][0]["ipv4"]["address"] == "10.100.255.10/24"
    assert 'cache-install.sh"' in unwrap(install.inputs["create"]).splitlines()[-1]
    # that line runs the script the cache VM's scripts step shipped before it
    scripts = next(r for r in records if r.name == "class-cache-scripts")
    assert scripts.urn in install.dependencies and cache_vm.urn in scripts.dependencies
    builders = [r for r in records if r.type == VM and "pve-lab-template" in r.plain("tags")]
    assert builders and all(install.urn in b.dependencies for b in builders)
    assert outputs["aptProxy"].value == "http://10.100.255.10:3142"
    assert check_provider_types(records) == []
    assert by_urn  # every record has a URN


def test_cache_install_script_installs_once(tmp_path):
    import sys

    from node_runner import STANDIN_BIN, FakeNode, standin_log

    sys.path.insert(0, str(STANDIN_BIN))
    import _debian

    node = FakeNode("class-cache", tmp_path / "state")
    _debian.seed_fresh(node.state, node.name)
    env = {"NODE_HOSTNAME": "class-cache", "DEADLINE_S": "3", "POLL_S": "0.02"}
    r = node.run_script("cache-install", [], env)
    assert r.returncode == 0, r.output
    state = _debian.load(node.state, node.name)
    assert "apt-cacher-ng" in state["packages"] and state["units"]["apt-cacher-ng.service"]["active"]
    assert (node.root / "etc/apt-cacher-ng/zz-pve-lab.conf").read_text() == "Port: 3142\n"
    before = len(standin_log(node.state))
    assert node.run_script("cache-install", [], env).returncode == 0
    again = [c for c in standin_log(node.state)[before:] if "apt-get" in c or "restart" in c]
    assert again == []
    r = node.run_script("cache-install", [], {**env, "NODE_HOSTNAME": "pve1"})
    assert r.returncode == 1 and "this machine is named 'class-cache'" in r.stderr

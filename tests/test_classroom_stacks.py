"""Every student's stack, evaluated on the mock runtime: only their own pool, network, VMIDs, user and ACLs."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from harness import VM, is_secret_input, leaked_secrets

from pvelab.classroom.allocate import allocate
from pvelab.classroom.guardrails import class_limits
from pvelab.classroom.roster import load_roster
from pvelab.evaluate import PLACEHOLDER_SECRETS, evaluate_config, plaintext_strings
from pvelab.policy_rules import ACL, POOL, USER, VNET, as_res, check_all, resources_from_spec
from pvelab.provider_types import check_all as check_provider_types
from pvelab.spec import parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"
APPLIER = "proxmoxve:sdn/applier:Applier"
IMAGE = "proxmoxve:download/fileLegacy:FileLegacy"


def evaluate_student(st):
    ev = evaluate_config({**st.config(), **PLACEHOLDER_SECRETS}, list(PLACEHOLDER_SECRETS), stack=st.stack)
    assert ev.ok, ev.error
    return ev


@pytest.fixture(scope="module")
def vlan_class():
    plan = allocate(load_roster(EXAMPLE))
    return plan, {st.student_id: evaluate_student(st) for st in plan.students}


@pytest.fixture(scope="module")
def sdn_class():
    roster = load_roster(EXAMPLE)
    network = dataclasses.replace(roster.allocation.network, mode="sdn", zone="classes", vnet_prefix="ha")
    roster.allocation = dataclasses.replace(roster.allocation, network=network)
    roster.students = roster.students[:2]
    plan = allocate(roster)
    return plan, {st.student_id: evaluate_student(st) for st in plan.students}


def outer_vms(ev):
    return [r for r in ev.of_type(VM) if ev.provider_of(r) and ev.provider_of(r).name == "outer"]


def test_each_vlan_stack_holds_only_its_own_pool_network_vmids_and_acls(vlan_class):
    plan, evs = vlan_class
    for st in plan.students:
        ev, student = evs[st.student_id], st.student
        pool, user, tag = student["pool"], student["user"], student["network"]["vlanTag"]
        (pool_res,) = ev.of_type(POOL)
        (user_res,) = ev.of_type(USER)
        assert pool_res.plain("poolId") == pool and user_res.plain("userId") == user
        acls = {(a.plain("path"), a.plain("roleId"), a.plain("userId"), a.plain("propagate")) for a in ev.of_type(ACL)}
        assert acls == {(f"/pool/{pool}", "PVEVMUser", user, True),
                        (f"/sdn/zones/localnetwork/vmbr1/{tag}", "PVESDNUser", user, False)}
        vms = outer_vms(ev)
        assert sorted(v.plain("vmId") for v in vms) == list(st.vmids)
        for v in vms:
            assert v.plain("poolId") == pool and v.plain("nodeName") == st.outer_node
            assert v.plain("networkDevices") == [{"model": "virtio", "bridge": "vmbr1", "vlanId": tag, "firewall": False}]
            assert v.plain("disks")[0]["importFrom"] == st.lab["image"]["fileId"]  # the class's shared image
            assert v.plain("name").startswith(f"{st.student_id}-pve")
        assert ev.of_type(IMAGE) == [] and ev.of_type(VNET) == []  # nothing downloaded per student


def test_no_stack_mentions_another_students_pool_user_or_vmids(vlan_class):
    plan, evs = vlan_class
    for st in plan.students:
        text = "\n".join(s for r in evs[st.student_id].records for s in plaintext_strings(r.inputs))
        numbers = {r.plain("vmId") for r in evs[st.student_id].of_type(VM)}
        for other in plan.students:
            if other is st:
                continue
            assert other.student["pool"] not in text and other.student["user"] not in text
            assert not numbers & set(other.vmids)


def test_each_sdn_stack_makes_its_own_vnet_and_applies_it_before_the_vms(sdn_class):
    plan, evs = sdn_class
    for st in plan.students:
        ev, net = evs[st.student_id], st.student["network"]
        (vnet,) = ev.of_type(VNET)
        assert (vnet.plain("resourceId"), vnet.plain("zone"), vnet.plain("tag")) == (net["vnet"], "classes", net["vnetTag"])
        appliers = {a.name.rsplit("-", 1)[-1]: a for a in ev.of_type(APPLIER)}
        assert appliers["apply"].plain("onCreate") is True and appliers["finalizer"].plain("onDestroy") is True
        assert ev.depends_on(appliers["apply"], vnet) and ev.depends_on(vnet, appliers["finalizer"])
        for v in outer_vms(ev):
            assert v.plain("networkDevices")[0]["bridge"] == net["vnet"] and "vlanId" not in v.plain("networkDevices")[0]
            assert ev.depends_on(v, appliers["apply"])  # the VNet's bridge exists on the node before the VM starts
        paths = {a.plain("path") for a in ev.of_type(ACL)}
        assert paths == {f"/pool/{st.student['pool']}", f"/sdn/zones/classes/{net['vnet']}"}


def test_student_password_is_generated_and_stays_secret(vlan_class):
    plan, evs = vlan_class
    ev = evs["s01"]
    (user,) = ev.of_type(USER)
    assert is_secret_input(user, "password")
    assert ev.stack_outputs["studentPassword"].secret
    assert ev.stack_outputs["student"].value == {"id": "s01", "name": "Aiko Tanaka", "user": "ha101-s01@pve",
                                                 "pool": "ha101-s01"}
    assert leaked_secrets(ev) == []


def evaluate_with_user(st, user: str):
    lab = copy.deepcopy(st.lab)
    lab["student"]["user"] = user
    ev = evaluate_config({"pve-lab:lab": json.dumps(lab), **PLACEHOLDER_SECRETS}, list(PLACEHOLDER_SECRETS))
    assert ev.ok, ev.error
    return ev


@pytest.mark.parametrize("user", ["aiko@ldap", "aiko@pam", "aiko@pve"])
def test_an_account_the_class_did_not_make_is_never_created_or_deleted_only_granted(vlan_class, user):
    """A directory user (or any named user) is a real person's account: a stack that created it would fail when it is
    synced already, and its destroy would delete the account with its ACLs and TFA (pve-access-control
    API2/User.pm delete_user). Only the ACLs are the stack's."""
    plan, _ = vlan_class
    st = plan.students[0]
    ev = evaluate_with_user(st, user)
    assert ev.of_type(USER) == []
    assert [r.name for r in ev.of_type("random:index/randomPassword:RandomPassword") if "student" in r.name] == []
    assert "studentPassword" not in ev.stack_outputs
    assert {a.plain("userId") for a in ev.of_type(ACL)} == {user}
    assert check_all(ev.records, class_limits(plan)) == []
    built = resources_from_spec(parse_spec(json.loads(json.dumps({**st.lab, "student": {**st.lab["student"],
                                                                                          "user": user}}))))
    assert not [r for r in built if r.type == USER]


def test_the_same_person_in_two_classes_gets_two_sets_of_acls_and_no_account_twice(vlan_class):
    plan, _ = vlan_class
    st = plan.students[0]
    other = copy.deepcopy(st.lab)
    other["student"]["pool"] = "net202-s09"
    first = evaluate_with_user(st, "aiko@ldap")
    second = evaluate_config({"pve-lab:lab": json.dumps({**other, "student": {**other["student"], "user": "aiko@ldap"}}),
                              **PLACEHOLDER_SECRETS}, list(PLACEHOLDER_SECRETS))
    assert second.ok, second.error
    for ev in (first, second):
        assert ev.of_type(USER) == []
    paths = [{a.plain("path") for a in ev.of_type(ACL)} for ev in (first, second)]
    assert "/pool/ha101-s01" in paths[0] and "/pool/net202-s09" in paths[1] and "/pool/ha101-s01" not in paths[1]


def test_the_class_account_is_created_in_the_pve_realm_with_a_password(vlan_class):
    plan, evs = vlan_class
    (user,) = evs["s01"].of_type(USER)
    assert user.plain("userId") == "ha101-s01@pve" and is_secret_input(user, "password")


def test_student_stacks_pass_the_policy_and_the_provider_types(vlan_class, sdn_class):
    for plan, evs in (vlan_class, sdn_class):
        limits = class_limits(plan)
        for st in plan.students:
            ev = evs[st.student_id]
            assert check_all(ev.records, limits) == []
            assert check_provider_types(ev.records) == []
            for r in ev.records:  # children are named after their parent, as everywhere in the program
                if r.parent and r.parent in ev.by_urn() and r.name != "lab":
                    assert r.name.startswith(ev.by_urn()[r.parent].name + "-"), r.name


def test_the_plans_hand_built_resources_match_the_program(vlan_class, sdn_class):
    """`classroom plan` checks the policy on resources built from the spec: they must be what the program declares."""
    keys = ("vmId", "nodeName", "poolId", "cpu", "memory", "stopOnDestroy")
    for plan, evs in (vlan_class, sdn_class):
        for st in plan.students:
            built = {r.name: r for r in resources_from_spec(st.spec)}
            real = {r.name: r for r in map(as_res, evs[st.student_id].records) if r.name in built}
            assert set(real) == set(built)
            for name, b in built.items():
                r = real[name]
                assert r.type == b.type
                if r.type == VM:
                    for k in keys:
                        assert {kk: r.props[k][kk] for kk in b.props[k]} == b.props[k] if isinstance(b.props[k], dict) \
                            else r.props.get(k) == b.props[k], (name, k)
                    strip = lambda disks: [(d["interface"], d["datastoreId"], d["size"]) for d in disks]  # noqa: E731
                    assert strip(r.props["disks"]) == strip(b.props["disks"])
                    nic = lambda n: {k: n.get(k) for k in ("bridge", "vlanId", "firewall")}  # noqa: E731
                    assert [nic(n) for n in r.props["networkDevices"]] == [nic(n) for n in b.props["networkDevices"]]
                else:
                    assert {k: r.props.get(k) for k in b.props} == dict(b.props), name

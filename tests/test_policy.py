"""The classroom policy rules on hand-built resources: each rule passes where it should and fails where it should."""
from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import pytest

from pvelab.policy_rules import (ACL, IMAGE, LIMIT_POLICY, POOL, SANITY_POLICY, STACK_POLICY, USER, VM, VNET,
                                 ClassLimits, Res,
                                 check_all, check_class_limits, check_lab_sanity)

POLICY_DIR = Path(__file__).resolve().parent.parent / "policy"


def vm(i: int, **props) -> Res:
    base = {"vmId": 20000 + i, "nodeName": "pve1", "poolId": "ha101-s01",
            "cpu": {"type": "host", "cores": 2, "sockets": 1}, "memory": {"dedicated": 6144},
            "disks": [{"interface": "scsi0", "datastoreId": "local-lvm", "size": 32,
                       "importFrom": "local:import/debian.qcow2"},
                      {"interface": "scsi1", "datastoreId": "local-lvm", "size": 32}],
            "networkDevices": [{"bridge": "vmbr1", "vlanId": 1100, "firewall": False}],
            "initialization": {"datastoreId": "local-lvm"}, "stopOnDestroy": True}
    base.update(props)
    return Res(VM, f"lab-s01-pve{i + 1}-vm", base, "outer")


def student_stack(mode: str = "vlan") -> list[Res]:
    """A clean student stack: 3 nested nodes (6 vCPU, 18 GiB, 192 GiB), pool, user, two ACLs."""
    net_path = "/sdn/zones/localnetwork/vmbr1/1100"
    res = [vm(i) for i in range(3)]
    if mode == "sdn":
        res = [vm(i, networkDevices=[{"bridge": "ha0", "firewall": False}]) for i in range(3)]
        res.append(Res(VNET, "lab-student-vnet", {"resourceId": "ha0", "zone": "classes", "tag": 1100}, "outer"))
        net_path = "/sdn/zones/classes/ha0"
    return res + [
        Res(POOL, "lab-student-pool", {"poolId": "ha101-s01"}, "outer"),
        Res(USER, "lab-student-user", {"userId": "ha101-s01@pve"}, "outer"),
        Res(ACL, "lab-student-acl-pool", {"path": "/pool/ha101-s01", "roleId": "PVEVMUser",
                                          "userId": "ha101-s01@pve", "propagate": True}, "outer"),
        Res(ACL, "lab-student-acl-network", {"path": net_path, "roleId": "PVESDNUser",
                                             "userId": "ha101-s01@pve", "propagate": False}, "outer"),
        # the nested cluster's own test VM: not on the outer host, never counted
        Res(VM, "lab-ha-vm-100", {"vmId": 100, "nodeName": "s01-pve1", "cpu": {"type": "x86-64-v2-AES", "cores": 64},
                                  "memory": {"dedicated": 999999}}, "lab-inner"),
    ]


LIMITS = ClassLimits(max_nodes=3, max_cores=6, max_memory_gib=18, max_disk_gib=192, allowed_nodes=("pve1", "pve2"),
                     allowed_storages=("local-lvm", "local"), vmid_min=20000, vmid_max=22559, require_student=True)


def replace(res: list[Res], name: str, **props) -> list[Res]:
    out = []
    for r in res:
        if r.name == name:
            merged = copy.deepcopy(dict(r.props))
            merged.update(props)
            r = Res(r.type, r.name, merged, r.provider)
        out.append(r)
    return out


@pytest.mark.parametrize("mode", ["vlan", "sdn"])
def test_a_clean_student_stack_passes_every_rule(mode):
    assert check_all(student_stack(mode), LIMITS) == []


def test_plain_tuples_work_too():
    tuples = [(r.type, r.name, r.props) for r in student_stack() if r.provider == "outer"]
    assert check_all(tuples, LIMITS) == []


# ------------------------------------------------------------------ class limits


@pytest.mark.parametrize("mutate, expected", [
    (lambda res: res + [vm(3, vmId=20003)], "4 nested nodes; the class allows 3 per student"),
    (lambda res: replace(res, "lab-s01-pve1-vm", cpu={"type": "host", "cores": 4, "sockets": 1}),
     "8 vCPUs over all nested nodes; the class allows 6 per student"),
    (lambda res: replace(res, "lab-s01-pve1-vm", memory={"dedicated": 8192}),
     "20 GiB RAM over all nested nodes; the class allows 18 GiB per student"),
    (lambda res: replace(res, "lab-s01-pve1-vm", disks=[{"interface": "scsi0", "datastoreId": "local-lvm", "size": 100}]),
     "228 GiB disk over all nested nodes; the class allows 192 GiB per student"),
    (lambda res: replace(res, "lab-s01-pve2-vm", nodeName="pve7"),
     "lab-s01-pve2-vm: outer node 'pve7' is not allowed (allowed: pve1, pve2)"),
    (lambda res: replace(res, "lab-s01-pve3-vm", initialization={"datastoreId": "nfs-slow"}),
     "lab-s01-pve3-vm: cloud-init disk on storage 'nfs-slow', which is not allowed"),
    (lambda res: res + [Res(IMAGE, "lab-image", {"nodeName": "pve1", "datastoreId": "usb"}, "outer")],
     "lab-image: image on storage 'usb', which is not allowed"),
    (lambda res: replace(res, "lab-s01-pve1-vm", vmId=9100),
     "lab-s01-pve1-vm: VMID 9100 is outside the class's range 20000..22559"),
    (lambda res: [r for r in res if r.type not in (POOL, USER, ACL)],
     "a class stack must have a student section"),
])
def test_class_limit_rules_fail_where_they_should(mutate, expected):
    clean = student_stack()
    assert check_class_limits(clean, LIMITS) == []
    messages = [str(v) for v in check_class_limits(mutate(clean), LIMITS)]
    assert any(expected in m for m in messages), messages
    assert all(m.startswith("[class-limits]") for m in messages)


def test_no_limits_means_no_class_violations():
    big = student_stack() + [vm(k, vmId=30000 + k, nodeName="anywhere") for k in range(3, 9)]
    assert check_class_limits(big, ClassLimits()) == []


# ------------------------------------------------------------------ lab sanity and isolation


@pytest.mark.parametrize("mutate, rule, expected", [
    (lambda res: [r for r in res if r.name != "lab-s01-pve3-vm"], "quorum", "2 nested nodes"),
    (lambda res: replace(res, "lab-s01-pve1-vm", cpu={"type": "kvm64", "cores": 2}), "nested-virtualization",
     "CPU type 'kvm64'"),
    (lambda res: replace(res, "lab-s01-pve2-vm", networkDevices=[{"bridge": "vmbr1", "vlanId": 1100, "firewall": True}]),
     "nic-firewall-off", "networkDevices[0] has the firewall on"),
    (lambda res: replace(res, "lab-s01-pve2-vm", stopOnDestroy=False), "destroy-safe", "stopOnDestroy is not set"),
    (lambda res: replace(res, "lab-s01-pve2-vm", vmId=20000), "unique-vmids", "VMID 20000 is also used by lab-s01-pve1-vm"),
    (lambda res: replace(res, "lab-s01-pve2-vm", poolId="ha101-s02"), "student-isolation",
     "VM is in pool 'ha101-s02', not the student's pool 'ha101-s01'"),
    (lambda res: replace(res, "lab-s01-pve2-vm", networkDevices=[{"bridge": "vmbr1", "firewall": False}]),
     "student-isolation", "has no VLAN tag"),
    (lambda res: replace(res, "lab-student-acl-pool", userId="ha101-s02@pve"), "student-isolation",
     "ACL for 'ha101-s02@pve'"),
    (lambda res: replace(res, "lab-student-acl-pool", roleId="PVEVMAdmin"), "student-isolation",
     "role 'PVEVMAdmin' is an admin role"),
    (lambda res: replace(res, "lab-student-acl-pool", path="/"), "student-isolation", "ACL on '/', outside"),
    (lambda res: replace(res, "lab-student-acl-network", path="/sdn/zones/localnetwork/vmbr1/1101"),
     "student-isolation", "ACL on '/sdn/zones/localnetwork/vmbr1/1101'"),
    (lambda res: [r for r in res if r.name != "lab-student-acl-network"], "student-isolation",
     "no ACL gives 'ha101-s01@pve' their own network"),
    (lambda res: [r for r in res if r.name != "lab-student-acl-pool"], "student-isolation",
     "no ACL gives 'ha101-s01@pve' access to their pool"),
    (lambda res: res + [Res(POOL, "other-pool", {"poolId": "ha101-s02"}, "outer")], "student-isolation",
     "exactly one pool and one user"),
])
def test_sanity_rules_fail_where_they_should(mutate, rule, expected):
    assert check_lab_sanity(student_stack()) == []
    violations = check_lab_sanity(mutate(student_stack()))
    assert any(v.rule == rule and expected in str(v) for v in violations), [str(v) for v in violations]


def test_sdn_stack_nics_must_be_on_the_students_vnet():
    res = replace(student_stack("sdn"), "lab-s01-pve1-vm", networkDevices=[{"bridge": "ha1", "firewall": False}])
    (v,) = check_lab_sanity(res)
    assert v.rule == "student-isolation" and "on 'ha1', not the student's VNet (ha0)" in v.message


def test_a_lone_lab_has_no_isolation_rules():
    lone = [vm(i, poolId=None, networkDevices=[{"bridge": "vmbr0", "firewall": False}]) for i in range(3)]
    assert check_lab_sanity(lone) == []


# ------------------------------------------------------------------ policy config


def test_limits_round_trip_through_policy_config():
    assert ClassLimits.from_config(LIMITS.to_config()) == LIMITS
    assert ClassLimits.from_config({"enforcementLevel": "mandatory"}) == ClassLimits()


@pytest.mark.parametrize("config, expected", [
    ({"maxRam": 3}, f"policy config {LIMIT_POLICY}.maxRam: unknown key"),
    ({"maxNodes": "three"}, f"policy config {LIMIT_POLICY}.maxNodes: expected a number"),
    ({"allowedNodes": "pve1"}, f"policy config {LIMIT_POLICY}.allowedNodes: expected a list of names"),
])
def test_bad_policy_config_is_one_clear_line(config, expected):
    with pytest.raises(ValueError, match="^" + expected.replace(".", r"\.")):
        ClassLimits.from_config(config)


# ------------------------------------------------------------------ the policy pack itself


@pytest.fixture(scope="module")
def policies():
    sys.path.insert(0, str(POLICY_DIR))
    try:
        yield importlib.import_module("policies")
    finally:
        sys.path.remove(str(POLICY_DIR))


def policy_resources(res: list[Res]):
    from pulumi_policy import PolicyProviderResource, PolicyResource, PolicyResourceOptions

    opts = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=None, additional_secret_outputs=[])
    out = []
    for r in res:
        provider = PolicyProviderResource("pulumi:providers:proxmoxve", {}, f"urn:prov::{r.provider}", r.provider)
        out.append(PolicyResource(r.type, r.props, f"urn:pulumi:s::p::{r.type}::{r.name}", r.name, opts, provider,
                                  None, [], {}))
    return out


def run_policy(policy, res: list[Res], config: dict) -> list[tuple[str, str]]:
    from pulumi_policy import StackValidationArgs

    reported = []
    policy.validate(StackValidationArgs(policy_resources(res), config), lambda msg, urn=None: reported.append((msg, urn)))
    return reported


# ---------------------------------------------------------------- the pack as the engine runs it (analyzer gRPC)

UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi_policy/proxy.py UNKNOWN_STRING_VALUE (preview)


class Analyzer:
    """pulumi-policy's own analyzer servicer serving the pack's policies, fed the requests the engine sends."""

    def __init__(self, policies, config: dict | None = None):
        from pulumi.runtime import proto
        from pulumi_policy import EnforcementLevel
        from pulumi_policy.policy import _PolicyAnalyzerServicer

        self.proto = proto
        policies.__dict__["_TALLIES"].clear()
        self.servicer = _PolicyAnalyzerServicer("pve-lab-classroom", "0.1.0", policies.POLICIES,
                                                EnforcementLevel.MANDATORY)
        request = proto.ConfigureAnalyzerRequest()
        for name, props in (config or {}).items():
            request.policyConfig[name].enforcementLevel = proto.MANDATORY
            request.policyConfig[name].properties.update(props)
        self.servicer.Configure(request, None)

    def _fields(self, r: Res) -> dict:
        from google.protobuf import struct_pb2

        props = struct_pb2.Struct()
        props.update(copy.deepcopy(dict(r.props)))
        return dict(type=r.type, properties=props, urn=f"urn:pulumi:ha101-s01::pve-lab::{r.type}::{r.name}",
                    name=r.name, provider=self.proto.AnalyzerProviderResource(
                        type="pulumi:providers:proxmoxve", urn=f"urn:pulumi:ha101-s01::pve-lab::pulumi:providers:"
                                                              f"proxmoxve::{r.provider}", name=r.provider))

    def resource(self, r: Res) -> list:
        return list(self.servicer.Analyze(self.proto.AnalyzeRequest(**self._fields(r)), None).diagnostics)

    def stack(self, res: list[Res]) -> list:
        request = self.proto.AnalyzeStackRequest(resources=[self.proto.AnalyzerResource(**self._fields(r)) for r in res])
        return list(self.servicer.AnalyzeStack(request, None).diagnostics)


def mandatory(diagnostics) -> list[str]:
    from pulumi.runtime import proto

    # pulumi-policy puts the policy's description first, then the reported message
    return [d.message.split("\n", 1)[-1] for d in diagnostics if d.enforcementLevel == proto.MANDATORY]


def advisory(diagnostics) -> list[str]:
    from pulumi.runtime import proto

    return [d.message.split("\n", 1)[-1] for d in diagnostics if d.enforcementLevel == proto.ADVISORY]


def preview_shaped(res: list[Res], mode: str = "vlan") -> list[Res]:
    """The student stack as a preview sees it: the user's generated password, the VMs' cloud-init password and, in
    SDN mode, the VNet bridge (set after the SDN apply) are unknown."""
    out = []
    for r in res:
        props = copy.deepcopy(dict(r.props))
        if r.type == USER:
            props["password"] = UNKNOWN_STRING
        if r.type == VM and r.outer:
            props["initialization"] = {**props.get("initialization", {}),
                                       "userAccount": {"username": "root", "password": UNKNOWN_STRING}}
            if mode == "sdn":
                props["networkDevices"] = [{"bridge": UNKNOWN_STRING, "firewall": False}]
        out.append(Res(r.type, r.name, props, r.provider))
    return out


def test_the_pack_has_resource_policies_for_limits_and_sanity_and_a_stack_policy(policies):
    from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

    assert [p.name for p in policies.POLICIES] == [LIMIT_POLICY, SANITY_POLICY, STACK_POLICY]
    assert isinstance(policies.class_limits, ResourceValidationPolicy)
    assert isinstance(policies.lab_sanity, ResourceValidationPolicy)
    assert isinstance(policies.lab_stack, StackValidationPolicy)


@pytest.mark.parametrize("mode", ["vlan", "sdn"])
def test_a_clean_preview_with_unknowns_passes_and_nothing_becomes_advisory(policies, mode):
    analyzer = Analyzer(policies, {LIMIT_POLICY: LIMITS.to_config()})
    res = preview_shaped(student_stack(mode), mode)
    diagnostics = [d for r in res for d in analyzer.resource(r)] + analyzer.stack(res)
    assert mandatory(diagnostics) == [] and advisory(diagnostics) == []


def test_a_vm_breaking_a_limit_is_refused_on_its_inputs_in_a_preview(policies):
    analyzer = Analyzer(policies, {LIMIT_POLICY: LIMITS.to_config()})
    res = preview_shaped(replace(student_stack(), "lab-s01-pve2-vm", nodeName="pve7", stopOnDestroy=False))
    bad = next(r for r in res if r.name == "lab-s01-pve2-vm")
    messages = mandatory(analyzer.resource(bad))
    assert any(m.startswith("[class-limits] outer node 'pve7' is not allowed") for m in messages)
    assert any(m.startswith("[destroy-safe]") for m in messages)
    config_error, *_ = mandatory(Analyzer(policies, {LIMIT_POLICY: {"maxRam": 1}}).resource(bad))
    assert config_error.startswith(f"policy config {LIMIT_POLICY}.maxRam: unknown key (allowed: allowedNodes")


def test_the_vm_that_takes_a_student_over_a_total_is_refused_before_it_is_created(policies):
    analyzer = Analyzer(policies, {LIMIT_POLICY: LIMITS.to_config()})
    vms = preview_shaped([vm(i) for i in range(4)])
    # vms[1] analyzed twice (a preview then the update, in one analyzer) counts once
    results = [mandatory(analyzer.resource(v)) for v in (vms[0], vms[1], vms[1], vms[2], vms[3])]
    assert results[:4] == [[], [], [], []]
    assert "[class-limits] 4 nested nodes; the class allows 3 per student" in results[4]
    assert "[class-limits] 8 vCPUs over all nested nodes; the class allows 6 per student" in results[4]


def test_an_admin_acl_is_refused_on_its_own(policies):
    analyzer = Analyzer(policies)
    acl = Res(ACL, "lab-student-acl-pool", {"path": "/", "roleId": "Administrator", "userId": "ha101-s01@pve"}, "outer")
    messages = mandatory(analyzer.resource(acl))
    assert any("admin role" in m for m in messages) and any("ACL on '/'" in m for m in messages)


def test_the_stack_policy_reports_isolation_problems_with_urns(policies):
    analyzer = Analyzer(policies)
    res = replace(student_stack(), "lab-s01-pve2-vm", vmId=20000)
    (dup,) = analyzer.stack(preview_shaped(res))
    assert dup.message.split("\n", 1)[-1] == "[unique-vmids] VMID 20000 is also used by lab-s01-pve1-vm" and dup.urn.endswith("lab-s01-pve2-vm")


def test_bpg_default_vlan_id_0_is_no_tag_on_an_sdn_vnet():
    res = [vm(i, networkDevices=[{"bridge": "ha0", "firewall": False, "vlanId": 0}]) for i in range(3)]
    res = student_stack("sdn")[3:] + res
    assert check_lab_sanity(res) == []
    tagged = replace(res, "lab-s01-pve1-vm", networkDevices=[{"bridge": "ha0", "firewall": False, "vlanId": 7}])
    (v,) = check_lab_sanity(tagged)
    assert "tag 7, not the student's VNet" in v.message


def test_the_pack_directory_is_complete():
    assert (POLICY_DIR / "PulumiPolicy.yaml").exists() and (POLICY_DIR / "requirements.txt").exists()
    main = (POLICY_DIR / "__main__.py").read_text()
    assert main.count("PolicyPack(") == 1 and "POLICIES" in main

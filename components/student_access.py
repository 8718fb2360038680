"""StudentAccess: one student's corner of the outer host in a classroom stack.

- a resource pool holding the student's nested-node VMs (the VMs join it through their `pool_id`);
- the student's PVE user: created only when it is the class's own account `<class>-<id>@pve`, with a generated
  password (pulumi-random), a Pulumi secret the instructor hands out (`classroom credentials --show-secrets`).
  Any other user (another realm, or a named `user:`) is a real person's account: it is looked up (it must
  exist) and never created or deleted; only the ACLs below are managed (pvelab/classroom/realms.py);
- ACLs with least privilege: the student's role (default PVEVMUser: see README "What a student can do") on
  `/pool/<pool>`, and PVESDNUser (SDN.Audit + SDN.Use) on their own network only:
  `/sdn/zones/<zone>/<vnet>` (sdn mode) or `/sdn/zones/localnetwork/<bridge>/<tag>` (vlan mode, the VLAN
  of the outer bridge). Nothing on `/`, `/nodes`, `/storage` or other pools: the student sees and opens
  their own nested nodes and nothing else;
- sdn mode: the student's VNet in an existing zone, and the SDN "apply" around it. One Applier runs after
  the VNet is created (the bridge must exist on the node before a VM attaches to it); a second one, which
  the VNet depends on, is destroyed after the VNet and applies its removal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_proxmoxve as proxmoxve
import pulumi_random as random

from pvelab.classroom.realms import stack_owns_user
from pvelab.spec import LabSpec

NETWORK_ROLE = "PVESDNUser"  # SDN.Audit + SDN.Use on one VNet/VLAN: attach to it, see it, nothing more


def network_acl_path(spec: LabSpec) -> str:
    """The ACL path of the student's network (pure: the classroom plan and the policy use it too)."""
    assert spec.student is not None
    net = spec.student.network
    if net.mode == "sdn":
        return f"/sdn/zones/{net.zone}/{net.vnet}"
    return f"/sdn/zones/localnetwork/{spec.outer.bridge}/{net.vlan_tag}"


@dataclass
class StudentAccessArgs:
    spec: LabSpec


class StudentAccess(pulumi.ComponentResource):
    bridge: pulumi.Output[str]
    vlan_tag: Optional[int]
    pool_id: pulumi.Output[str]
    user_id: pulumi.Output[str]
    password: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: StudentAccessArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:StudentAccess", name, None, opts)
        spec = args.spec
        student = spec.student
        assert student is not None, "StudentAccess needs the spec's student section"
        child = pulumi.ResourceOptions(parent=self)
        label = f"pve-lab student {student.id}" + (f" ({student.name})" if student.name else "")

        pool = proxmoxve.PoolLegacy(f"{name}-pool", proxmoxve.PoolLegacyArgs(pool_id=student.pool, comment=label),
                                    opts=child)
        self.pool_id = pool.pool_id

        self.password = None
        if stack_owns_user(student.user, student.pool):
            generated = random.RandomPassword(
                f"{name}-password", random.RandomPasswordArgs(length=16, special=False, min_lower=2, min_upper=2,
                                                              min_numeric=2), opts=child)
            self.password = pulumi.Output.secret(generated.result)
            user = proxmoxve.UserLegacy(f"{name}-user", proxmoxve.UserLegacyArgs(
                user_id=student.user, comment=label, enabled=True, password=self.password), opts=child)
            self.user_id = user.user_id
        else:
            # A person's existing account: looked up (a missing user stops the preview), never owned.
            existing = proxmoxve.get_user_legacy_output(user_id=student.user, opts=pulumi.InvokeOutputOptions(parent=self))
            self.user_id = existing.user_id

        net = student.network
        if net.mode == "sdn":
            # Destroyed after the VNet (which depends on it): its apply makes the VNet's removal take effect.
            finalizer = proxmoxve.sdn.Applier(f"{name}-sdn-finalizer", proxmoxve.sdn.ApplierArgs(
                on_create=False, on_destroy=True), opts=child)
            vnet = proxmoxve.sdn.Vnet(f"{name}-vnet", proxmoxve.sdn.VnetArgs(
                resource_id=net.vnet, zone=net.zone, tag=net.vnet_tag,
                # ASCII only: PVE's alias format refuses most non-ASCII names
                alias=f"pve-lab student {student.id}"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[finalizer]))
            applied = proxmoxve.sdn.Applier(f"{name}-sdn-apply", proxmoxve.sdn.ApplierArgs(
                on_create=True, on_destroy=False),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[vnet],
                                            # a changed VNet is applied again
                                            replacement_trigger=f"{net.zone}/{net.vnet}/{net.vnet_tag}"))
            # The VMs take the VNet as their bridge only once SDN is applied (the bridge exists on the node).
            self.bridge = pulumi.Output.all(vnet.resource_id, applied.id).apply(lambda v: v[0])
            self.vlan_tag = None
            network_path = pulumi.Output.concat("/sdn/zones/", net.zone or "", "/", vnet.resource_id)
        else:
            self.bridge = pulumi.Output.from_input(spec.outer.bridge)
            self.vlan_tag = net.vlan_tag
            network_path = pulumi.Output.from_input(network_acl_path(spec))

        self.pool_acl = proxmoxve.Acl(f"{name}-acl-pool", proxmoxve.AclArgs(
            path=pool.pool_id.apply(lambda p: f"/pool/{p}"), role_id=student.role, user_id=self.user_id,
            propagate=True), opts=child)
        self.network_acl = proxmoxve.Acl(f"{name}-acl-network", proxmoxve.AclArgs(
            path=network_path, role_id=NETWORK_ROLE, user_id=self.user_id, propagate=False), opts=child)

        self.register_outputs({"pool_id": self.pool_id, "user_id": self.user_id, "bridge": self.bridge,
                               "vlan_tag": self.vlan_tag})

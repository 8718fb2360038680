"""HaTestVms: small VMs inside the nested cluster, on Ceph, under HA, with a node-affinity rule.

Everything here goes through the provider pointed at the nested cluster's API. PVE 9 expresses node
preference as an HA rule (`Harule`, type node-affinity); PVE 8 only has HA groups (`Hagroup`).
All of it is deleted with the cluster (deleted_with): destroying the lab makes no call to a nested API that
may be down (quorum lost, node off), while removing one object (fewer test VMs, a renamed rule) deletes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.spec import LabSpec

from .nested_node import GUEST_BRIDGE


@dataclass
class HaTestVmsArgs:
    spec: LabSpec
    node_names: Sequence[str]
    storage_id: pulumi.Input[str]  # the Ceph RBD storage
    inner_provider: proxmoxve.Provider
    after: Sequence[pulumi.Resource] = ()
    deleted_with: Optional[pulumi.Resource] = None  # the nested cluster: no delete call when it goes too


def node_priorities(preferred: str, node_names: Sequence[str]) -> dict[str, int]:
    """{pve1: 2, pve2: 1, ...}: the preferred node first, every other node as a fallback (non-strict)."""
    return {n: 2 if n == preferred else 1 for n in node_names}


class HaTestVms(pulumi.ComponentResource):
    def __init__(self, name: str, args: HaTestVmsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:HaTestVms", name, None, opts)
        spec, ha = args.spec, args.spec.ha
        preferred = spec.ha_preferred_node
        inner = pulumi.ResourceOptions(parent=self, provider=args.inner_provider, deleted_with=args.deleted_with)
        nodes = node_priorities(preferred, args.node_names)
        group = None
        if spec.pve_version == 8:
            # PVE 8 has no rules: an HA group must exist before a resource names it.
            group = proxmoxve.Hagroup(
                f"{name}-group", group=ha.rule_name, nodes=nodes, restricted=False, no_failback=False,
                comment=f"pve-lab: prefer {preferred}",
                opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(depends_on=list(args.after))))
        self.vms, self.resources = [], []
        for i in range(ha.test_vms):
            vmid = ha.test_vmid_base + i
            vm = proxmoxve.VmLegacy(
                f"{name}-vm-{vmid}",
                name=f"ha-test-{vmid}",
                node_name=preferred,
                vm_id=vmid,
                description="pve-lab: HA test VM (stop its node and watch it start elsewhere)",
                tags=["pve-lab", "ha-test"],
                cpu=proxmoxve.VmLegacyCpuArgs(cores=1, type="x86-64-v2-AES"),
                memory=proxmoxve.VmLegacyMemoryArgs(dedicated=ha.test_vm_memory_mib),
                scsi_hardware="virtio-scsi-single",
                # The disk on Ceph is what lets any node start this VM.
                disks=[proxmoxve.VmLegacyDiskArgs(interface="scsi0", datastore_id=args.storage_id,
                                                  size=ha.test_vm_disk_gib, file_format="raw", iothread=True)],
                # A NIC on the nodes' bridge, as a student's VM would have: it must exist on every node
                # the VM may move to (node-network.sh makes vmbr0 on each).
                network_devices=[proxmoxve.VmLegacyNetworkDeviceArgs(bridge=GUEST_BRIDGE, model="virtio",
                                                                      firewall=False)],
                operating_system=proxmoxve.VmLegacyOperatingSystemArgs(type="l26"),
                serial_devices=[proxmoxve.VmLegacySerialDeviceArgs(device="socket")],
                # HA starts and moves it; the provider must not fight the HA manager over its state or node.
                started=False,
                on_boot=False,
                # bpg stops a running VM for a change that needs a restart, and with started=false never
                # starts it again; PVE turns that stop into an HA request state=stopped. Changes stay pending
                # until HA restarts it (a failover) instead.
                reboot_after_update=False,
                stop_on_destroy=True,
                opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(
                    depends_on=list(args.after), ignore_changes=["nodeName", "started"])),
            )
            resource = proxmoxve.Haresource(
                f"{name}-ha-{vmid}",
                resource_id=f"vm:{vmid}",
                type="vm",
                state="started",
                max_restart=1,
                max_relocate=1,
                comment="pve-lab HA test",
                group=ha.rule_name if group is not None else None,
                opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(
                    depends_on=[vm] + ([group] if group is not None else []))),
            )
            self.vms.append(vm)
            self.resources.append(resource)
        self.resource_ids = [f"vm:{ha.test_vmid_base + i}" for i in range(ha.test_vms)]
        if group is None and self.resources:
            # PVE 9: HA groups are gone; node preference is a node-affinity rule over HA-managed resources.
            self.rule = proxmoxve.Harule(
                f"{name}-rule", rule=ha.rule_name, type="node-affinity", resources=self.resource_ids,
                nodes=nodes, strict=False, comment=f"pve-lab: prefer {preferred}",
                opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(depends_on=self.resources)))
        else:
            self.rule = group
        self.preferred_node = preferred
        self.register_outputs({"resources": self.resource_ids, "preferred_node": preferred})

"""HaTestVms: small VMs inside the nested cluster, on Ceph, under HA, with a node-affinity rule.

Everything here goes through the provider pointed at the nested cluster's API. PVE 9 expresses node
preference as an HA rule (`Harule`, type node-affinity); PVE 8 only has HA groups (`Hagroup`).
All of it is deleted with the cluster (deleted_with): destroying the lab makes no call to a nested API that
may be down (quorum lost, node off), while removing one object (fewer test VMs, a renamed rule) deletes it.

With ha.testVmImage (off by default) the test VMs boot a small OS: the image is downloaded once, on the node
whose API the lab uses, into a directory storage of its own, and imported onto Ceph; cloud-init (a nocloud
drive on Ceph) gives each guest its lab address and root the lab's SSH key. The facts are in pvelab/ha_guest.py.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.ha_guest import (CLOUD_INIT_TYPE, DOWNLOAD_TIMEOUT_S, IMPORT_STORAGE_ID, IMPORT_STORAGE_PATH,
                             boot_disk_key, guest_addresses, image_on)
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
    # The node whose API the inner provider uses (pvelab/inner_api.py): with ha.testVmImage the image is
    # downloaded there and the test VMs are created there (import-from reads the image on the creating node).
    endpoint_node: Optional[str] = None
    ssh_public_key: Optional[pulumi.Input[str]] = None  # root's key in the booted test VMs (the lab's key pair)


def node_priorities(preferred: str, node_names: Sequence[str]) -> dict[str, int]:
    """{pve1: 2, pve2: 1, ...}: the preferred node first, every other node as a fallback (non-strict)."""
    return {n: 2 if n == preferred else 1 for n in node_names}


def guest_args(spec: LabSpec, address: str, storage_id: pulumi.Input[str], image_id: pulumi.Input[str],
               disk_gib: int, ssh_public_key: Optional[pulumi.Input[str]] = None) -> dict:
    """A test VM's boot disk imported from the image, and its address by cloud-init (both on Ceph)."""
    net = spec.network
    prefix = ipaddress.ip_network(net.cidr, strict=False).prefixlen
    return dict(
        disks=[proxmoxve.VmLegacyDiskArgs(interface="scsi0", datastore_id=storage_id, import_from=image_id,
                                          size=disk_gib, file_format="raw", iothread=True)],
        boot_orders=["scsi0"],
        initialization=proxmoxve.VmLegacyInitializationArgs(
            type=CLOUD_INIT_TYPE,
            datastore_id=storage_id,  # the cloud-init drive moves with the VM
            upgrade=False,
            ip_configs=[proxmoxve.VmLegacyInitializationIpConfigArgs(
                ipv4=proxmoxve.VmLegacyInitializationIpConfigIpv4Args(address=f"{address}/{prefix}",
                                                                      gateway=net.gateway))],
            dns=proxmoxve.VmLegacyInitializationDnsArgs(domain=spec.cluster.domain, servers=list(net.dns)),
            user_account=(proxmoxve.VmLegacyInitializationUserAccountArgs(username="root", keys=[ssh_public_key])
                          if ssh_public_key is not None else None),
        ),
    )


class HaTestVms(pulumi.ComponentResource):
    def __init__(self, name: str, args: HaTestVmsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:HaTestVms", name, None, opts)
        spec, ha = args.spec, args.spec.ha
        preferred = spec.ha_preferred_node
        inner = pulumi.ResourceOptions(parent=self, provider=args.inner_provider, deleted_with=args.deleted_with)
        self.import_storage = self.image = None
        self.addresses = guest_addresses(spec)
        if image_on(spec):
            self._download(name, spec, args, inner)
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
            disk = dict(
                disks=[proxmoxve.VmLegacyDiskArgs(interface="scsi0", datastore_id=args.storage_id,
                                                  size=ha.test_vm_disk_gib, file_format="raw", iothread=True)])
            created_on, after = preferred, list(args.after)
            if self.image is not None:
                disk = guest_args(spec, self.addresses[i], args.storage_id, self.image.id, ha.test_vm_disk_gib,
                                  args.ssh_public_key)
                # Created where the image is; HA then moves it to the preferred node (the node-affinity rule).
                created_on, after = args.endpoint_node or preferred, after + [self.image]
            vm = proxmoxve.VmLegacy(
                f"{name}-vm-{vmid}",
                name=f"ha-test-{vmid}",
                node_name=created_on,
                vm_id=vmid,
                description="pve-lab: HA test VM (stop its node and watch it start elsewhere)",
                tags=["pve-lab", "ha-test"],
                cpu=proxmoxve.VmLegacyCpuArgs(cores=1, type="x86-64-v2-AES"),
                memory=proxmoxve.VmLegacyMemoryArgs(dedicated=ha.test_vm_memory_mib),
                scsi_hardware="virtio-scsi-single",
                # The disk on Ceph is what lets any node start this VM (empty, or imported from the image).
                **disk,
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
                    depends_on=after, ignore_changes=["nodeName", "started"],
                    # bpg imports a disk only when it creates it: a new image (or none, or one where there was
                    # none) is a new VM. Turning the option on or off, or a new address, changes
                    # `initialization` (a lab recorded before the trigger existed has none to compare).
                    replacement_trigger=boot_disk_key(spec), replace_on_changes=["initialization"],
                    delete_before_replace=True)),  # the VMID is its id
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
                    depends_on=[vm] + ([group] if group is not None else []),
                    # Deleting the VM (purge) removes its HA resource and rule entries in PVE
                    # (pve-ha-manager src/PVE/HA/Config.pm delete_service_from_config): a new VM needs new ones.
                    replace_with=[vm], delete_before_replace=True)),
            )
            self.vms.append(vm)
            self.resources.append(resource)
        self.resource_ids = [f"vm:{ha.test_vmid_base + i}" for i in range(ha.test_vms)]
        if group is None and self.resources:
            # PVE 9: HA groups are gone; node preference is a node-affinity rule over HA-managed resources.
            self.rule = proxmoxve.Harule(
                f"{name}-rule", rule=ha.rule_name, type="node-affinity", resources=self.resource_ids,
                nodes=nodes, strict=False, comment=f"pve-lab: prefer {preferred}",
                opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(
                    depends_on=self.resources, replace_with=list(self.resources), delete_before_replace=True)))
        else:
            self.rule = group
        self.preferred_node = preferred
        self.register_outputs({"resources": self.resource_ids, "preferred_node": preferred,
                               "addresses": self.addresses})

    def _download(self, name: str, spec: LabSpec, args: HaTestVmsArgs, inner: pulumi.ResourceOptions) -> None:
        """The image, once per lab, on the endpoint node: a directory storage for `import` content there (the
        nodes' `local` has none), then PVE's own download with the digest checked before the file is kept."""
        node, img = args.endpoint_node or spec.ha_preferred_node, spec.ha.test_vm_image
        assert img is not None
        self.import_storage = proxmoxve.storage.DirectoryLegacy(
            f"{name}-import-storage",
            resource_id=IMPORT_STORAGE_ID,
            path=IMPORT_STORAGE_PATH,
            contents=["import"],
            nodes=[node],  # the image exists on this node only: no other node may offer the storage
            shared=False,
            # Only the cluster (the inner provider): the download overlaps the Ceph steps; the VM waits for both.
            opts=inner)
        self.image = proxmoxve.download.FileLegacy(
            f"{name}-image",
            content_type="import",
            datastore_id=self.import_storage.resource_id,
            node_name=node,
            url=img.url,
            file_name=img.file_name,
            checksum=img.checksum,
            checksum_algorithm=img.checksum_algorithm,
            # No size checks against the URL: the pinned digest decides, and `up` twice changes nothing.
            overwrite=False,
            upload_timeout=DOWNLOAD_TIMEOUT_S,
            opts=pulumi.ResourceOptions.merge(inner, pulumi.ResourceOptions(depends_on=[self.import_storage])))

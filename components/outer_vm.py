"""The proxmoxve.VmLegacy arguments every VM of a lab on the outer host shares.

The small Debian VMs (the QDevice, the class cache, the template builder) boot a cloud image imported as
their one disk and are set up by cloud-init; the nested nodes share the hardware and the hard destroy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve


def lab_vm_identity(spec: Any, *, hostname: str, vm_id: Optional[int], pool_id: Optional[str], description: str,
                    tag: str) -> dict[str, Any]:
    """Name, place and labels of a lab's VM on the outer host: the lab's tags plus the VM's own `tag`."""
    return dict(
        name=hostname,
        node_name=spec.outer.node,
        vm_id=vm_id,
        pool_id=pool_id,
        description=description,
        tags=sorted(set(spec.tags) | {tag}),
    )


def hardware_args(*, cores: int, memory_mib: int) -> dict[str, Any]:
    """CPU type `host` (the lab sanity rules hold every outer VM of a lab to it), virtio SCSI, a serial console."""
    return dict(
        cpu=proxmoxve.VmLegacyCpuArgs(type="host", cores=cores, sockets=1),
        memory=proxmoxve.VmLegacyMemoryArgs(dedicated=memory_mib),
        scsi_hardware="virtio-scsi-single",
        operating_system=proxmoxve.VmLegacyOperatingSystemArgs(type="l26"),
        serial_devices=[proxmoxve.VmLegacySerialDeviceArgs(device="socket")],
    )


# Destroy must not wait on a hung or broken VM: stop hard, then delete it with its disks.
DESTROY_HARD: dict[str, Any] = dict(
    stop_on_destroy=True,
    purge_on_destroy=True,
    delete_unreferenced_disks_on_destroy=True,
)


def debian_vm_args(*, cores: int, memory_mib: int, storage: str, image_file_id: pulumi.Input[str], disk_gib: int,
                   bridge: str, vlan_tag: Optional[int], firewall: Optional[bool], address: str,
                   gateway: Optional[str], domain: str, dns: Sequence[str], ssh_public_key: pulumi.Input[str],
                   root_password: Optional[pulumi.Input[str]] = None) -> dict[str, Any]:
    """A small Debian VM from a cloud image: one raw disk imported from it, one NIC, cloud-init's root account.

    `firewall` and `root_password` left None are left out of the inputs (the provider's default)."""
    return dict(
        **hardware_args(cores=cores, memory_mib=memory_mib),
        disks=[proxmoxve.VmLegacyDiskArgs(
            interface="scsi0", datastore_id=storage, import_from=image_file_id, size=disk_gib,
            discard="on", iothread=True, ssd=True, file_format="raw")],
        network_devices=[proxmoxve.VmLegacyNetworkDeviceArgs(
            bridge=bridge, model="virtio", vlan_id=vlan_tag, firewall=firewall)],
        initialization=proxmoxve.VmLegacyInitializationArgs(
            datastore_id=storage,
            upgrade=False,
            ip_configs=[proxmoxve.VmLegacyInitializationIpConfigArgs(
                ipv4=proxmoxve.VmLegacyInitializationIpConfigIpv4Args(address=address, gateway=gateway))],
            dns=proxmoxve.VmLegacyInitializationDnsArgs(domain=domain, servers=list(dns)),
            user_account=proxmoxve.VmLegacyInitializationUserAccountArgs(
                username="root", keys=[ssh_public_key], password=root_password),
        ),
        started=True,
        **DESTROY_HARD,
    )

"""What one lab puts on the outer host, VM by VM (pure logic, no Pulumi): the nested nodes and, for an even
node count with `nodes.qdevice`, the QDevice VM. Preflight (one lab or a class) and the classroom's VMID
blocks count from here, so a VM the program creates is never missing from what is checked."""
from __future__ import annotations

from dataclasses import dataclass

from .qdevice import QDEVICE_CORES, QDEVICE_DISK_GIB, QDEVICE_MEMORY_MIB, qdevice_plan
from .spec import LabSpec

EFI_DISK_GIB = 1  # efidisk + cloud-init drive, rounded up
NODE_TAG = "pve-lab-node"
QDEVICE_TAG = "pve-lab-qdevice"


@dataclass(frozen=True)
class OuterVm:
    vmid: int
    hostname: str
    tag: str  # the VM's own tag (components/outer_vm.py lab_vm_identity): how a built one is recognised
    cores: int
    memory_mib: int
    disk_gib: int  # on outer.storage


def outer_vms(spec: LabSpec) -> list[OuterVm]:
    """Every VM with a fixed VMID that the lab makes on the outer host (the template builder takes a free one)."""
    n = spec.nodes
    node_disk = n.system_disk_gib + n.ceph_disks * n.ceph_disk_gib + EFI_DISK_GIB
    vms = [OuterVm(p.vmid, p.hostname, NODE_TAG, n.cores, n.memory_mib, node_disk) for p in spec.node_plans]
    qdevice = qdevice_plan(spec)
    if qdevice is not None:
        vms.append(OuterVm(qdevice.vmid, qdevice.hostname, QDEVICE_TAG, QDEVICE_CORES, QDEVICE_MEMORY_MIB,
                           QDEVICE_DISK_GIB + EFI_DISK_GIB))
    return vms


def outer_vmids(spec: LabSpec) -> tuple[int, ...]:
    return tuple(vm.vmid for vm in outer_vms(spec))

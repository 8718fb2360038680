"""The QDevice of an even-sized lab: where its VM goes (pure logic, no Pulumi).

With `nodes.qdevice: true` and an even `nodes.count` (validated in spec.py), one small Debian VM runs
corosync-qnetd and casts the tie-breaking vote (`pvecm qdevice setup`, algorithm ffsplit: pve-cluster
src/PVE/CLI/pvecm.pm). It takes the VMID and the address right after the nodes'.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from .spec import LabSpec

QDEVICE_CORES = 1
QDEVICE_MEMORY_MIB = 512
QDEVICE_DISK_GIB = 4  # the Debian cloud image is 3 GiB


@dataclass(frozen=True)
class QDevicePlan:
    hostname: str
    fqdn: str
    ip: str
    prefix_len: int
    vmid: int

    @property
    def cidr_address(self) -> str:
        return f"{self.ip}/{self.prefix_len}"


def qdevice_plan(spec: LabSpec) -> Optional[QDevicePlan]:
    if not spec.nodes.qdevice:
        return None
    net = ipaddress.ip_network(spec.network.cidr, strict=False)
    ip = ipaddress.ip_address(spec.network.first_address) + spec.nodes.count
    name = f"{spec.cluster.hostname_prefix}-qdevice"
    return QDevicePlan(hostname=name, fqdn=f"{name}.{spec.cluster.domain}", ip=str(ip), prefix_len=net.prefixlen,
                       vmid=spec.vmid_base + spec.nodes.count)

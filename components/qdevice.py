"""QDevice: the tie-breaker of an even-sized lab (nodes.count 2 or 4 with nodes.qdevice: true).

A small Debian VM on the outer host runs corosync-qnetd; every cluster node gets corosync-qdevice; then
`pvecm qdevice setup <address>` on the first node (pve-cluster src/PVE/CLI/pvecm.pm) adds the device to
corosync.conf and starts corosync-qdevice everywhere. That command logs in to the QNetd host as root with
the first node's /root/.ssh/id_rsa (ssh-copy-id, then ssh/scp in BatchMode), so the first node's public key
is authorized on the QDevice VM and its host key is pinned in the cluster's known_hosts first.
Steps (each idempotent, see components/scripts/qdevice-*.sh):
  first node: pubkey -> QDevice VM: scripts, apt-proxy, qnetd (install, authorize the key, print the host key)
  every node: packages -> first node: setup (after qnetd and all packages), verified with `pvecm status`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.qdevice import QDEVICE_CORES, QDEVICE_DISK_GIB, QDEVICE_MEMORY_MIB, QDevicePlan
from pvelab.spec import LabSpec

from .cluster import ClusterMember
from .apt_proxy import apt_proxy_step
from .node_step import NodeConnection, node_scripts, node_step
from .outer_vm import debian_vm_args, lab_vm_identity

POLL_S = 5


@dataclass
class QDeviceArgs:
    spec: LabSpec
    plan: QDevicePlan
    members: Sequence[ClusterMember]
    quorate: pulumi.Resource  # the cluster is formed and quorate
    image_file_id: pulumi.Input[str]
    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Input[str]
    bridge: pulumi.Input[str]
    vlan_tag: pulumi.Input[Optional[int]] = None
    pool_id: pulumi.Input[Optional[str]] = None


class QDevice(pulumi.ComponentResource):
    def __init__(self, name: str, args: QDeviceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:QDevice", name, None, opts)
        spec, plan, members = args.spec, args.plan, list(args.members)
        first = members[0]
        deadline = spec.timeouts.quorum_s
        self.vm = self._vm(name, args)
        connection = NodeConnection(plan.hostname, plan.ip, args.ssh_private_key)
        # The QNetd VM gets the node scripts like a node (its qnetd step is one line that runs one of them).
        # The first dial waits for cloud-init to bring up SSH on the fresh VM.
        self.scripts = node_scripts(f"{name}-scripts", connection, parent=self, depends_on=[self.vm],
                                    triggers=[self.vm.id],
                                    dial_error_limit=max(10, spec.timeouts.ready_s // connection.per_dial_timeout))
        self.connection = replace(connection, scripts=self.scripts)

        self.pubkey = node_step(f"{name}-pubkey", first.connection, "qdevice-setup", parent=self, args=["pubkey"],
                                depends_on=[args.quorate])
        first_key = self.pubkey.stdout.apply(lambda s: (s or "").strip())
        # corosync-qnetd comes through the class's package cache too (aptProxy), like every node's packages.
        proxy = apt_proxy_step(name, self.connection, spec, parent=self, depends_on=[self.vm], triggers=[self.vm.id])
        self.qnetd = node_step(
            f"{name}-qnetd", self.connection, "qdevice-qnetd", parent=self,
            env={"AUTHORIZED_KEY": first_key, "DEADLINE_S": spec.timeouts.install_s, "POLL_S": POLL_S},
            depends_on=[self.vm, self.pubkey, proxy], triggers=[self.vm.id])
        host_key = self.qnetd.stdout.apply(lambda s: (s or "").strip())
        self.packages = [
            node_step(f"{name}-packages-{m.connection.hostname}", m.connection, "qdevice-setup", parent=self,
                      args=["packages"], env={"DEADLINE_S": spec.timeouts.install_s}, depends_on=[args.quorate])
            for m in members]
        self.setup = node_step(
            f"{name}-setup", first.connection, "qdevice-setup", parent=self, args=["setup"],
            env={"QNETD_ADDRESS": plan.ip, "QNETD_HOST_KEY": host_key, "EXPECTED_NODES": len(members),
                 "DEADLINE_S": deadline, "POLL_S": POLL_S},
            depends_on=[self.qnetd, *self.packages],
            # a replaced QDevice VM is a new QNetd (new certificates): set it up again
            triggers=[self.vm.id])
        self.status_text = self.setup.stdout.apply(lambda s: (s or "").strip())
        self.register_outputs({"hostname": plan.hostname, "ip": plan.ip, "vmid": plan.vmid,
                               "status": self.status_text})

    def _vm(self, name: str, args: QDeviceArgs) -> proxmoxve.VmLegacy:
        spec, plan = args.spec, args.plan
        storage = spec.outer.storage
        return proxmoxve.VmLegacy(
            f"{name}-vm",
            **lab_vm_identity(spec, hostname=plan.hostname, vm_id=plan.vmid, pool_id=args.pool_id,
                              description=f"pve-lab QDevice (corosync-qnetd) {plan.fqdn} for cluster "
                                          f"{spec.cluster.name}", tag="pve-lab-qdevice"),
            machine="q35",
            **debian_vm_args(cores=QDEVICE_CORES, memory_mib=QDEVICE_MEMORY_MIB, storage=storage,
                             image_file_id=args.image_file_id, disk_gib=QDEVICE_DISK_GIB, bridge=args.bridge,
                             vlan_tag=args.vlan_tag, firewall=False, address=plan.cidr_address,
                             gateway=spec.network.gateway, domain=spec.cluster.domain, dns=spec.network.dns,
                             ssh_public_key=args.ssh_public_key),
            on_boot=True,
            opts=pulumi.ResourceOptions(parent=self),
        )

"""NestedPveNode: one VM on the outer host with nested virtualization, and PVE 9 installed in it over SSH.

Steps (each a remote.Command, each idempotent; see components/scripts/install-pve.sh):
prepare (hosts, NTP, repo, kernel) -> reboot (only when not yet on the PVE kernel) -> finish
(proxmox-ve, Debian kernel removed) -> ready (polls pveversion and the API on 8006 with a deadline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.spec import LabSpec, NodePlan

from .apt_proxy import apt_proxy_step
from .node_step import NodeConnection, node_step

if TYPE_CHECKING:
    from .node_template import TemplateRef

DISK_INTERFACE = "scsi"
OSD_SERIAL_PREFIX = "pvelab-osd"


def osd_device_paths(spec: LabSpec) -> list[str]:
    """Stable paths of the Ceph data disks inside a nested node (virtio-scsi disks with a serial)."""
    return [f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{OSD_SERIAL_PREFIX}{k}" for k in range(spec.nodes.ceph_disks)]


@dataclass
class NestedPveNodeArgs:
    spec: LabSpec
    plan: NodePlan
    image_file_id: pulumi.Input[str]
    root_password: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Input[str]
    bridge: pulumi.Input[str]
    vlan_tag: pulumi.Input[Optional[int]] = None
    pool_id: pulumi.Input[Optional[str]] = None
    # nodes.source template: the VM is a clone of this template and gets its identity on first boot.
    template: Optional["TemplateRef"] = None


class NestedPveNode(pulumi.ComponentResource):
    vm: proxmoxve.VmLegacy
    connection: NodeConnection
    ready: pulumi.Resource

    def __init__(self, name: str, args: NestedPveNodeArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:NestedPveNode", name, None, opts)
        spec, plan = args.spec, args.plan
        self.plan = plan
        self.vm = self._vm(name, args)
        self.connection = NodeConnection(plan.hostname, plan.ip, args.ssh_private_key)

        t = spec.timeouts
        env = {"NODE_HOSTNAME": plan.hostname, "NODE_FQDN": plan.fqdn, "NODE_IP": plan.ip,
               "PVE_SUITE": "trixie" if spec.pve_version == 9 else "bookworm",
               "PVE_REPO_COMPONENT": spec.repository.component,
               "KEYRING_URL": spec.repository.keyring_url, "KEYRING_SHA256": spec.repository.keyring_sha256}
        # A new VM (replacement) must get a fresh install: every step re-runs when the VM id changes.
        triggers = [self.vm.id]
        if args.template is not None:
            from .node_template import first_boot_steps

            self.ready = first_boot_steps(name, self.connection, env, args.template, spec, parent=self,
                                          depends_on=[self.vm], triggers=triggers)
        else:
            self.ready = self._install_steps(name, env, spec, triggers)
        self.pveversion = self.ready.stdout.apply(lambda s: (s or "").strip())
        self.hostname = pulumi.Output.from_input(plan.hostname)
        self.ip = pulumi.Output.from_input(plan.ip)
        self.register_outputs({
            "hostname": plan.hostname, "ip": plan.ip, "vmid": plan.vmid, "web_url": plan.web_url,
            "ssh_command": plan.ssh_command, "pveversion": self.pveversion,
        })

    def _install_steps(self, name: str, env: dict, spec: LabSpec, triggers: list) -> pulumi.Resource:
        t = spec.timeouts
        # The first dial waits for cloud-init to bring up SSH on a fresh VM.
        proxy = apt_proxy_step(name, self.connection, spec, parent=self, depends_on=[self.vm], triggers=triggers,
                               dial_error_limit=max(10, t.ready_s // self.connection.per_dial_timeout))
        prepare = node_step(f"{name}-prepare", self.connection, "install-pve", parent=self, args=["prepare"],
                            env={**env, "DEADLINE_S": t.install_s}, depends_on=[proxy], triggers=triggers)
        reboot = node_step(f"{name}-reboot", self.connection, "install-pve", parent=self, args=["reboot"],
                           env=env, depends_on=[prepare], triggers=triggers)
        # The reboot step stops sshd before it reboots, so this dial waits for the node to come back.
        finish = node_step(f"{name}-finish", self.connection, "install-pve", parent=self, args=["finish"],
                           env={**env, "DEADLINE_S": t.install_s}, depends_on=[reboot], triggers=triggers,
                           dial_error_limit=max(10, t.reboot_s // self.connection.per_dial_timeout))
        return node_step(f"{name}-ready", self.connection, "install-pve", parent=self, args=["ready"],
                         env={**env, "DEADLINE_S": t.ready_s}, depends_on=[finish], triggers=triggers)

    def _vm(self, name: str, args: NestedPveNodeArgs) -> proxmoxve.VmLegacy:
        spec, plan, n = args.spec, args.plan, args.spec.nodes
        storage = spec.outer.storage
        template = args.template
        disks = [proxmoxve.VmLegacyDiskArgs(
            interface=f"{DISK_INTERFACE}0", datastore_id=storage,
            import_from=args.image_file_id if template is None else None,
            size=n.system_disk_gib, discard="on", iothread=True, ssd=True, file_format="raw",
        )]
        for k in range(n.ceph_disks):
            disks.append(proxmoxve.VmLegacyDiskArgs(
                interface=f"{DISK_INTERFACE}{k + 1}", datastore_id=storage, size=n.ceph_disk_gib,
                discard="on", iothread=True, ssd=True, file_format="raw", serial=f"{OSD_SERIAL_PREFIX}{k}",
            ))
        nics = [proxmoxve.VmLegacyNetworkDeviceArgs(
            bridge=args.bridge, model="virtio", vlan_id=args.vlan_tag,
            # The outer firewall's MAC filter would drop the frames of VMs nested inside this node.
            firewall=False,
        )]
        ip_configs = [proxmoxve.VmLegacyInitializationIpConfigArgs(
            ipv4=proxmoxve.VmLegacyInitializationIpConfigIpv4Args(address=plan.cidr_address, gateway=spec.network.gateway),
        )]
        link1 = spec.network.link1
        if link1 is not None and plan.link1_ip:
            prefix = link1.cidr.split("/")[1]
            nics.append(proxmoxve.VmLegacyNetworkDeviceArgs(
                bridge=link1.bridge, model="virtio", vlan_id=link1.vlan_tag, firewall=False))
            ip_configs.append(proxmoxve.VmLegacyInitializationIpConfigArgs(
                ipv4=proxmoxve.VmLegacyInitializationIpConfigIpv4Args(address=f"{plan.link1_ip}/{prefix}")))
        return proxmoxve.VmLegacy(
            f"{name}-vm",
            name=plan.hostname,
            node_name=spec.outer.node,
            vm_id=plan.vmid,
            pool_id=args.pool_id,
            description=f"pve-lab nested PVE node {plan.fqdn} (cluster {spec.cluster.name})",
            tags=sorted(set(spec.tags) | {"pve-lab-node"}),
            bios=n.bios,
            machine="q35",
            efi_disk=proxmoxve.VmLegacyEfiDiskArgs(datastore_id=storage, type="4m", pre_enrolled_keys=False)
            if n.bios == "ovmf" else None,
            # CPU type host passes VMX/SVM through: the nested PVE can run its own VMs (HA test VM).
            cpu=proxmoxve.VmLegacyCpuArgs(type="host", cores=n.cores, sockets=1),
            memory=proxmoxve.VmLegacyMemoryArgs(dedicated=n.memory_mib),
            scsi_hardware="virtio-scsi-single",
            disks=disks,
            network_devices=nics,
            operating_system=proxmoxve.VmLegacyOperatingSystemArgs(type="l26"),
            serial_devices=[proxmoxve.VmLegacySerialDeviceArgs(device="socket")],
            # The agent is installed by the `finish` step; until then the provider must not wait for it long.
            agent=proxmoxve.VmLegacyAgentArgs(enabled=True, timeout="2m", trim=True),
            initialization=proxmoxve.VmLegacyInitializationArgs(
                datastore_id=storage,
                # No first-boot `apt upgrade` by cloud-init: it would hold the dpkg lock for minutes while
                # the prepare step waits, and prepare runs `apt full-upgrade` itself once the PVE repo is in.
                upgrade=False,
                ip_configs=ip_configs,
                dns=proxmoxve.VmLegacyInitializationDnsArgs(domain=spec.cluster.domain, servers=list(spec.network.dns)),
                user_account=proxmoxve.VmLegacyInitializationUserAccountArgs(
                    username="root", keys=[args.ssh_public_key], password=args.root_password),
            ),
            # A linked clone shares the template's base volume (LVM-thin, ZFS, Ceph, qcow2); a full one copies it.
            clone=proxmoxve.VmLegacyCloneArgs(vm_id=template.vm_id, full=not template.linked, node_name=spec.outer.node)
            if template is not None else None,
            on_boot=True,
            started=True,
            # Destroy must not wait on a hung or broken node: stop hard, then delete with its disks.
            stop_on_destroy=True,
            purge_on_destroy=True,
            delete_unreferenced_disks_on_destroy=True,
            # A clone of a new template keeps its VMID: the old VM must go before the new one is made.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=template is not None,
                                        depends_on=[template.ready] if template is not None and template.ready else None),
        )

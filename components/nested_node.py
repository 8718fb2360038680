"""NestedPveNode: one VM on the outer host with nested virtualization, and PVE 9 installed in it over SSH.

Steps (each a remote.Command, each idempotent, each keyed on the VM instance; see components/scripts/):
scripts (every node script and lib/*.sh shipped to the node once), then
- apt path (nodes.source: apt, install-pve.sh): apt-proxy (apt.conf.d, before any apt run) -> prepare (hosts,
  NTP, repo, kernel) -> reboot (only when not yet on the PVE kernel) -> finish (proxmox-ve, Debian kernel
  removed) -> ready (polls pveversion and the API on 8006 with a deadline);
- template path (nodes.source: template, a clone of components/node_template.py's template): identity ->
  apt-proxy -> prepare (/etc/hosts only) -> pve -> ready (node-firstboot.sh);
then on both: network (components/scripts/node-network.sh: the node's address on vmbr0, for nested guests' NICs).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.spec import LabSpec, NodePlan

from .apt_proxy import apt_proxy_step
from .node_step import NodeConnection, node_scripts, node_step
from .outer_vm import DESTROY_HARD, hardware_args, lab_vm_identity

if TYPE_CHECKING:
    from .node_template import TemplateRef

DISK_INTERFACE = "scsi"
# The bridge node-network.sh puts each node's address on: nested guests' NICs attach to it.
GUEST_BRIDGE = "vmbr0"
OSD_SERIAL_PREFIX = "pvelab-osd"


def network_env(spec: LabSpec, plan: NodePlan) -> dict[str, object]:
    """node-network.sh's variables: the node's address and gateway, the link1 address, DNS."""
    env: dict[str, object] = {"NODE_IP": plan.ip, "NODE_PREFIX": plan.cidr_address.split("/")[1],
                              "GATEWAY": spec.network.gateway, "DNS_SERVERS": " ".join(spec.network.dns),
                              "SEARCH_DOMAIN": spec.cluster.domain}
    if spec.network.link1 is not None and plan.link1_ip:
        env.update(LINK1_IP=plan.link1_ip, LINK1_PREFIX=spec.network.link1.cidr.split("/")[1])
    return env


def osd_serials(spec: LabSpec) -> list[str]:
    """The serials of the Ceph data disks (scsi1...). The node finds them by serial (lsblk), not by a
    /dev/disk/by-id name: that name depends on the outer host's QEMU (components/scripts/lib/disks.sh)."""
    return [f"{OSD_SERIAL_PREFIX}{k}" for k in range(spec.nodes.ceph_disks)]


def instance_identity(vm: proxmoxve.VmLegacy) -> pulumi.Output[str]:
    """'<vmid>/<MAC of the first NIC>': changes whenever the VM is created anew, even with the same VMID."""
    def first_mac(devices) -> str:
        for device in devices or []:
            mac = device.get("mac_address") if isinstance(device, dict) else getattr(device, "mac_address", None)
            if mac:
                return str(mac).upper()
        return ""

    return pulumi.Output.all(vm.id, vm.network_devices).apply(lambda v: f"{v[0]}/{first_mac(v[1])}")


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
        # bpg's resource id is the VMID, the same for a VM re-created after it was deleted outside Pulumi;
        # the MAC address is new for every VM instance, so every step keyed on it re-runs on a rebuilt VM.
        self.instance = instance_identity(self.vm)
        connection = NodeConnection(plan.hostname, plan.ip, args.ssh_private_key, instance=self.instance)

        t = spec.timeouts
        env = {"NODE_HOSTNAME": plan.hostname, "NODE_FQDN": plan.fqdn, "NODE_IP": plan.ip,
               "PVE_SUITE": "trixie" if spec.pve_version == 9 else "bookworm",
               "PVE_REPO_COMPONENT": spec.repository.component,
               "KEYRING_URL": spec.repository.keyring_url, "KEYRING_SHA256": spec.repository.keyring_sha256}
        # Every step of this node is keyed on the VM instance (VMID/MAC): a rebuilt VM or a re-clone (a new
        # template replaces the clone: qemu-server gives a clone new MACs) runs them all again, on both paths.
        triggers = [self.instance]
        # The first dial waits for cloud-init to bring up SSH on a fresh VM or on a clone's first boot.
        self.scripts = node_scripts(f"{name}-scripts", connection, parent=self, depends_on=[self.vm],
                                    triggers=triggers,
                                    dial_error_limit=max(10, t.ready_s // connection.per_dial_timeout))
        self.connection = replace(connection, scripts=self.scripts)
        if args.template is not None:
            from .node_template import first_boot_steps

            installed = first_boot_steps(name, self.connection, env, args.template, spec, parent=self,
                                         depends_on=[self.vm], triggers=triggers)
        else:
            installed = self._install_steps(name, env, spec, triggers)
        self.pveversion = installed.stdout.apply(lambda s: (s or "").strip())
        # Everything after the install (cluster, Ceph, HA) waits for the node's final network: vmbr0. Both
        # paths end here, so the cluster/Ceph/HA graph after the nodes is the same.
        self.ready = node_step(f"{name}-network", self.connection, "node-network", parent=self,
                               env=network_env(spec, plan), depends_on=[installed], triggers=triggers)
        self.hostname = pulumi.Output.from_input(plan.hostname)
        self.ip = pulumi.Output.from_input(plan.ip)
        self.register_outputs({
            "hostname": plan.hostname, "ip": plan.ip, "vmid": plan.vmid, "web_url": plan.web_url,
            "ssh_command": plan.ssh_command, "pveversion": self.pveversion,
        })

    def _install_steps(self, name: str, env: dict, spec: LabSpec, triggers: list) -> pulumi.Resource:
        t = spec.timeouts
        # apt's proxy setting before any apt run (the scripts step made the first dial).
        proxy = apt_proxy_step(name, self.connection, spec, parent=self, depends_on=[self.vm], triggers=triggers)
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
            **lab_vm_identity(spec, hostname=plan.hostname, vm_id=plan.vmid, pool_id=args.pool_id,
                              description=f"pve-lab nested PVE node {plan.fqdn} (cluster {spec.cluster.name})",
                              tag="pve-lab-node"),
            bios=n.bios,
            machine="q35",
            efi_disk=proxmoxve.VmLegacyEfiDiskArgs(datastore_id=storage, type="4m", pre_enrolled_keys=False)
            if n.bios == "ovmf" else None,
            # CPU type host passes VMX/SVM through: the nested PVE can run its own VMs (HA test VM).
            **hardware_args(cores=n.cores, memory_mib=n.memory_mib),
            disks=disks,
            network_devices=nics,
            # The agent is installed by the `finish` step: the provider must not wait for its IP report
            # (bpg waits up to `timeout` for it at the end of create and on refresh otherwise).
            agent=proxmoxve.VmLegacyAgentArgs(enabled=True, timeout="2m", trim=True,
                                              wait_for_ip=proxmoxve.VmLegacyAgentWaitForIpArgs(disabled=True)),
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
            # Never power-cycle a node on an update (bpg reboots by default when a change needs it): all nodes
            # would go down at once. Pending changes are applied by the rolling restart, one node at a time.
            reboot_after_update=False,
            # Destroy must not wait on a hung or broken node: stop hard, then delete with its disks.
            **DESTROY_HARD,
            # The replacement has the same VMID (a rebuilt node, a clone of a new template): the old VM must be
            # gone before it is created. A clone waits for its template.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True,
                                        depends_on=[template.ready] if template is not None and template.ready else None),
        )

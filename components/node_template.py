"""NodeTemplate: the golden PVE node template, built in the graph (nodes.source: template).

builder VM (Debian cloud image, provider-chosen VMID) -> scripts (the node scripts, as on a node) -> apt-proxy
-> install-pve.sh prepare/reboot/finish/ready ->
ceph-install.sh (the configured release, baked in) -> node-seal.sh (no identity left; powers off) ->
outer-template.sh, a local step: the outer API turns the stopped builder into a template
(POST /nodes/{node}/qemu/{vmid}/template, qemu-server PVE/API2/Qemu.pm).

The builder's resource name carries the template key (pvelab/node_template.py): a changed PVE/Ceph
release, base image or script version is a *new* builder and template, and the old one is deleted at the
end of the update, after the nodes were re-cloned from the new one (the clones depend on it, so destroy
also removes the template only after every clone is gone). The provider must not try to undo the
conversion: `template` and `started` are ignored after create (bpg refuses template -> VM anyway).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import pulumi
import pulumi_command.local as local
import pulumi_proxmoxve as proxmoxve

from pvelab.node_template import builder_hostname, builder_ip, local_script_command, template_env, template_key
from pvelab.spec import LabSpec

from .apt_proxy import apt_proxy_step
from .nested_node import instance_identity
from .node_step import NodeConnection, node_scripts, node_step
from .outer_vm import debian_vm_args, lab_vm_identity

TEMPLATE_TAG = "pve-lab-template"
BUILDER_FROZEN = ["template", "started", "cpu", "memory", "disks", "networkDevices", "initialization", "agent",
                  "tags", "onBoot", "poolId"]


@dataclass
class NodeTemplateArgs:
    spec: LabSpec
    image_file_id: pulumi.Input[str]
    root_password: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Input[str]
    outer_api_token: pulumi.Input[str]  # a secret: only ever in the local step's environment
    bridge: pulumi.Input[str]
    vlan_tag: pulumi.Input[Optional[int]] = None
    pool_id: pulumi.Input[Optional[str]] = None
    # A fixed VMID (a class's template, which the students' stacks name in template.vmId): then a new key
    # replaces the builder in place, which PVE refuses while linked clones of it exist (take the class down first).
    vm_id: Optional[int] = None
    after: Sequence[pulumi.Resource] = ()  # what the builder waits for (the class cache it fetches through)


@dataclass
class TemplateRef:
    """What a clone needs: the template's VMID (known once it is a template), its key and builder name."""

    vm_id: pulumi.Output[int]
    key: str
    builder_hostname: str
    linked: bool
    ready: Optional[pulumi.Resource] = None  # the conversion step; clones wait for it


class NodeTemplate(pulumi.ComponentResource):
    def __init__(self, name: str, args: NodeTemplateArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:NodeTemplate", name, None, opts)
        spec = args.spec
        self.key = template_key(spec)
        self.hostname = builder_hostname(spec)
        self.ip = builder_ip(spec)
        self.linked = spec.template.linked_clones
        fqdn = f"{self.hostname}.{spec.cluster.domain}"
        # Keyed names: a new key is a new builder and template beside the old one (deleted after the re-clone).
        step_name = f"{name}-{self.key}" if args.vm_id is None else name
        self.builder = self._builder(step_name, args, fqdn)
        # Keyed on the builder's instance (VMID/MAC) like a node: a builder re-created in place (fixed VMID) runs
        # every step again.
        instance = instance_identity(self.builder)
        conn = NodeConnection(self.hostname, self.ip, args.ssh_private_key, instance=instance)
        t = spec.timeouts
        env = {"NODE_HOSTNAME": self.hostname, "NODE_FQDN": fqdn, "NODE_IP": self.ip,
               "PVE_SUITE": "trixie" if spec.pve_version == 9 else "bookworm",
               "PVE_REPO_COMPONENT": spec.repository.component,
               "KEYRING_URL": spec.repository.keyring_url, "KEYRING_SHA256": spec.repository.keyring_sha256}
        triggers = [instance]
        # The builder gets the node scripts like a node (one scripts step; every other step is one line). The
        # first dial waits for cloud-init to bring up SSH.
        scripts = node_scripts(f"{step_name}-scripts", conn, parent=self, depends_on=[self.builder],
                               triggers=triggers, dial_error_limit=max(10, t.ready_s // conn.per_dial_timeout))
        conn = replace(conn, scripts=scripts)
        proxy = apt_proxy_step(step_name, conn, spec, parent=self, depends_on=[self.builder], triggers=triggers)
        prepare = node_step(f"{step_name}-prepare", conn, "install-pve", parent=self, args=["prepare"],
                            env={**env, "DEADLINE_S": t.install_s}, depends_on=[proxy], triggers=triggers)
        reboot = node_step(f"{step_name}-reboot", conn, "install-pve", parent=self, args=["reboot"], env=env,
                           depends_on=[prepare], triggers=triggers)
        finish = node_step(f"{step_name}-finish", conn, "install-pve", parent=self, args=["finish"],
                           env={**env, "DEADLINE_S": t.install_s}, depends_on=[reboot], triggers=triggers,
                           dial_error_limit=max(10, t.reboot_s // conn.per_dial_timeout))
        ready = node_step(f"{step_name}-ready", conn, "install-pve", parent=self, args=["ready"],
                          env={**env, "DEADLINE_S": t.ready_s}, depends_on=[finish], triggers=triggers)
        last: pulumi.Resource = ready
        if spec.ceph.enabled:
            last = node_step(f"{step_name}-ceph", conn, "ceph-install", parent=self,
                             env={"CEPH_RELEASE": spec.ceph.release, "CEPH_REPOSITORY": spec.ceph.repository,
                                  "NODE_NAME": self.hostname, "DEADLINE_S": t.install_s},
                             depends_on=[ready], triggers=triggers)
        self.seal = node_step(f"{step_name}-seal", conn, "node-seal", parent=self,
                              env={"NODE_HOSTNAME": self.hostname, "NODE_IP": self.ip, "TEMPLATE_KEY": self.key},
                              depends_on=[last], triggers=triggers)
        self.convert = self._convert(f"{step_name}-convert", args)
        self.vm_id = self.convert.stdout.apply(lambda s: int((s or "0").strip() or 0))
        self.register_outputs({"key": self.key, "builder": self.hostname, "vm_id": self.vm_id})

    def ref(self) -> "TemplateRef":
        return TemplateRef(vm_id=self.vm_id, key=self.key, builder_hostname=self.hostname,
                           linked=self.linked, ready=self.convert)

    def _convert(self, name: str, args: NodeTemplateArgs) -> local.Command:
        spec = args.spec
        environment = {**template_env(spec), "VMID": self.builder.vm_id.apply(str),
                       "PVE_API_TOKEN": pulumi.Output.secret(args.outer_api_token)}
        return local.Command(
            name,
            create=local_script_command("outer-template"),
            environment=environment,
            triggers=[self.builder.id],
            logging=local.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.seal]),
        )

    def _builder(self, name: str, args: NodeTemplateArgs, fqdn: str) -> proxmoxve.VmLegacy:
        spec, n = args.spec, args.spec.nodes
        storage = spec.outer.storage
        prefix = spec.network.cidr.split("/")[1]
        return proxmoxve.VmLegacy(
            f"{name}-builder",
            # No fixed VMID (unless given): a new key is a new builder while the old template still exists.
            **lab_vm_identity(spec, hostname=self.hostname, vm_id=args.vm_id, pool_id=args.pool_id,
                              description=f"pve-lab golden node template {self.key} (PVE {spec.pve_version}"
                                          + (f", Ceph {spec.ceph.release}" if spec.ceph.enabled else "")
                                          + f"), built as {fqdn}", tag=TEMPLATE_TAG),
            bios=n.bios,
            machine="q35",
            efi_disk=proxmoxve.VmLegacyEfiDiskArgs(datastore_id=storage, type="4m", pre_enrolled_keys=False)
            if n.bios == "ovmf" else None,
            **debian_vm_args(cores=n.cores, memory_mib=n.memory_mib, storage=storage,
                             image_file_id=args.image_file_id, disk_gib=n.system_disk_gib, bridge=args.bridge,
                             vlan_tag=args.vlan_tag, firewall=False, address=f"{self.ip}/{prefix}",
                             gateway=spec.network.gateway, domain=spec.cluster.domain, dns=spec.network.dns,
                             ssh_public_key=args.ssh_public_key, root_password=args.root_password),
            agent=proxmoxve.VmLegacyAgentArgs(enabled=True, timeout="2m", trim=True),
            on_boot=False,
            opts=pulumi.ResourceOptions(
                # Once it is a template, the provider must not try to undo that (bpg refuses template -> VM) or
                # start it, and its own settings no longer matter (clones set theirs): only a new key rebuilds.
                parent=self, ignore_changes=BUILDER_FROZEN,
                # with a fixed VMID the key lives in the description: a new key replaces the builder in place
                replace_on_changes=["description"] if args.vm_id is not None else None,
                delete_before_replace=args.vm_id is not None, depends_on=list(args.after) or None),
        )


def first_boot_steps(name: str, conn: NodeConnection, env: dict, template: TemplateRef, spec: LabSpec, *,
                     parent: pulumi.Resource, depends_on: list, triggers: list) -> pulumi.Resource:
    """A clone's first boot, each step idempotent (node-firstboot.sh): its own identity, /etc/hosts
    (install-pve.sh prepare: with everything installed it downloads nothing), pmxcfs and the node
    certificate, then `ready` (pveversion, API, a certificate for this name; fails on the builder's identity).
    The last step is named `-ready` like the apt path's, and prints the pveversion line."""
    t = spec.timeouts
    # `triggers` is the clone's instance (VMID/MAC), as for every step of the node and its cluster/Ceph steps:
    # a clone of a new template keeps its VMID, but it is a new VM (bpg: clone.vm_id forces a replacement,
    # proxmoxtf/resource/vm/vm.go) with new MACs (qemu-server API2/Qemu.pm clone_vm: "always change MAC!").
    node_env = {k: env[k] for k in ("NODE_HOSTNAME", "NODE_FQDN", "NODE_IP")}
    node_env["BUILDER_HOSTNAME"] = template.builder_hostname
    # After the node's scripts step (conn.scripts), which made the first dial into the clone's first boot.
    identity = node_step(f"{name}-identity", conn, "node-firstboot", parent=parent, args=["identity"],
                         env={**node_env, "DEADLINE_S": t.ready_s}, depends_on=depends_on, triggers=triggers)
    proxy = apt_proxy_step(name, conn, spec, parent=parent, depends_on=[identity], triggers=triggers)
    hosts = node_step(f"{name}-prepare", conn, "install-pve", parent=parent, args=["prepare"],
                      env={**env, "DEADLINE_S": t.install_s}, depends_on=[proxy], triggers=triggers)
    pve = node_step(f"{name}-pve", conn, "node-firstboot", parent=parent, args=["pve"],
                    env={**node_env, "DEADLINE_S": t.ready_s}, depends_on=[hosts], triggers=triggers)
    return node_step(f"{name}-ready", conn, "node-firstboot", parent=parent, args=["ready"],
                     env={**node_env, "DEADLINE_S": t.ready_s}, depends_on=[pve], triggers=triggers)

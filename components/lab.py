"""PveLab: the whole nested lab for one stack: credentials, image, nodes, cluster, Ceph, HA.

Only wiring lives here; each stage is its own component. The outer provider comes from the caller
(`providers=` on this component) and is inherited by every child that talks to the outer host. The inner
provider (the nested cluster's API) is made here, only after the cluster is quorate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.inner_api import inner_endpoint
from pvelab.qdevice import qdevice_plan
from pvelab.spec import LabSpec

from .ceph import CephCluster, CephClusterArgs
from .cluster import ClusterMember, PveCluster, PveClusterArgs
from .credentials import LabCredentials, LabCredentialsArgs
from .ha import HaTestVms, HaTestVmsArgs
from .nested_node import NestedPveNode, NestedPveNodeArgs
from .rolling_restart import RollingRestart, RollingRestartArgs
from .qdevice import QDevice, QDeviceArgs


@dataclass
class PveLabArgs:
    spec: LabSpec
    credentials: LabCredentialsArgs
    # A secret. The rolling restart reboots node VMs through the outer API with it (without it, no rolling
    # restart); the template path's local conversion step needs it too.
    outer_api_token: Optional[pulumi.Input[str]] = None


class PveLab(pulumi.ComponentResource):
    def __init__(self, name: str, args: PveLabArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:PveLab", name, None, opts)
        spec = args.spec
        child = pulumi.ResourceOptions(parent=self)
        self.credentials = LabCredentials(f"{name}-credentials", args.credentials, opts=child)

        bridge, vlan_tag, pool_id = spec.outer.bridge, spec.outer.vlan_tag, spec.outer.pool
        self.student_access = None
        if spec.student is not None:
            from .student_access import StudentAccess, StudentAccessArgs

            self.student_access = StudentAccess(f"{name}-student", StudentAccessArgs(spec=spec), opts=child)
            bridge, vlan_tag = self.student_access.bridge, self.student_access.vlan_tag
            pool_id = self.student_access.pool_id

        image_file_id = self._image(name, spec)

        creds = self.credentials
        self.template = self._template(name, args, image_file_id, bridge, vlan_tag, pool_id)
        self.nodes = [
            NestedPveNode(
                f"{name}-{plan.hostname}",
                NestedPveNodeArgs(spec=spec, plan=plan, image_file_id=image_file_id,
                                  root_password=creds.root_password, ssh_private_key=creds.ssh_private_key,
                                  ssh_public_key=creds.ssh_public_key, bridge=bridge, vlan_tag=vlan_tag,
                                  pool_id=pool_id, template=self.template),
                opts=child,
            )
            for plan in spec.node_plans
        ]
        members = [ClusterMember(n.connection, n.ready, n.plan.link1_ip) for n in self.nodes]
        self.cluster = PveCluster(f"{name}-cluster",
                                  PveClusterArgs(spec=spec, members=members, root_password=creds.root_password),
                                  opts=child)

        self.qdevice = self._qdevice(name, spec, members, image_file_id, bridge, vlan_tag, pool_id)

        self.inner_provider = None
        self.ceph = None
        self.ha = None
        if spec.ceph.enabled:
            endpoint = inner_endpoint(spec)
            self.inner_provider = proxmoxve.Provider(
                f"{name}-inner",
                # Not the node the HA drill stops by default (the HA test VM's preferred node).
                endpoint=endpoint.web_url,
                username="root@pam",
                password=creds.root_password,
                # A configured value wins over PROXMOX_VE_API_TOKEN in bpg's configure; settings refuse the
                # credential variables this cannot override (pvelab/inner_api.py).
                api_token="",
                # The nested nodes have self-signed certificates.
                insecure=True,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.cluster.quorate]),
            )
            # The objects inside the nested cluster are deleted with the cluster (its create step, deleted only
            # when the whole lab is, and never replaced): destroy makes no call to a nested API that may be
            # down; removing or replacing one of them alone is a real delete. Not a node VM: replacing a VM
            # would replace everything deleted with it (pulumi step_generator.go, DeletedWith).
            with_cluster = self.cluster.create
            self.ceph = CephCluster(f"{name}-ceph", CephClusterArgs(
                spec=spec, members=members, quorate=self.cluster.quorate, inner_provider=self.inner_provider,
                endpoint_node=endpoint.hostname, deleted_with=with_cluster), opts=child)
            if spec.ha.enabled and spec.ha.test_vms > 0:
                self.ha = HaTestVms(f"{name}-ha", HaTestVmsArgs(
                    spec=spec, node_names=[p.hostname for p in spec.node_plans], storage_id=self.ceph.storage_id,
                    inner_provider=self.inner_provider, after=[self.ceph.pool, self.ceph.healthy],
                    deleted_with=with_cluster, endpoint_node=endpoint.hostname, ssh_public_key=creds.ssh_public_key),
                    opts=child)

        self.rolling_restart = None
        if args.outer_api_token is not None:
            complete = [self.ceph.healthy] if self.ceph is not None else [self.cluster.quorate]
            self.rolling_restart = RollingRestart(f"{name}-restart", RollingRestartArgs(
                spec=spec, nodes=self.nodes, outer_api_token=args.outer_api_token, after=complete), opts=child)

        self.register_outputs({"cluster_name": spec.cluster.name, "nodes": [p.hostname for p in spec.node_plans]})

    def _qdevice(self, name, spec, members, image_file_id, bridge, vlan_tag, pool_id):
        """Even node counts with nodes.qdevice: the QNetd VM and `pvecm qdevice setup` (components/qdevice.py)."""
        plan = qdevice_plan(spec)
        if plan is None:
            return None
        creds = self.credentials
        return QDevice(f"{name}-qdevice", QDeviceArgs(
            spec=spec, plan=plan, members=members, quorate=self.cluster.quorate, image_file_id=image_file_id,
            ssh_private_key=creds.ssh_private_key, ssh_public_key=creds.ssh_public_key, bridge=bridge,
            vlan_tag=vlan_tag, pool_id=pool_id), opts=pulumi.ResourceOptions(parent=self))

    def _template(self, name, args: PveLabArgs, image_file_id, bridge, vlan_tag, pool_id):
        """nodes.source template: the golden node template the nodes are cloned from (None: the apt path)."""
        spec = args.spec
        if spec.nodes.source != "template":
            return None
        from .node_template import NodeTemplate, NodeTemplateArgs, TemplateRef

        if spec.template.vm_id is not None:  # made elsewhere (the class-images stack); its seal marker names its builder
            return TemplateRef(vm_id=pulumi.Output.from_input(spec.template.vm_id), key="", builder_hostname="",
                               linked=spec.template.linked_clones)

        creds = self.credentials
        self.node_template = NodeTemplate(f"{name}-template", NodeTemplateArgs(
            spec=spec, image_file_id=image_file_id, root_password=creds.root_password,
            ssh_private_key=creds.ssh_private_key, ssh_public_key=creds.ssh_public_key,
            outer_api_token=args.outer_api_token, bridge=bridge, vlan_tag=vlan_tag, pool_id=pool_id),
            opts=pulumi.ResourceOptions(parent=self))
        return self.node_template.ref()

    def _image(self, name: str, spec: LabSpec) -> pulumi.Input[str]:
        """The Debian cloud image on the outer host: downloaded once per lab, or one shared by a class."""
        if spec.image.file_id:
            return spec.image.file_id
        image = proxmoxve.download.FileLegacy(
            f"{name}-image",
            content_type="import",
            datastore_id=spec.outer.image_storage,
            node_name=spec.outer.node,
            url=spec.image.url,
            file_name=spec.image.file_name,
            checksum=spec.image.checksum,
            checksum_algorithm=spec.image.checksum_algorithm if spec.image.checksum else None,
            overwrite=False,
            upload_timeout=1800,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.image = image
        return image.id

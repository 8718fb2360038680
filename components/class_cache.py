"""ClassCacheVm: the class's package cache, a small Debian VM running apt-cacher-ng (pvelab/classroom/class_cache.py).

Made by the class-images stack before the template builders (which fetch through it); removed with the
class images. Its one step (cache-install.sh) is idempotent and has no delete command, like every node step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve

from .node_step import NodeConnection, node_scripts, node_step
from .outer_vm import debian_vm_args

CACHE_HOSTNAME = "class-cache"
CACHE_TAG = "pve-lab-cache"


@dataclass
class ClassCacheVmArgs:
    site: Any  # classroom/class_cache.CacheSite
    image_file_id: pulumi.Input[str]
    root_password: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    ssh_public_key: pulumi.Input[str]


class ClassCacheVm(pulumi.ComponentResource):
    def __init__(self, name: str, args: ClassCacheVmArgs, opts: pulumi.ResourceOptions = None):
        super().__init__("pve-lab:index:ClassCacheVm", name, None, opts)
        site, cache = args.site, args.site.cache
        self.vm = proxmoxve.VmLegacy(
            f"{name}-vm",
            name=CACHE_HOSTNAME,
            node_name=site.node,
            description=f"pve-lab class package cache: apt-cacher-ng on {cache.url}",
            tags=sorted(set(site.tags) | {CACHE_TAG}),
            **debian_vm_args(cores=1, memory_mib=cache.memory_mib, storage=site.storage,
                             image_file_id=args.image_file_id, disk_gib=cache.disk_gib, bridge=site.bridge,
                             vlan_tag=cache.vlan_tag, firewall=None, address=cache.address, gateway=cache.gateway,
                             domain=site.domain, dns=site.dns, ssh_public_key=args.ssh_public_key,
                             root_password=args.root_password),
            on_boot=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        conn = NodeConnection(CACHE_HOSTNAME, cache.ip, args.ssh_private_key)
        # The node scripts first, as on every VM a step runs on (the install step is one line running one);
        # the first dial waits for cloud-init to bring up SSH.
        scripts = node_scripts(f"{name}-scripts", conn, parent=self, depends_on=[self.vm], triggers=[self.vm.id],
                               dial_error_limit=60)
        self.ready = node_step(f"{name}-install", replace(conn, scripts=scripts), "cache-install", parent=self,
                               env={"NODE_HOSTNAME": CACHE_HOSTNAME, "CACHE_PORT": cache.port},
                               depends_on=[self.vm], triggers=[self.vm.id])
        self.url = pulumi.Output.from_input(cache.url)
        self.register_outputs({"url": self.url})

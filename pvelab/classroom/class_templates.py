"""The class-images stack's golden node templates (inside its inline program; see classroom/templates.py).

One NodeTemplate (components/node_template.py) per outer node, with the VMID the students' stacks clone,
built from that node's class image, with one generated root password and SSH key for all builders (the
seal removes root's keys; every clone gets its own lab's credentials from cloud-init).
"""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

from ..spec import parse_spec
from ..stackfile import PROJECT_DIR


def build_class_extras(builds: Sequence[Any], cache_site: Any, files: Mapping[str, Any], token: Any,
                       outer: Any) -> dict:
    """Declare the class cache VM (if any) and the templates; returns the stack's extra exports."""
    import pulumi

    if str(PROJECT_DIR) not in sys.path:  # the components live next to the program's __main__.py
        sys.path.insert(0, str(PROJECT_DIR))
    from components.credentials import LabCredentials, LabCredentialsArgs

    creds = LabCredentials("class-template-credentials", LabCredentialsArgs())
    exports: dict = {}
    after: list = []
    if cache_site is not None:
        from components.class_cache import ClassCacheVm, ClassCacheVmArgs

        image = files.get(f"{cache_site.node}/{cache_site.image_file_id}", cache_site.image_file_id)
        cache = ClassCacheVm("class-cache", ClassCacheVmArgs(
            site=cache_site, image_file_id=image, root_password=creds.root_password,
            ssh_private_key=creds.ssh_private_key, ssh_public_key=creds.ssh_public_key),
            opts=pulumi.ResourceOptions(providers=[outer]))
        exports["aptProxy"] = cache.url
        after = [cache.ready]  # the builders fetch through it
    if builds:
        exports["templateVmIds"] = build_class_templates(builds, files, token, outer, creds, after)
    return exports


def build_class_templates(builds: Sequence[Any], files: Mapping[str, Any], token: Any, outer: Any, creds: Any,
                          after: Sequence[Any] = ()) -> dict:
    """Declare the templates; returns {outer node: the template's VMID (an Output)}."""
    import pulumi

    from components.node_template import NodeTemplate, NodeTemplateArgs

    out = {}
    for b in builds:
        spec = parse_spec(b.lab)
        template = NodeTemplate(f"template-{b.node}", NodeTemplateArgs(
            spec=spec, image_file_id=files.get(f"{b.node}/{b.image_file_id}", b.image_file_id),
            root_password=creds.root_password, ssh_private_key=creds.ssh_private_key,
            ssh_public_key=creds.ssh_public_key, outer_api_token=token, bridge=b.bridge, vlan_tag=b.vlan_tag,
            vm_id=b.vmid, after=list(after)), opts=pulumi.ResourceOptions(providers=[outer]))
        out[b.node] = template.vm_id
    return out

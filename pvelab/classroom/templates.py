"""The class's golden node templates: one per outer node, built by the class-images stack (nodes.source: template).

Pure logic. Every student on outer node k (roster order) clones the template with VMID
`allocation.vmidBase - 1 - k` (below the students' VMID blocks, so it never collides with one): their lab gets
`template.vmId`, builds nothing, and downloads nothing. The builder of node k lives in the subnet and VLAN of
the first student placed there, at that lab's builder address (the one after its nodes), until it is sealed
and turned into the template; that network's router gives it the internet (README "Classrooms").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass
class TemplateBuild:
    node: str
    vmid: int
    image_file_id: str  # the class image on that node (the same stack downloads it)
    lab: dict  # the builder's lab: the first student's there, as a lone lab that builds its own template
    bridge: str
    vlan_tag: Optional[int]


def class_template_vmid(vmid_base: int, node_index: int) -> int:
    return vmid_base - 1 - node_index


def uses_template(lab: dict) -> bool:
    return ((lab.get("nodes") or {}).get("source")) == "template" and (lab.get("template") or {}).get("vmId") is None


def assign_template(lab: dict, vmid_base: int, node_index: int) -> dict:
    """A student's lab clones its node's class template (unless the roster names one itself)."""
    if uses_template(lab):
        lab["template"] = {**(lab.get("template") or {}), "vmId": class_template_vmid(vmid_base, node_index)}
    return lab


def template_builds(stacks: Sequence[Any], node_order: dict[str, int], vmid_base: int) -> tuple[list[TemplateBuild], list[str]]:
    """One build per outer node whose students clone the class template; problems (one line each)."""
    builds: dict[str, TemplateBuild] = {}
    problems: list[str] = []
    for st in sorted(stacks, key=lambda s: (node_order.get(s.outer_node, 0), s.slot)):
        lab = st.lab
        if st.outer_node is None or st.outer_node in builds:
            continue
        if ((lab.get("nodes") or {}).get("source")) != "template":
            continue
        if lab.get("template", {}).get("vmId") != class_template_vmid(vmid_base, node_order.get(st.outer_node, 0)):
            continue  # the roster names its own template: nothing to build
        net = (lab.get("student") or {}).get("network") or {}
        if net.get("mode") != "vlan":
            problems.append("roster.lab.nodes.source: template needs allocation.network.mode vlan (the template "
                            "builder of each outer node uses the first student's VLAN there)")
            break
        builder = copy.deepcopy(lab)
        builder.pop("student", None)
        builder["template"] = {k: v for k, v in (builder.get("template") or {}).items() if k != "vmId"}
        builds[st.outer_node] = TemplateBuild(
            node=st.outer_node, vmid=lab["template"]["vmId"], image_file_id=lab["image"]["fileId"], lab=builder,
            bridge=(lab.get("outer") or {}).get("bridge", "vmbr0"), vlan_tag=net.get("vlanTag"))
    return list(builds.values()), problems

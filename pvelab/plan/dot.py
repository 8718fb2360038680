"""The plan as Graphviz DOT text (for those who have graphviz; `plan` itself never runs it).

One cluster for the topology (outer host, nested nodes, links, pool, HA VM), one cluster per step lane,
and the dependency edges (transitive reduction; the critical path in red).
"""
from __future__ import annotations

from .durations import format_duration
from .model import Plan, _gib
from .svg import CRITICAL, CROSS_NODE, PHASE_COLORS


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(plan: Plan) -> str:
    out = [f"digraph {_q('pve-lab plan ' + plan.stack)} {{",
           "  graph [rankdir=TB, fontname=\"Helvetica\", compound=true, newrank=true];",
           "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];",
           "  edge [fontname=\"Helvetica\", fontsize=9];"]
    o = plan.outer
    out.append(f"  subgraph cluster_topology {{ label={_q(f'outer PVE host {o.node} ({o.endpoint})')}; "
               "style=rounded; color=\"#555555\";")
    for n in plan.nodes:
        label = "\n".join([f"{n.hostname}  VMID {n.vmid}", n.address, f"{n.cores} vCPU, {_gib(n.memory_mib)} RAM",
                           f"disks {n.disks_text()}", " ".join(n.ceph_roles)])
        out.append(f"    {_q('node:' + n.hostname)} [label={_q(label)}, fillcolor=\"#ffffff\", color=\"#3d6fb6\"];")
    for link in ("link0", "link1"):
        cidr = plan.network.get(link)
        if not cidr:
            continue
        out.append(f"    {_q(link)} [shape=plaintext, style=\"\", label={_q(f'corosync {link} {cidr}')}];")
        for n in plan.nodes:
            addr = n.link0 if link == "link0" else n.link1
            out.append(f"    {_q('node:' + n.hostname)} -> {_q(link)} [dir=none, color=\"#2e7d32\", "
                       f"label={_q(addr or '')}];")
    if plan.pool:
        p = plan.pool
        out.append(f"    {_q('pool:' + p.name)} [label={_q(f'Ceph pool {p.name} size {p.size}/{p.min_size}')}, "
                   f"fillcolor=\"{PHASE_COLORS['ceph'][0]}\"];")
        for n in plan.nodes:
            if n.osd_count:
                out.append(f"    {_q('node:' + n.hostname)} -> {_q('pool:' + p.name)} [label={_q(f'OSD x{n.osd_count}')},"
                           " style=dashed];")
    if plan.ha:
        for v in plan.ha.vms:
            vid = f"havm:{v['vmid']}"
            label = f"vm:{v['vmid']} {v['name']}\nHA rule {plan.ha.rule}"
            out.append(f"    {_q(vid)} [label={_q(label)}, fillcolor=\"{PHASE_COLORS['ha'][0]}\"];")
            for node, prio in plan.ha.priorities.items():
                preferred = node == plan.ha.preferred_node
                out.append(f"    {_q(vid)} -> {_q('node:' + node)} [label={_q(f'priority {prio}')}, "
                           f"style={'bold' if preferred else 'dashed'}, color=\"{PHASE_COLORS['ha'][1]}\"];")
    out.append("  }")

    for lane in plan.lanes:
        lane_steps = plan.lane_steps(lane.id)
        if not lane_steps:
            continue
        out.append(f"  subgraph {_q('cluster_lane_' + lane.id)} {{ label={_q(lane.title)}; style=rounded; "
                   "color=\"#cccccc\";")
        for s in lane_steps:
            fill, stroke = PHASE_COLORS.get(s.phase, PHASE_COLORS["other"])
            color = CRITICAL if s.critical else stroke
            label = f"L{s.level} {s.title}\n{format_duration(s.estimate_s)} {s.id}"
            out.append(f"    {_q(s.id)} [label={_q(label)}, fillcolor=\"{fill}\", color=\"{color}\""
                       + (", penwidth=2" if s.critical else "") + "];")
        out.append("  }")
    critical = set(zip(plan.critical_path, plan.critical_path[1:]))
    lane_of = {s.id: s.lane for s in plan.steps}
    for s in plan.steps:
        for d in s.depends_on:
            if (d, s.id) in critical:
                attrs = f"color=\"{CRITICAL}\", penwidth=2"
            elif lane_of.get(d) != s.lane:
                attrs = f"color=\"{CROSS_NODE}\""
            else:
                attrs = "color=\"#8a8a8a\""
            out.append(f"  {_q(d)} -> {_q(s.id)} [{attrs}];")
    out.append("}")
    return plan.redact("\n".join(out) + "\n")

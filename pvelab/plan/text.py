"""The plan as text for a terminal, and as JSON for scripts. Both go through Plan.redact."""
from __future__ import annotations

import json

from .durations import HA_FAILOVER_S, format_duration, format_offset
from .model import Plan, TreeNode, _gib, _num

JSON_FORMAT = "pve-lab-plan/1"  # bump when a key changes meaning, so scripts can check

SHORT_TYPES = {
    "pve-lab:index:PveLab": "PveLab",
    "pve-lab:index:LabCredentials": "LabCredentials",
    "pve-lab:index:NestedPveNode": "NestedPveNode",
    "pve-lab:index:PveCluster": "PveCluster",
    "pve-lab:index:CephCluster": "CephCluster",
    "pve-lab:index:HaTestVms": "HaTestVms",
}


def _short_type(t: str) -> str:
    return SHORT_TYPES.get(t) or t.rsplit(":", 1)[-1]


def render_json(plan: Plan, files: dict[str, str] | None = None) -> str:
    data = {"format": JSON_FORMAT, **plan.to_dict(), "files": dict(files or {})}
    return plan.redact(json.dumps(data, indent=2, sort_keys=False))


def render_errors(plan: Plan) -> str:
    return plan.redact(plan.error or "")


def _tree_lines(node: TreeNode, prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    if node.kind == "stack":
        label = node.summary
    else:
        what = "provider" if node.kind == "provider" else _short_type(node.type) if node.kind == "component" else ""
        label = "  ".join(p for p in (node.name, f"[{what}]" if what else "", node.summary) if p)
    lines = [label if root else f"{prefix}{'└─ ' if last else '├─ '}{label}"]
    child_prefix = "" if root else prefix + ("   " if last else "│  ")
    for i, child in enumerate(node.children):
        lines += _tree_lines(child, child_prefix, i == len(node.children) - 1, root=False)
    return lines


def render_text(plan: Plan, files: dict[str, str] | None = None) -> str:
    out: list[str] = []
    add = out.append
    s = plan.summary
    add(f"pve-lab plan: stack {plan.stack} (offline: the real program on Pulumi's mock runtime; no host contacted)")
    facts = [f"{len(plan.nodes)} nested node(s)"]
    if s.get("pve_version"):
        facts.append(f"PVE {s['pve_version']} (Debian {s.get('debian_suite')})")
    if s.get("ceph_release"):
        facts.append(f"Ceph {s['ceph_release']}")
    if plan.ha:
        facts.append(f"HA: {len(plan.ha.vms)} test VM(s)")
    add(f"cluster {plan.cluster_name or '(none)'}: " + ", ".join(facts))
    o = plan.outer
    add(f"outer host {o.node}: API {o.endpoint or '?'}, storage {', '.join(o.storages) or '?'}, "
        f"bridge {', '.join(o.bridges) or '?'}, image {o.image or '?'}")

    add("")
    add("Resource tree")
    if plan.tree is not None:
        out.extend("  " + line for line in _tree_lines(plan.tree))

    add("")
    add("Nested nodes (from the recorded VM inputs)")
    rows = [("node", "address", "VMID", "vCPU", "RAM", "disks", "corosync", "Ceph", "HA")]
    for n in plan.nodes:
        links = f"link0 {n.link0 or '-'}" + (f", link1 {n.link1}" if n.link1 else "")
        ha = ""
        if n.ha_priority is not None:
            ha = f"priority {n.ha_priority}" + (" (preferred)" if plan.ha and plan.ha.preferred_node == n.hostname else "")
        rows.append((n.hostname, n.address, str(n.vmid), str(n.cores), _gib(n.memory_mib), n.disks_text(), links,
                     " ".join(n.ceph_roles) or "-", ha or "-"))
    out.extend("  " + line for line in _table(rows))
    if plan.network.get("link0"):
        add(f"  corosync link0 on {plan.network['link0']}"
            + (f", link1 on {plan.network['link1']}" if plan.network.get("link1") else " (no link1 configured)"))
    if plan.pool:
        p = plan.pool
        add(f"  Ceph pool {p.name}: size {p.size}, min_size {p.min_size}, {p.pg_num} PGs"
            + (f", registered as storage '{p.name}'" if p.add_storages else ""))
    if plan.ha:
        h = plan.ha
        vms = ", ".join(f"{v['name']} (VMID {v['vmid']}, {_gib(v['memory_mib'] or 0)}, disk on {v['storage']})"
                        for v in h.vms)
        prio = ", ".join(f"{k}:{v}" for k, v in h.priorities.items())
        add(f"  HA: {vms}; {', '.join(h.resources)}; {h.rule_type} '{h.rule}' {prio}; preferred node {h.preferred_node}")

    add("")
    add("Steps per node, in order (L = level: steps on one level can run at the same time;")
    add("  t+ = estimated start, ~ = estimated duration; ESTIMATES from pvelab/plan/durations.py; * = critical path)")
    steps_by_id = {st.id: st for st in plan.steps}
    for lane in plan.lanes:
        lane_steps = plan.lane_steps(lane.id)
        if not lane_steps:
            continue
        title = lane.title + (f" ({lane.address})" if lane.address and lane.kind == "node" else "")
        add(f"  {title}")
        for st in lane_steps:
            elsewhere: dict[str, list[str]] = {}  # waits for steps on other lanes, grouped by lane
            for d in st.depends_on:
                if steps_by_id[d].lane != st.lane:
                    elsewhere.setdefault(_lane_name(plan, steps_by_id[d].lane), []).append(d)
            after = ("  after " + "; ".join(f"{', '.join(ids)} ({lane})" for lane, ids in elsewhere.items())
                     if elsewhere else "")
            mark = "*" if st.critical else " "
            add(f"   {mark}L{st.level:<3} {format_offset(st.start_s):>8}  {format_duration(st.estimate_s):>7}  "
                f"{st.title:<34}  {st.id}{after}")

    add("")
    add("Parallel levels (each level starts when the steps it waits for are done)")
    for i, level in enumerate(plan.levels):
        add(f"  L{i:<3} " + ", ".join(level))

    add("")
    t = plan.totals
    if t is not None:
        add(f"Totals on the outer host ({t.outer_vms} VMs)")
        add(f"  vCPU {t.vcpu}, RAM {_gib(t.memory_mib)}, disk {_num(t.disk_gib)} GiB"
            + (f" (the nested test VMs' {_gib(t.inner_vm_memory_mib)} live inside the nodes' RAM)"
               if t.inner_vm_memory_mib else ""))
        units = {"cpu": ("vCPU", "cores"), "memory": ("GiB", "GiB"), "disk": ("GiB", "GiB")}
        for f in t.fit:
            need_unit, have_unit = units[f.what]
            verdict = "DOES NOT FIT" if not f.fits else ("fits, shared" if f.what == "cpu" and f.need > f.have
                                                          else "fits")
            add(f"  {f.what}: needs {_num(f.need)} {need_unit}, host has {_num(f.have)} {have_unit}: {verdict}"
                + (f" ({f.note})" if f.note else ""))
        if t.fits is None:
            add("  (give --host-cores, --host-memory-gib, --host-disk-gib to check that it fits)")
        elif not t.fits:
            add("  The lab does NOT fit this host: lower nodes.cores / nodes.memoryMiB / disk sizes, or use a bigger host.")

    add("")
    add(f"Critical path: the longest chain of dependent steps ({len(plan.critical_path)} steps)")
    for step_id in plan.critical_path:
        st = steps_by_id[step_id]
        add(f"  {format_offset(st.start_s):>8}  {format_duration(st.estimate_s):>7}  {_lane_name(plan, st.lane):<22} "
            f"{st.title:<34}  {st.id}")
    add(f"  Estimated wall time of `pulumi up`: {format_duration(plan.estimate_s)} (ESTIMATE: per-step figures in "
        f"pvelab/plan/durations.py, every parallel branch running at once)")
    add(f"  After up, an HA failover (`drill ha`) takes about {HA_FAILOVER_S[0] // 60}-{HA_FAILOVER_S[1] // 60} min.")
    defaults = sorted(st.id for st in plan.steps if st.estimate_is_default)
    if defaults:
        add(f"  No duration known for {', '.join(defaults)}: counted as 1 min each.")
    add("")
    if plan.policy:
        add(f"Policy: {len(plan.policy)} violation(s); `pulumi up --policy-pack policy` would refuse this stack")
        out.extend(f"  {v}" for v in plan.policy)
    else:
        add("Policy: the lab passes the sanity rules of the policy pack (policy/)")
    if plan.warnings:
        add("")
        add("Warnings")
        out.extend(f"  {w}" for w in plan.warnings)
    if files:
        add("")
        add("Picture: " + ", ".join(files.values()))
    return plan.redact("\n".join(out) + "\n")


def _lane_name(plan: Plan, lane_id: str) -> str:
    lane = next((lane for lane in plan.lanes if lane.id == lane_id), None)
    return lane.title if lane else lane_id


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]

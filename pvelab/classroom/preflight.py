"""`classroom preflight ROSTER`: the whole class against the real outer host, before the first stack starts.

Per outer node, the labs of every student placed there that are not built yet (their VMs are not on the host)
are summed and checked like one lab is: the node's real available memory, its storage's free space (thin pools:
a warning when overcommitted, since their disks fill only as written), and every student's VMIDs asked of
/cluster/nextid; plus the token's privileges for a student's stack. `classroom plan` trusts the capacities the
roster states; this asks the host.

Some things cannot be seen through the PVE API; they are listed as such (CANNOT_CHECK).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..ops.preflight import Check, Preflight, Requirement, failed, render_text, requirement_for
from .allocate import ClassPlan, StudentStack

# What preflight and `classroom plan` cannot check; said every time (README "Isolation").
CANNOT_CHECK = (
    "isolation above layer 2: the students' VLANs/VNets are separate, but the router at .1 of every student subnet "
    "routes between them unless it filters; it must drop traffic between student subnets and allow the instructor "
    "(see README 'Isolation: the router rule'). Not visible through the PVE API.",
    "internet access from the student subnets (Debian and Proxmox mirrors) through that router.",
    "a route from this machine to the class supernet (SSH to the nested nodes).",
)


@dataclass
class NodeReport:
    node: str
    students: list[str]
    built: list[str]  # students whose lab VMs are on the host already (not counted again)
    checks: list[Check] = field(default_factory=list)


def student_requirement(st: StudentStack) -> Requirement:
    return requirement_for(st.spec)


def is_built(st: StudentStack, guests: dict[int, dict]) -> bool:
    """The student's lab VMs are on the host (the first node VM, named and tagged as the lab names it)."""
    plans = st.spec.node_plans
    if not plans:
        return False
    g = guests.get(plans[0].vmid)
    return bool(g) and g.get("name") == plans[0].hostname and "pve-lab-node" in str(g.get("tags", "")).split(";")


def node_requirement(students: list[StudentStack], built: set[str]) -> Requirement:
    """What the students of one node still need (built labs already hold their memory and disk)."""
    todo = [student_requirement(s) for s in students if s.student_id not in built]
    every = [student_requirement(s) for s in students]
    return Requirement(
        memory_mib=sum(r.memory_mib for r in todo), disk_gib=sum(r.disk_gib for r in todo),
        vcpus=sum(r.vcpus for r in every), vms=sum(r.vms for r in every),
        max_vm_cores=max((r.max_vm_cores for r in every), default=0),
        vmids=tuple(v for r in every for v in r.vmids), own_vms=tuple(o for r in every for o in r.own_vms),
        label=f"{len(todo)} student lab(s) not built yet" + (f" ({len(built & {s.student_id for s in students})} "
                                                             f"built already)" if built else ""))


def by_node(plan: ClassPlan) -> dict[str, list[StudentStack]]:
    out: dict[str, list[StudentStack]] = {}
    for st in plan.students:
        if st.outer_node and st.spec is not None:
            out.setdefault(st.outer_node, []).append(st)
    return out


def run_class_preflight(plan: ClassPlan, client: Any, client_for: Callable[[Any], Any] | None = None
                        ) -> list[NodeReport]:
    """One report per outer node the class uses; `client` answers for the class's outer cluster."""
    guests = {int(g["vmid"]): g for g in client.get("cluster/resources", type="vm") if "vmid" in g}
    reports = []
    for node, students in by_node(plan).items():
        built = {s.student_id for s in students if is_built(s, guests)}
        requirement = node_requirement(students, built)
        first = students[0]  # its spec names the node, storages and network the class uses there
        checks = Preflight(first.spec, client_for(first.spec) if client_for else client, requirement,
                           classroom=True).run()
        reports.append(NodeReport(node, [s.student_id for s in students], sorted(built), checks))
    return reports


def class_failed(reports: list[NodeReport]) -> bool:
    return any(failed(r.checks) for r in reports)


def render_class_text(plan: ClassPlan, reports: list[NodeReport], url: str) -> str:
    out = [f"class preflight for {plan.roster.class_id} on {url}:"]
    for r in reports:
        built = f"; built already: {', '.join(r.built)}" if r.built else ""
        out.append("")
        out.append(render_text(r.checks, f"outer node {r.node} ({len(r.students)} students: "
                                         f"{', '.join(r.students)}{built}):"))
    out += ["", "not checked (cannot be seen through the PVE API; check by hand):"]
    out += [f"  - {line}" for line in CANNOT_CHECK]
    return "\n".join(out)


def render_class_json(plan: ClassPlan, reports: list[NodeReport]) -> str:
    return json.dumps({"class": plan.roster.class_id, "ok": not class_failed(reports),
                       "nodes": [{"node": r.node, "students": r.students, "built": r.built,
                                  "checks": [asdict(c) for c in r.checks]} for r in reports],
                       "notChecked": list(CANNOT_CHECK)}, indent=2)

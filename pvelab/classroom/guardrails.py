"""The class's guardrails: the roster's limits as policy config, and the policy rules over a whole plan.

`classroom plan` and `classroom render` run the same rules as the policy pack (pvelab/policy_rules.py):
over resources built from each student's spec (fast), or over the real program on the mock runtime
(`--evaluate`: exact, about 0.1 s per student).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..policy_rules import LIMIT_POLICY, ClassLimits, Violation, check_all, resources_from_spec
from .allocate import ClassPlan, StudentStack


def policy_config_path(roster_path: str | Path) -> Path:
    roster_path = Path(roster_path)
    return roster_path.with_name(roster_path.stem + ".policy.json")


def class_limits(plan: ClassPlan) -> ClassLimits:
    """The roster's limits; allowed nodes and storages default to what the class is set up to use."""
    roster, lim = plan.roster, plan.roster.limits
    nodes = lim.allowed_nodes or tuple(n.name for n in roster.outer_nodes) or tuple(
        sorted({s.outer_node for s in plan.students if s.outer_node}))
    storages = lim.allowed_storages
    if not storages:
        used = []
        for s in plan.students:
            for key in ("storage", "imageStorage"):
                value = s.lab["outer"].get(key, "local-lvm" if key == "storage" else "local")
                if value not in used:
                    used.append(value)
        storages = tuple(used)
    a = roster.allocation
    return ClassLimits(max_nodes=lim.max_nodes, max_cores=lim.max_cores, max_memory_gib=lim.max_memory_gib,
                       max_disk_gib=lim.max_disk_gib, allowed_nodes=nodes, allowed_storages=storages,
                       vmid_min=a.vmid_base, vmid_max=a.vmid_base + plan.max_slots * a.vmid_block - 1,
                       require_student=True)


def policy_config(plan: ClassPlan) -> dict:
    """The `--policy-pack-config` file's content for this class (the sanity policy takes no config)."""
    return {LIMIT_POLICY: class_limits(plan).to_config()}


def write_policy_config(plan: ClassPlan, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(policy_config(plan), indent=2) + "\n")
    return path


def student_violations(student: StudentStack, limits: ClassLimits) -> list[Violation]:
    if student.spec is None:
        return []
    return check_all(resources_from_spec(student.spec), limits)


def plan_violations(plan: ClassPlan, evaluate: bool = False) -> dict[str, list[Violation]]:
    """Policy violations per student id (empty lists when clean)."""
    limits = class_limits(plan)
    if not evaluate:
        return {s.student_id: student_violations(s, limits) for s in plan.students}
    from ..evaluate import PLACEHOLDER_SECRETS, evaluate_config

    out = {}
    for s in plan.students:
        if s.spec is None:
            out[s.student_id] = []
            continue
        ev = evaluate_config({**s.config(), **PLACEHOLDER_SECRETS}, list(PLACEHOLDER_SECRETS), stack=s.stack)
        if not ev.ok:
            out[s.student_id] = [Violation("evaluate", (ev.error or "").strip().splitlines()[-1] if ev.error else "failed")]
            continue
        out[s.student_id] = check_all(ev.records, limits)
    return out

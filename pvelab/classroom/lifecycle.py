"""What `classroom up/down` must know beyond the roster: retired students' stacks, and students a pin would move.

Pure: reads a ClassPlan (pvelab/classroom/allocate.py) and, for moves, the stacks that exist (from the backend).
- A student removed from the roster keeps their slot as *retired* in the allocation file, and their lab (VMs,
  pool, user) stays until someone destroys it: `classroom down` destroys retired students' stacks too.
- A stack made before accounts were owned by realm (pvelab/classroom/realms.py) may still hold a UserLegacy for an
  account that is not the class's own: the program no longer declares it, so the next `up` would delete the
  person's account. `classroom up` refuses and prints the `pulumi state delete` that forgets it instead.
- A student already allocated on one outer node and now pinned to another (`node:`) would get their lab
  rebuilt, not moved: bpg's VmLegacy replaces a VM whose node_name changes unless `migrate` is set
  (proxmoxtf/resource/vm/vm.go: ForceNewIf node_name when !migrate), and the replacement's fixed VMID clashes
  with the old VM still holding it. `classroom up` refuses while such a lab exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class RetiredStack:
    student_id: str
    stack: str
    slot: int
    node: str


def retired_stacks(plan: Any) -> list[RetiredStack]:
    """The stacks of students the allocation file lists as retired (no longer in the roster), by slot."""
    class_id = plan.roster.class_id
    in_roster = {s.student_id for s in plan.students}
    out = []
    for slot, (student_id, node) in sorted(plan.allocation.retired.items()):
        if student_id and student_id not in in_roster:
            out.append(RetiredStack(student_id, f"{class_id}-{student_id}", slot, node))
    return out


@dataclass(frozen=True)
class Move:
    student_id: str
    stack: str
    before: str  # the outer node the allocation file records
    after: str  # the node the roster pins them to now


def moves(plan: Any, previous_nodes: Mapping[str, str]) -> list[Move]:
    """Students whose pin takes them off the node the allocation file recorded for them."""
    out = []
    for s in plan.students:
        before = previous_nodes.get(s.student_id)
        if before and s.outer_node and s.outer_node != before:
            out.append(Move(s.student_id, s.stack, before, s.outer_node))
    return out


def stack_short_name(name: str) -> str:
    """`org/project/stack` or `org/stack` (cloud backends) -> `stack`."""
    return name.rsplit("/", 1)[-1]


def refused_moves(found: list[Move], existing: Mapping[str, Optional[int]]) -> list[str]:
    """One line per move whose lab exists (a stack with resources); `existing`: stack name -> resource count."""
    counts = {stack_short_name(k): v for k, v in existing.items()}
    lines = []
    for m in found:
        if m.stack not in counts or counts[m.stack] == 0:
            continue  # no lab yet (or destroyed): it is simply built on the new node
        count = counts[m.stack]
        lines.append(f"{m.student_id}: allocated on '{m.before}' and now pinned to '{m.after}', but their lab exists "
                     f"(stack {m.stack}{f', {count} resources' if count else ''}): moving it would rebuild it and "
                     f"its VMIDs would clash. Destroy it first (`classroom down ROSTER --only {m.student_id} --yes`), "
                     f"or pin it back to '{m.before}'")
    return lines


USER_TYPE = "proxmoxve:index/userLegacy:UserLegacy"


def foreign_user_in_state(student_id: str, stack: str, user: str, resources: list[dict]) -> Optional[str]:
    """A refusal line when the stack's state manages a user the stack must not own (see the module docstring)."""
    urns = [r["urn"] for r in resources if r.get("type") == USER_TYPE]
    if not urns:
        return None
    return (f"{student_id}: stack {stack} still manages the user account {user} (made by an earlier version); an "
            f"`up` would delete that person's account. Forget it without touching the account: "
            f"`pulumi state delete -s {stack} --target-dependents '{urns[0]}'`, then run `classroom up` again "
            f"(it grants the ACLs anew)")

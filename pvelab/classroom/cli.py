"""`python -m pvelab classroom plan|render|up|down ROSTER`: a whole class of nested labs from one roster.

plan    every student's slot, outer node, VMIDs, subnet, network, user and fit, plus the policy rules
        (table, or --format json); writes nothing. Exit 1 when the class does not fit or breaks a rule.
render  writes the allocation file (<roster>.alloc.yaml), the policy-pack config (<roster>.policy.json)
        and Pulumi.<class>-<id>.yaml for every student.
preflight  the whole class against the real outer host, per outer node (pvelab/classroom/preflight.py).
credentials  one sheet per student (web UI, user, VMs, nested nodes, what they can do); secrets on request.
up/down run every student's stack (see pvelab/classroom/run_cli.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

from ..stackfile import PROJECT_DIR
from .allocate import ClassPlan, plan_class
from .guardrails import plan_violations
from .render import orphan_stack_files, render_class

RUN_CLI_MODULE = "pvelab.classroom.run_cli"


def register(subparsers) -> None:
    parser = subparsers.add_parser("classroom", help="plan, render, build and remove one lab per student from a roster",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="classroom_command", required=True, metavar="ACTION")

    plan = sub.add_parser("plan", help="every student's allocation and fit, and the class guardrails (writes nothing)")
    plan.add_argument("roster", type=Path, help="the roster (YAML, or CSV with a YAML '#' header)")
    plan.add_argument("--format", choices=("table", "json"), default="table")
    plan.add_argument("--evaluate", action="store_true",
                      help="check the policy on the real program (mock runtime) instead of the resources the plan implies")
    plan.set_defaults(func=cmd_plan)

    rend = sub.add_parser("render", help="write the allocation file, the policy config and every student's stack file")
    rend.add_argument("roster", type=Path)
    rend.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="where Pulumi.<stack>.yaml files go")
    rend.set_defaults(func=cmd_render)

    pre = sub.add_parser("preflight", help="check the whole class against the real outer host (memory, storage, "
                                           "VMIDs, privileges per outer node) before the first `classroom up`")
    pre.add_argument("roster", type=Path)
    pre.add_argument("--format", choices=("text", "json"), default="text")
    pre.add_argument("--outer-url", metavar="URL", help="outer host API URL instead of the roster's outer.endpoint")
    pre.add_argument("--outer-ca", metavar="FILE", help="CA certificate to verify the outer host with")
    pre.set_defaults(func=cmd_preflight)

    cred = sub.add_parser("credentials", help="one sheet per student: web UI, user, their VMs and nested nodes, what "
                                              "they can do; passwords only with --show-secrets")
    cred.add_argument("roster", type=Path)
    cred.add_argument("--only", nargs="+", metavar="STUDENT_ID", help="only these students (put ROSTER first)")
    cred.add_argument("--show-secrets", action="store_true",
                      help="read each stack's studentPassword and rootPassword (needs the `pulumi` CLI) and print them")
    cred.add_argument("--format", choices=("text", "json"), default="text")
    cred.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help="where the students' stacks are")
    cred.set_defaults(func=cmd_credentials)

    from .reset_cli import add_reset_commands  # baseline, reset: every student's lab (pvelab/ops/reset.py)

    add_reset_commands(sub)
    try:
        from . import run_cli
    except ModuleNotFoundError as exc:
        if exc.name != RUN_CLI_MODULE:
            raise
        return  # up/down are not part of this checkout
    run_cli.add_run_commands(sub)


# ---------------------------------------------------------------- plan


def plan_rows(plan: ClassPlan, violations: dict) -> list[dict]:
    rows = []
    for s in plan.students:
        net = s.student["network"]
        rows.append({
            "id": s.student_id, "name": s.name, "stack": s.stack, "slot": s.slot, "node": s.outer_node,
            "status": s.status, "vmids": list(s.vmids), "subnet": s.lab["network"]["cidr"],
            "gateway": s.lab["network"]["gateway"], "network": net, "pool": s.student["pool"],
            "user": s.student["user"], "cluster": s.lab["cluster"]["name"],
            "hostnames": [p.hostname for p in s.spec.node_plans] if s.spec else [],
            "demand": {"cores": s.demand.cores, "memoryGiB": s.demand.memory_gib, "diskGiB": s.demand.disk_gib},
            "violations": [str(v) for v in violations.get(s.student_id, [])],
        })
    return rows


def plan_json(plan: ClassPlan, violations: dict) -> dict:
    return {
        "class": plan.roster.class_id, "ok": plan.ok and not any(violations.values()),
        "students": plan_rows(plan, violations),
        "nodes": [{"name": u.node.name, "students": u.students,
                   "used": {"cores": u.used.cores, "memoryGiB": u.used.memory_gib, "diskGiB": u.used.disk_gib},
                   "capacity": {"cores": u.node.cores, "memoryGiB": u.node.memory_gib, "diskGiB": u.node.disk_gib}}
                  for u in plan.nodes],
        "imageDownloads": [vars(d) for d in plan.image_downloads],
        "maxSlots": plan.max_slots, "problems": plan.problems, "notChecked": list(_cannot_check()),
    }


def _cannot_check() -> tuple[str, ...]:
    from .preflight import CANNOT_CHECK  # imported when used: `classroom plan` stays quick

    return CANNOT_CHECK


def _width(text: str) -> int:
    """Columns a terminal uses for `text` (CJK names take two per character)."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(_width(h), *(_width(r[i]) for r in rows)) if rows else _width(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _vmid_text(vmids: list[int]) -> str:
    return f"{vmids[0]}-{vmids[-1]}" if vmids else "-"


def plan_text(plan: ClassPlan, violations: dict) -> str:
    rows = plan_rows(plan, violations)
    student_rows = []
    for r in rows:
        net = r["network"]
        net_text = f"vnet {net['vnet']}/{net['vnetTag']}" if net["mode"] == "sdn" else f"vlan {net['vlanTag']}"
        d = r["demand"]
        fit = "NO FIT" if r["node"] is None else ("policy!" if r["violations"] else "ok")
        student_rows.append([r["id"], r["name"][:24], r["stack"], str(r["slot"]), r["node"] or "-",
                             _vmid_text(r["vmids"]), r["subnet"], net_text, r["user"],
                             f"{d['cores']}c/{d['memoryGiB']:g}G/{d['diskGiB']:g}G", r["status"], fit])
    out = [f"class {plan.roster.class_id}" + (f": {plan.roster.title}" if plan.roster.title else "")
           + f" - {len(rows)} student(s), {plan.max_slots} slots available", "",
           _table(["ID", "NAME", "STACK", "SLOT", "NODE", "VMIDS", "SUBNET", "NETWORK", "USER", "NEEDS", "STATUS", "FIT"],
                  student_rows), ""]
    node_rows = []
    for u in plan.nodes:
        cap = u.node
        show = lambda used, total, unit: f"{used:g}/{total:g}{unit}" if total is not None else f"{used:g}{unit}"  # noqa: E731
        node_rows.append([cap.name, str(len(u.students)), show(u.used.cores, cap.cores, ""),
                          show(u.used.memory_gib, cap.memory_gib, " GiB"), show(u.used.disk_gib, cap.disk_gib, " GiB")])
    out += ["outer nodes (used/capacity):",
            _table(["NODE", "STUDENTS", "VCPU", "RAM", "DISK"], node_rows), ""]
    out.append("shared image downloads (the class-images stack fetches each once):")
    out += [f"  {d.node}: {d.file_id} <- {d.url}" for d in plan.image_downloads] or ["  (none)"]
    if plan.template_builds:
        out.append("golden node templates (the class-images stack builds one per outer node; the labs clone it):")
        out += [f"  {b.node}: VMID {b.vmid}, builder in VLAN {b.vlan_tag}" for b in plan.template_builds]
    problems = list(plan.problems)
    for r in rows:
        problems += [f"{r['stack']}: {v}" for v in r["violations"]]
    if problems:
        out += ["", f"{len(problems)} problem(s):"] + [f"- {p}" for p in problems]
    else:
        out += ["", "the class fits and every stack passes the policy rules"]
    out += ["", "not checked here (`classroom preflight` checks the host; these need a look by hand):"]
    out += [f"- {line}" for line in _cannot_check()]
    return "\n".join(out)


def cmd_plan(args) -> int:
    plan = plan_class(args.roster, strict=False)
    violations = plan_violations(plan, evaluate=args.evaluate)
    if args.format == "json":
        print(json.dumps(plan_json(plan, violations), indent=2))
    else:
        print(plan_text(plan, violations))
    return 0 if plan.ok and not any(violations.values()) else 1


# ---------------------------------------------------------------- render


def cmd_render(args) -> int:
    # Under a lock: roster + allocation -> checks -> allocation file, policy config, stack files (each atomic).
    result = render_class(args.roster, args.project_dir)
    if result.violations:
        print("the policy rules refuse this class (nothing written):", file=sys.stderr)
        print("\n".join(f"- {b}" for b in result.violations), file=sys.stderr)
        return 1
    plan, alloc, policy, paths = result.plan, result.allocation_file, result.policy_file, result.stack_files
    print(f"wrote {alloc} (commit it: it keeps every student's slot and node)")
    print(f"wrote {policy} (use: pulumi up -s <stack> --policy-pack policy --policy-pack-config {policy})")
    print(f"wrote {len(paths)} stack file(s): {', '.join(p.name for p in paths)}")
    for orphan in orphan_stack_files(plan, args.project_dir):
        print(f"note: {orphan.name} belongs to a student no longer in the roster; its lab may still exist "
              f"(remove it with `classroom down` / `pulumi destroy -s {orphan.name[7:-5]}`)")
    return 0


# ---------------------------------------------------------------- preflight


def class_preflight(plan: ClassPlan, outer_url: str | None = None, outer_ca: str | None = None):
    """(reports, url) of the class preflight; the API token comes from PVE_LAB_OUTER_API_TOKEN."""
    from ..ops.connect import outer_client
    from .preflight import by_node, run_class_preflight

    nodes = by_node(plan)
    if not nodes:
        raise ValueError("no student is placed on an outer node (see `classroom plan`)")
    spec = next(iter(nodes.values()))[0].spec
    client = outer_client(spec, outer_url, outer_ca)
    return run_class_preflight(plan, client), outer_url or spec.outer.endpoint


def cmd_preflight(args) -> int:
    from ..ops.api import ApiError
    from ..ops.connect import MissingSecret
    from .preflight import class_failed, render_class_json, render_class_text

    plan = plan_class(args.roster, strict=True)
    try:
        reports, url = class_preflight(plan, args.outer_url, args.outer_ca)
    except (ApiError, MissingSecret, ValueError) as exc:
        print(getattr(exc, "message", None) or str(exc), file=sys.stderr)
        return 2
    print(render_class_json(plan, reports) if args.format == "json" else render_class_text(plan, reports, url))
    return 1 if class_failed(reports) else 0


# ---------------------------------------------------------------- credentials


def cmd_credentials(args) -> int:
    from .credentials import render_sheets, sheets_json, student_sheets

    plan = plan_class(args.roster, strict=True)
    only = [s for value in args.only or [] for s in value.split(",") if s] or None
    unknown = sorted(set(only or []) - {s.student_id for s in plan.students})
    if unknown:
        print(f"--only: unknown student id(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    secrets_for = None
    if args.show_secrets:
        from .automation import AutomationBackend, PulumiCliMissing

        try:
            backend = AutomationBackend(work_dir=args.project_dir)
        except PulumiCliMissing as exc:
            print(f"classroom credentials --show-secrets: {exc}", file=sys.stderr)
            return 2
        secrets_for = backend.outputs
        print("the sheets below hold secrets: hand each one to its student only", file=sys.stderr)
    try:
        sheets = student_sheets(plan, only, secrets_for)
    except Exception as exc:  # StackNotFound, a CLI error: one line
        print(f"classroom credentials: {exc}", file=sys.stderr)
        return 2
    print(sheets_json(sheets) if args.format == "json" else render_sheets(sheets))
    return 0

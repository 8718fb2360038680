"""`classroom baseline ROSTER` and `classroom reset ROSTER [--only ...]`: pvelab/ops/reset.py for every student.

Each student's lab is handled on its own (a bounded number at a time); one student's failure never stops
the others. The outer API token comes from PVE_LAB_OUTER_API_TOKEN; each lab's root password (needed to
prove it healthy) from PVE_LAB_ROOT_PASSWORD when the class shares one, else from the student's stack
(`pulumi stack output --show-secrets rootPassword`), never from the command line.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from ..ops.api import ApiError, Retry
from ..ops.connect import nested_client, outer_client
from ..ops.reset import DEFAULT_SNAPSHOT, LabSnapshots, ResetReport, ResetTiming
from ..spec import LabSpec
from ..stackfile import PROJECT_DIR, SECRET_ENV
from .allocate import plan_class

DEFAULT_PARALLEL = 4


def add_reset_commands(classroom_subparsers) -> None:
    for action, text in (("baseline", "snapshot every student's lab at one consistent point (see `baseline`)"),
                         ("reset", "roll every student's lab back to its baseline and prove it healthy")):
        p = classroom_subparsers.add_parser(action, help=text, description=text)
        p.add_argument("roster", type=Path, metavar="ROSTER")
        p.add_argument("--only", nargs="+", metavar="STUDENT_ID", help="only these students (after ROSTER)")
        p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                       help=f"labs at the same time (default {DEFAULT_PARALLEL})")
        p.add_argument("--snapshot", default=DEFAULT_SNAPSHOT, metavar="NAME")
        p.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help=argparse.SUPPRESS)
        p.add_argument("--yes", action="store_true", help="do not ask first (needed when not run on a terminal)")
        if action == "baseline":
            p.add_argument("--replace", action="store_true", help="take the baseline again where one exists")
        p.set_defaults(func=lambda args, action=action: run_class_reset(args, action))


def stack_root_password(stack: str, project_dir: Path) -> str:
    """The lab's root password: the class's shared one from the environment, else the stack's output."""
    shared = os.environ.get(SECRET_ENV["rootPassword"])
    if shared:
        return shared
    try:
        proc = subprocess.run(["pulumi", "stack", "output", "--show-secrets", "rootPassword", "-s", stack],
                              cwd=project_dir, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ApiError(f"{stack}: the pulumi CLI is not on PATH to read the root password; export "
                       f"{SECRET_ENV['rootPassword']} when the class shares one") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ApiError(f"{stack}: cannot read its rootPassword output ({proc.stderr.strip()[:200] or 'empty'})")
    return proc.stdout.strip()


def lab_snapshots(spec: LabSpec, stack: str, project_dir: Path, out: Callable[[str], None],
                  snapshot: str) -> LabSnapshots:
    """The real clients for one student's lab (tests replace this function)."""
    retry = Retry()
    outer = outer_client(spec, retry=retry)
    nested = nested_client(spec, retry=retry, password=stack_root_password(stack, project_dir))
    return LabSnapshots(spec, stack, outer, nested, ResetTiming(), out=out, snapshot=snapshot)


def run_class_reset(args, action: str) -> int:
    plan = plan_class(args.roster, strict=True)
    students = [s for s in plan.students if s.spec is not None]
    if args.only:
        wanted = {x for item in args.only for x in item.split(",") if x}
        unknown = wanted - {s.student_id for s in students}
        if unknown:
            print(f"--only: unknown student id(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        students = [s for s in students if s.student_id in wanted]
    if args.parallel < 1:
        print("--parallel: at least 1", file=sys.stderr)
        return 2
    if not args.yes:
        what = ("shuts down, snapshots and restarts" if action == "baseline"
                else "hard-stops and rolls back (throwing away everything since the baseline)")
        question = f"classroom {action} {what} the labs of {len(students)} student(s)."
        if not sys.stdin.isatty():
            print(f"{question} Not on a terminal: pass --yes to go ahead.", file=sys.stderr)
            return 2
        if input(f"{question} Continue? [y/N] ").strip().lower() not in ("y", "yes"):
            return 2
    lock = threading.Lock()

    def one(student) -> tuple[str, str, Optional[ResetReport], Optional[str]]:
        def out(line: str) -> None:
            with lock:
                print(f"[{student.stack}] {line}", file=sys.stderr, flush=True)
        try:
            lab = lab_snapshots(student.spec, student.stack, args.project_dir, out, args.snapshot)
            report = lab.take_baseline(replace=args.replace) if action == "baseline" else lab.reset()
            return student.student_id, student.stack, report, report.error
        except ApiError as exc:
            return student.student_id, student.stack, None, exc.message

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(one, students))
    rows = [["STUDENT", "STACK", "STATE", "SECONDS", "ERROR"]]
    for sid, stack, report, error in results:
        state = "done" if report is not None and report.ok else "failed"
        seconds = f"{report.total_s:.0f}" if report is not None else "-"
        rows.append([sid, stack, state, seconds, (error or "")[:120]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
    return 0 if all(r[2] is not None and r[2].ok for r in results) else 1

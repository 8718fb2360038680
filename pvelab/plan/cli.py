"""`python -m pvelab plan`: the whole lab offline, as text or JSON, and as a picture (SVG + DOT).

Exit codes: 0 planned; 2 the config (or a flag) is wrong, with the same message `pulumi up` would show;
1 the program itself failed under the mock runtime, or the picture could not be written.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pvelab.formats import show
from pvelab.stackfile import PROJECT_DIR

from .model import HostCapacity
from .stack import STACK_NAME_RE, PlanError, plan_stack, write_pictures
from .text import render_errors, render_json, render_text

DEFAULT_OUT = "plan-out"


MAX_HOST_VALUE = 1_000_000  # cores, GiB: more is a typo


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text) if len(text) <= 20 else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not 0 < value <= MAX_HOST_VALUE:
            what = "a positive whole number" if kind is int else "a positive number"
            raise argparse.ArgumentTypeError(f"expected {what} up to {MAX_HOST_VALUE}, got {show(text)}")  # argparse names the flag
        return value
    return parse


def _stack_name(text: str) -> str:
    if not STACK_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{show(text)} is not a stack name (letters, digits, '_', '.', '-'; the file is Pulumi.<stack>.yaml)")
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="see the whole lab offline: resource tree, steps per node, totals, a picture",
        description="Evaluate the real Pulumi program for a stack on Pulumi's mock runtime (no host, no Pulumi "
                    "CLI) and show what `pulumi up` would build, in which order, and about how long it takes. "
                    "Writes <out>/<stack>.svg and <out>/<stack>.dot.")
    p.add_argument("-s", "--stack", default="lab", type=_stack_name,
                   help="stack name: reads Pulumi.<stack>.yaml (default: lab)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output on stdout (default: text)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for the picture files (default: {DEFAULT_OUT}/)")
    p.add_argument("--host-cores", type=_positive(int), metavar="N",
                   help="the outer host's CPU cores, to check that the lab fits")
    p.add_argument("--host-memory-gib", type=_positive(float), metavar="N",
                   help="the outer host's RAM in GiB")
    p.add_argument("--host-disk-gib", type=_positive(float), metavar="N",
                   help="free space in GiB on the outer storage for VM disks")
    p.add_argument("--calibrate", type=Path, metavar="EVENTLOG",
                   help="learn each step kind's duration from a real run's `pulumi up --event-log EVENTLOG` file")
    # Where the stack files are (tests use a temporary folder); the program is always this checkout's.
    p.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host = None
    if any(v is not None for v in (args.host_cores, args.host_memory_gib, args.host_disk_gib)):
        host = HostCapacity(args.host_cores, args.host_memory_gib, args.host_disk_gib)
    measured = None
    if args.calibrate is not None:
        from .calibrate import CalibrationError, calibrated, learn

        try:
            measured = learn(args.calibrate)
        except CalibrationError as exc:
            print(f"plan: {exc}", file=sys.stderr)
            return 2
    try:
        if measured is not None:
            with calibrated(measured, args.calibrate.name):
                plan = plan_stack(args.stack, Path(args.project_dir), host)
        else:
            plan = plan_stack(args.stack, Path(args.project_dir), host)
    except PlanError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 1
    if not plan.ok:
        if args.format == "json":
            print(render_json(plan))
        print(render_errors(plan), file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(20, "it is a file, not a folder")
        files = write_pictures(plan, out_dir).as_dict()
    except OSError as exc:
        print(f"plan: --out {args.out}: cannot write the picture ({exc.strerror or exc})", file=sys.stderr)
        return 1
    if measured is not None:
        from .calibrate import calibration_json, render_calibration

        if args.format == "json":
            print(json.dumps(json.loads(render_json(plan, files)) | {"calibration": calibration_json(measured)}))
            return 0
        print(render_calibration(measured, str(args.calibrate)))
    print(render_json(plan, files) if args.format == "json" else render_text(plan, files), end="" if
          args.format == "text" else "\n")
    return 0

"""Commands `baseline` and `reset` (registered by pvelab.cli): see pvelab/ops/reset.py for how and why."""
from __future__ import annotations

import sys

from ..stackfile import load_stack
from .api import ApiError
from .cli import _fail, _nested, _outer, _retry, _stack, seconds
from .connect import nested_client, outer_client
from .reset import DEFAULT_SNAPSHOT, LabSnapshots, ResetTiming, render_json, render_text


def _timing(p) -> None:
    d = ResetTiming()
    p.add_argument("--snapshot", default=DEFAULT_SNAPSHOT, metavar="NAME",
                   help=f"the snapshot's name on every node VM (default {DEFAULT_SNAPSHOT})")
    p.add_argument("--poll", type=seconds, default=d.poll_s, metavar="S", help=f"poll interval (default {d.poll_s:g})")
    p.add_argument("--task-timeout", type=seconds, default=d.task_deadline_s, metavar="S",
                   help=f"deadline of one outer task (default {d.task_deadline_s:g})")
    p.add_argument("--healthy-timeout", type=seconds, default=d.healthy_deadline_s, metavar="S",
                   help=f"deadline for the lab to prove itself healthy after the start (default {d.healthy_deadline_s:g})")
    p.add_argument("--yes", action="store_true", help="do not ask first (needed when not run on a terminal)")


def _lab_args(p) -> None:
    """What both commands take: the stack, both APIs and the timing."""
    _stack(p)
    _outer(p)
    _nested(p)
    _timing(p)


def register(sub) -> None:
    p = sub.add_parser("baseline", help="snapshot every nested node VM at one consistent point (all shut down)",
                       description="Shut every nested node down cleanly, snapshot each VM's disks while all are off, "
                                   "start them again and prove the lab healthy. `reset` returns to it.")
    _lab_args(p)
    p.add_argument("--replace", action="store_true", help="take the baseline again when one exists")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("reset", help="roll the lab back to its baseline and prove it healthy (quorum, Ceph, HA)",
                       description="Hard-stop every nested node, roll each VM back to the baseline snapshot, start "
                                   "them and wait for quorum, every member online, Ceph HEALTH_OK and HA started.")
    _lab_args(p)
    p.set_defaults(func=cmd_reset)


def confirm(action: str, stack: str, spec, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    vmids = ", ".join(str(p.vmid) for p in spec.node_plans)
    what = {"baseline": "shuts down every nested node, snapshots it and starts it again",
            "reset": "hard-stops every nested node and throws away everything done since the baseline"}[action]
    question = f"{action} {what} (stack '{stack}', outer VMs {vmids} on {spec.outer.node})."
    if not sys.stdin.isatty():
        print(f"{question} Not on a terminal: pass --yes to go ahead.", file=sys.stderr)
        return False
    return input(f"{question} Continue? [y/N] ").strip().lower() in ("y", "yes")


def _run(args, action: str) -> int:
    spec = load_stack(args.stack).spec()
    if not confirm(action, args.stack, spec, args.yes):
        return 2
    timing = ResetTiming(poll_s=args.poll, task_deadline_s=args.task_timeout, healthy_deadline_s=args.healthy_timeout)
    try:
        outer = outer_client(spec, args.outer_url, args.outer_ca, _retry(args))
        nested = nested_client(spec, args.nested_url, args.nested_ca, _retry(args))
    except ApiError as exc:
        return _fail(exc.message)
    progress = (lambda line: print(line, file=sys.stderr)) if args.format == "json" else print
    lab = LabSnapshots(spec, args.stack, outer, nested, timing, out=progress, snapshot=args.snapshot)
    report = lab.take_baseline(replace=args.replace) if action == "baseline" else lab.reset()
    print(render_json(report) if args.format == "json" else render_text(report))
    if report.still_stopped:
        return 3
    return 0 if report.ok else 1


def cmd_baseline(args) -> int:
    return _run(args, "baseline")


def cmd_reset(args) -> int:
    return _run(args, "reset")

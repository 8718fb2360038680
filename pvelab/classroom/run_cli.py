"""`classroom up ROSTER` and `classroom down ROSTER`: every student's stack, a bounded number at a time.

Progress goes to stderr, one line per state change per student; the summary table (or `--json`) goes to
stdout; each stack's full Pulumi output goes to `<log-dir>/<stack>-<action>.log`. The outer API token
comes from PVE_LAB_OUTER_API_TOKEN, never from the command line (which `ps` shows).
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO

from ..spec import CONFIG_NAMESPACE, SpecError, check_secrets
from ..stackfile import PROJECT_DIR, SECRET_ENV, secret_from_env
from .runner import ClassRun, ProgressEvent, StackBackend, StackJob, run_classroom, select_jobs

TOKEN_KEY = f"{CONFIG_NAMESPACE}:outerApiToken"
DEFAULT_PARALLEL = 4
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 10.0


def add_run_commands(classroom_subparsers: Any) -> None:
    """Add `up` and `down` to the `classroom` command's subparsers."""
    for action, text in (("up", "bring every student's lab up (the class images stack first)"),
                         ("down", "destroy every student's lab and remove the stacks (the class images last)")):
        p = classroom_subparsers.add_parser(action, help=text, description=text)
        p.add_argument("roster", metavar="ROSTER", help="the roster (YAML, or CSV with a YAML '#' header)")
        p.add_argument("--parallel", type=_positive_int("--parallel", 1), default=DEFAULT_PARALLEL, metavar="N",
                       help=f"stacks at the same time (default {DEFAULT_PARALLEL})")
        p.add_argument("--retries", type=_positive_int("--retries", 0), default=DEFAULT_RETRIES, metavar="N",
                       help=f"extra attempts after a concurrent-update error (default {DEFAULT_RETRIES}); "
                            "other errors are never retried")
        p.add_argument("--backoff", type=_positive_float("--backoff"), default=DEFAULT_BACKOFF_S, metavar="SECONDS",
                       help=f"wait before a retry, times the attempt number (default {DEFAULT_BACKOFF_S:g})")
        p.add_argument("--stack-deadline", type=_positive_float("--stack-deadline"), default=None, metavar="SECONDS",
                       help="no new attempt of a stack starts after this long (a running one is not killed)")
        p.add_argument("--only", nargs="+", metavar="STUDENT_ID",
                       help="only these students (put ROSTER before --only; commas also separate ids)")
        p.add_argument("--project-dir", type=Path, default=PROJECT_DIR,
                       help="where the students' Pulumi.<stack>.yaml files are (as for `classroom render`)")
        p.add_argument("--log-dir", type=Path, default=Path("classroom-logs"),
                       help="where each stack's Pulumi output is written (default ./classroom-logs)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
        if action == "up":
            p.add_argument("--no-preflight", action="store_true",
                           help="skip the class preflight against the outer host (run `classroom preflight` "
                                "yourself); by default a failed check stops `up` before any stack starts")
            p.add_argument("--outer-url", metavar="URL", help="outer host API URL for the class preflight")
            p.add_argument("--outer-ca", metavar="FILE", help="CA certificate for the class preflight")
        if action == "down":
            p.add_argument("--yes", action="store_true",
                           help="destroy without asking (required when there is no terminal to ask on)")
        p.set_defaults(func=_command(action))


def _positive_int(flag: str, minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: '{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag}: {value} (allowed: {minimum} or more)")
        return value
    return parse


def _positive_float(flag: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: '{text}' is not a number of seconds") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{flag}: {value:g} (allowed: 0 or more)")
        return value
    return parse


def _command(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_command(action, args)
    return run


# ---------------------------------------------------------------- plan -> jobs


class AllocationChanged(Exception):
    pass


def _allocation_text(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def load_plan(roster_path: Path) -> Any:
    """Roster + its allocation file -> ClassPlan, exactly as `classroom plan/render` see it. Read under the
    allocation file's lock (a `classroom render` writing it meanwhile is waited for); the text read is kept on
    the plan, so that `record_allocation` can tell whether someone changed the file since."""
    from ..atomicfile import locked
    from .allocate import allocation_path, plan_class

    path = allocation_path(roster_path)
    with locked(path):
        seen = _allocation_text(path)
        plan = plan_class(roster_path)
    try:
        plan.allocation_seen = seen
    except AttributeError:  # a test double without attributes
        pass
    return plan


def record_allocation(plan: Any, roster_path: Path) -> Optional[Path]:
    """Write the allocation file when `up` is about to create stacks it does not list yet (keeps slots stable).
    Under the file's lock, and only if the file is still what this run read: a `classroom render` or another
    `up` that wrote it meanwhile is never overwritten with older slots (AllocationChanged instead)."""
    allocation = getattr(plan, "allocation", None)
    if allocation is None:
        return None
    from ..atomicfile import locked
    from .allocate import allocation_path, save_allocation

    path = allocation_path(roster_path)
    with locked(path):
        current = _allocation_text(path)
        if current == allocation.to_yaml():
            return None
        seen = getattr(plan, "allocation_seen", current)
        if current != seen:
            raise AllocationChanged(
                f"{path} changed while this run was starting (another `classroom render` or `up`?): nothing "
                f"started; run `classroom up` again, it reads the new allocation")
        return save_allocation(plan, path)


def student_jobs(plan: Any, api_token: Optional[str]) -> list[StackJob]:
    secrets = {TOKEN_KEY: api_token} if api_token else {}
    return [StackJob(stack=s.stack, student_id=s.student_id, config=dict(s.config()), secrets=secrets)
            for s in plan.students]


def retired_jobs(plan: Any) -> list[StackJob]:
    """Destroy jobs for the students the allocation file lists as retired (their labs outlive the roster line)."""
    if getattr(plan, "allocation", None) is None or getattr(plan, "roster", None) is None:
        return []
    from .lifecycle import retired_stacks

    return [StackJob(stack=r.stack, student_id=r.student_id) for r in retired_stacks(plan)]


def previous_nodes(roster_path: Path) -> dict[str, str]:
    """Each allocated student's outer node as the allocation file records it (before this run writes it)."""
    from .allocate import allocation_path, load_allocation

    try:
        allocation = load_allocation(allocation_path(roster_path))
    except Exception:  # an unreadable file was already reported by load_plan
        return {}
    return {sid: slot.node for sid, slot in (allocation.students if allocation else {}).items()}


def foreign_users_for(plan: Any, backend: Any, existing: dict) -> list[str]:
    """Students whose stack still manages an account the class does not own (see lifecycle.py)."""
    from .lifecycle import foreign_user_in_state, stack_short_name
    from .realms import stack_owns_user

    state_resources = getattr(backend, "state_resources", None)
    if state_resources is None:
        return []
    counts = {stack_short_name(k): v for k, v in existing.items()}
    lines = []
    for st in plan.students:
        student = st.lab.get("student") or {}
        user, pool = student.get("user", ""), student.get("pool", "")
        if stack_owns_user(user, pool) or not counts.get(st.stack):
            continue
        line = foreign_user_in_state(st.student_id, st.stack, user, state_resources(st.stack))
        if line:
            lines.append(line)
    return lines


def refused_moves_for(plan: Any, roster_path: Path, backend: Any) -> list[str]:
    """Students a pin would move off their recorded node while their lab exists (see lifecycle.py)."""
    from .lifecycle import moves, refused_moves

    found = moves(plan, previous_nodes(roster_path))
    existing_stacks = getattr(backend, "existing_stacks", None)
    if existing_stacks is None:
        return []
    existing = existing_stacks()
    return refused_moves(found, existing) + foreign_users_for(plan, backend, existing)


def class_name(plan: Any, roster_path: Path) -> str:
    for attr in ("class_id", "class_name", "name", "id"):
        value = getattr(plan, attr, None)
        if isinstance(value, str) and value:
            return value
    roster = getattr(plan, "roster", None)
    for attr in ("class_id", "class_name", "name", "id"):
        value = getattr(roster, attr, None)
        if isinstance(value, str) and value:
            return value
    return roster_path.stem


def images_stack_name(plan: Any, roster_path: Path) -> str:
    return f"{class_name(plan, roster_path)}-images"


POLICY_PACK_DIR = PROJECT_DIR / "policy"


def check_guardrails(plan: Any, roster_path: Path) -> tuple[list[str], Optional[Path]]:
    """The class checks `classroom render` runs (the policy rules over every student's lab), and the policy-pack
    config file every `up` passes to the engine (written next to the roster, as `render` does).
    Returns (problems, config path); the config is written only when there is no problem."""
    from .guardrails import plan_violations, policy_config_path, write_policy_config

    violations = plan_violations(plan)
    problems = [f"{sid}: {v}" for sid, vs in violations.items() for v in vs]
    if problems:
        return problems, None
    return [], write_policy_config(plan, policy_config_path(roster_path))


def class_preflight_failures(plan: Any, args: argparse.Namespace) -> list[str]:
    """The class preflight's failed checks, one line each ("node: check: detail (fix)"); [] when all pass."""
    from .cli import class_preflight

    reports, _url = class_preflight(plan, getattr(args, "outer_url", None), getattr(args, "outer_ca", None))
    return [f"{r.node}: {c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
            for r in reports for c in r.checks if c.status == "fail"]


def make_backends(plan: Any, jobs: Sequence[StackJob], project_dir: Path = PROJECT_DIR,
                  policy_config: Optional[Path] = None) -> tuple[StackBackend, Optional[StackBackend]]:
    """The real backends (Automation API). Raises PulumiCliMissing before anything starts. Tests replace this.

    With `policy_config`, every student's `up` runs the class policy pack (`policy/`) with that config."""
    from .automation import CLASS_WORK_DIR_NAME, AutomationBackend, ClassImagesBackend, class_outer_endpoint

    backend = AutomationBackend(work_dir=project_dir, policy_pack=POLICY_PACK_DIR if policy_config else None,
                                policy_config=policy_config)
    downloads = list(getattr(plan, "image_downloads", []) or [])
    if not downloads:
        return backend, None
    endpoint = getattr(plan, "outer_endpoint", None)
    insecure = bool(getattr(plan, "outer_insecure", False))
    if not endpoint:
        endpoint, insecure = class_outer_endpoint(jobs)
    return backend, ClassImagesBackend(downloads, endpoint, insecure, work_dir=Path(project_dir) / CLASS_WORK_DIR_NAME,
                                       template_builds=getattr(plan, "template_builds", []) or [],
                                       cache_site=getattr(plan, "cache_site", None))


# ---------------------------------------------------------------- output


class StackLogs:
    """One log file per stack and action; each Pulumi output line is appended as it comes."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.files: dict[str, TextIO] = {}
        self.lock = threading.Lock()

    def __call__(self, job: StackJob, action: str) -> Callable[[str], None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{job.stack}-{action}.log"
        with self.lock:
            handle = self.files.get(str(path)) or open(path, "a", encoding="utf-8", buffering=1)
            self.files[str(path)] = handle

        def write(line: str) -> None:
            handle.write(line + "\n")
        return write

    def close(self) -> None:
        with self.lock:
            for handle in self.files.values():
                handle.close()
            self.files.clear()


def print_progress(event: ProgressEvent, stream: Optional[TextIO] = None) -> None:
    print(event.line(), file=stream or sys.stderr, flush=True)


def confirm_down(jobs: Sequence[StackJob], with_images: bool, assume_yes: bool,
                 stdin: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> Optional[str]:
    """None when allowed to destroy, else the message saying why not."""
    if assume_yes:
        return None
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    names = ", ".join(j.student_id for j in jobs[:8]) + (", ..." if len(jobs) > 8 else "")
    what = f"{len(jobs)} student lab(s) ({names})" + (" and the class images" if with_images else "")
    if not (hasattr(stdin, "isatty") and stdin.isatty()):
        return f"classroom down: refusing to destroy {what} without --yes (no terminal to ask on)"
    print(f"Destroy {what}? Type 'yes' to go on: ", end="", file=stderr, flush=True)
    answer = stdin.readline().strip().lower()
    return None if answer == "yes" else "classroom down: not confirmed; nothing destroyed"


def checks_before_up(plan: Any, roster_path: Path, args: argparse.Namespace, api_token: Optional[str]
                     ) -> tuple[Optional[str], Optional[Path]]:
    """What `up` checks before it touches any stack: the token, the policy rules over the whole class, the class
    preflight against the host. Returns (refusal message or None, the policy-pack config file)."""
    env = SECRET_ENV["outerApiToken"]
    if not api_token:
        return (f"{TOKEN_KEY}: missing; export {env}='user@realm!tokenid=<uuid>' "
                "(read from the environment, never from the command line)"), None
    problems = check_secrets(api_token, None, None)
    if problems:
        return "\n".join(f"{p} (from {env})" for p in problems), None
    refused, policy_config = check_guardrails(plan, roster_path)
    if refused:
        return ("classroom up: the policy rules refuse this class (nothing started):\n"
                + "\n".join(f"- {p}" for p in refused)), None
    if not getattr(args, "no_preflight", False):
        try:
            failures = class_preflight_failures(plan, args)
        except Exception as exc:  # unreachable host, missing token...: one line, nothing started
            return (f"classroom up: the class preflight could not run: {getattr(exc, 'message', None) or exc} "
                    "(`--no-preflight` skips it)"), None
        if failures:
            return ("classroom up: the class preflight failed (nothing started; details: `classroom preflight "
                    "ROSTER`):\n" + "\n".join(f"- {f}" for f in failures)), None
    return None, policy_config


def run_command(action: str, args: argparse.Namespace, stdout: Optional[TextIO] = None,
                stderr: Optional[TextIO] = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr

    def fail(message: str) -> int:
        print(message, file=stderr)
        return 2

    roster_path = Path(args.roster)
    try:
        plan = load_plan(roster_path)
    except SpecError as exc:
        return fail(exc.render())
    api_token = secret_from_env("outerApiToken") if action == "up" else None
    try:
        only = [s for value in args.only or [] for s in value.split(",") if s] or None
        everyone = student_jobs(plan, api_token) + (retired_jobs(plan) if action == "down" else [])
        jobs = select_jobs(everyone, only)
    except ValueError as exc:
        return fail(str(exc))
    with_images = bool(getattr(plan, "image_downloads", None))
    policy_config = None
    if action == "up":
        refusal, policy_config = checks_before_up(plan, roster_path, args, api_token)
        if refusal:
            return fail(refusal)
    try:
        backend, images_backend = make_backends(plan, everyone, project_dir=args.project_dir,
                                                policy_config=policy_config)
    except Exception as exc:  # PulumiCliMissing, an ambiguous endpoint or image list: one clear line
        return fail(f"classroom {action}: {exc}")
    images = None
    if images_backend is not None:
        from .automation import images_job

        images = images_job(images_stack_name(plan, roster_path), api_token)
    if action == "up":
        try:
            moved = refused_moves_for(plan, roster_path, backend)
        except Exception as exc:  # listing the stacks failed: do not guess
            return fail(f"classroom up: could not read the existing stacks (moved students, accounts): {exc}")
        if moved:
            return fail("classroom up: refusing to start (nothing started):\n" + "\n".join(f"- {m}" for m in moved))
    if action == "down":
        retired = [j.student_id for j in jobs if j.student_id not in {s.student_id for s in plan.students}]
        if retired:
            print(f"also destroying the labs of {len(retired)} retired student(s) (in the allocation file, no longer "
                  f"in the roster): {', '.join(retired)}", file=stderr)
        refusal = confirm_down(jobs, with_images and not args.only, getattr(args, "yes", False), stderr=stderr)
        if refusal:
            return fail(refusal)
    if action == "up":
        try:
            recorded = record_allocation(plan, roster_path)
        except AllocationChanged as exc:
            return fail(f"classroom up: {exc}")
        if recorded:
            print(f"allocation recorded in {recorded} (commit it: it keeps every student's slot)", file=stderr)
    logs = StackLogs(args.log_dir)
    try:
        run = run_classroom(
            action, jobs, backend, images_job=images, images_backend=images_backend,
            keep_images="kept: --only was given; the other students may use the images" if args.only else None,
            parallel=args.parallel, retries=args.retries, backoff_s=args.backoff, deadline_s=args.stack_deadline,
            progress=lambda ev: print_progress(ev, stderr), output_for=logs)
    finally:
        logs.close()
    print_summary(run, args.json, stdout)
    if run.failed:
        print(f"Pulumi output of each stack: {args.log_dir}/<stack>-{action}.log", file=stderr)
    return run.exit_code


def print_summary(run: ClassRun, as_json: bool, stream: TextIO) -> None:
    print(run.json_text() if as_json else run.table(), file=stream)

"""Drive many Pulumi stacks at once for a class: bounded parallelism, isolated failures, a summary table.

Pure orchestration: the stacks themselves are reached through a `StackBackend` (the real one in
`automation.py` uses the Pulumi Automation API; tests use a fake). Nothing here imports Pulumi.

Rules:
- at most `parallel` stacks run at the same time (worker threads: the Automation API's `up()` blocks
  while the `pulumi` CLI works, so threads are enough);
- a stack that fails, or whose backend raises anything, is reported and never stops the others;
- only a concurrent-update error (someone else is updating that stack) is retried, at most `retries`
  more times, waiting `backoff_s * attempt` seconds between attempts;
- Ctrl-C stops scheduling: stacks not started yet are `skipped`, running ones finish and are reported;
- on `up` the class-images stack goes first (students use its files), then the backend's `prepare` (the
  provider plugins, installed once: parallel installs interfere, pulumi/pulumi#22784), then the students;
  on `down` the plugins are installed the same way first, and the images go last, only when every student's
  stack is gone.
"""
from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Optional, Protocol, Sequence

Action = Literal["up", "down"]
ACTIONS = ("up", "down")
DONE_STATE = {"up": "up", "down": "destroyed"}

# What the Automation API raises when another update holds the stack's lock. Matched by class name (so
# this module needs no Pulumi import) and by the CLI texts the Automation API itself looks for.
CONCURRENT_UPDATE_CLASS = "ConcurrentUpdateError"
CONCURRENT_UPDATE_TEXTS = (
    "[409] Conflict: Another update is currently in progress",
    "the stack is currently locked by",
)


@dataclass(frozen=True)
class StackJob:
    stack: str
    student_id: str
    config: dict[str, str] = field(default_factory=dict)  # "ns:key" -> value (JSON text for objects)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # set as Pulumi secrets; never printed


@dataclass
class StackResult:
    student_id: str
    stack: str
    state: str  # "up" | "destroyed" | "failed" | "skipped"
    duration_s: float
    error: Optional[str]  # one line, or None
    attempts: int
    note: Optional[str] = None  # e.g. "no such stack; nothing to destroy"

    @property
    def ok(self) -> bool:
        return self.state in ("up", "destroyed")


@dataclass(frozen=True)
class ProgressEvent:
    index: int  # 1-based position of the job in the class
    total: int
    student_id: str
    stack: str
    action: str
    state: str  # "running" | "retrying" | "up" | "destroyed" | "failed" | "skipped"
    attempt: int
    detail: Optional[str] = None  # the one-line error, the retry wait, or a note

    def line(self) -> str:
        """`[ 3/40] s03  up  running (attempt 2)`"""
        width = len(str(self.total))
        text = f"[{self.index:>{width}}/{self.total}] {self.student_id}  {self.action}  {self.state}"
        if self.state == "running" and self.attempt > 1:
            text += f" (attempt {self.attempt})"
        if self.detail:
            text += f": {self.detail}"
        return text


class StackOutcome(Exception):
    """A backend may raise this from `destroy` to say the stack did not exist (not an error)."""


class StackNotFound(StackOutcome):
    pass


class StackBackend(Protocol):
    def up(self, job: StackJob, on_output: Callable[[str], None]) -> None:
        """Bring the stack up; return when done, raise on failure."""

    def destroy(self, job: StackJob, on_output: Callable[[str], None], remove_stack: bool = True) -> None:
        """Destroy the stack's resources, then remove the stack; raise `StackNotFound` if there is none."""


ProgressFn = Callable[[ProgressEvent], None]
OutputFactory = Callable[[StackJob, str], Callable[[str], None]]


def is_concurrent_update(exc: BaseException) -> bool:
    if any(cls.__name__ == CONCURRENT_UPDATE_CLASS for cls in type(exc).__mro__):
        return True
    text = str(exc)
    return any(marker in text for marker in CONCURRENT_UPDATE_TEXTS)


_ERROR_LINE = re.compile(r"^\s*error:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_GENERIC = {"update failed", "destroy failed", "preview failed"}
ERROR_MAX = 300


def one_line_error(exc: BaseException, limit: int = ERROR_MAX) -> str:
    """The most telling line of an error: the first specific `error:` line of the CLI's output, else the last
    non-empty line, else the exception's type. The Automation API's errors carry the whole CLI output."""
    text = str(exc)
    specific = [m.group(1).strip() for m in _ERROR_LINE.finditer(text)]
    specific = [s for s in specific if s.rstrip(".").lower() not in _GENERIC] or specific
    if specific:
        line = specific[0]
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        line = lines[-1] if lines else ""
    if is_concurrent_update(exc) and "concurrent" not in line.lower():
        line = f"concurrent update: {line}" if line else "concurrent update"
    if not line:
        line = type(exc).__name__
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _discard(_line: str) -> None:
    pass


@dataclass
class ClassRun:
    action: str
    results: list[StackResult]  # in execution order: images first on up, last on down
    interrupted: bool = False

    @property
    def failed(self) -> list[StackResult]:
        return [r for r in self.results if r.state == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every stack reached its state; 1 when any failed or was skipped; 130 on Ctrl-C."""
        if self.interrupted:
            return 130
        bad = [r for r in self.results if not r.ok and not (r.state == "skipped" and r.note and not r.error)]
        return 1 if bad else 0

    def table(self) -> str:
        return format_table(self.results)

    def to_json(self) -> dict:
        return {
            "action": self.action,
            "interrupted": self.interrupted,
            "exitCode": self.exit_code,
            "counts": {state: sum(1 for r in self.results if r.state == state)
                       for state in ("up", "destroyed", "failed", "skipped")},
            "stacks": [
                {"student": r.student_id, "stack": r.stack, "state": r.state, "durationS": round(r.duration_s, 1),
                 "error": r.error, "attempts": r.attempts, "note": r.note}
                for r in self.results
            ],
        }

    def json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


TABLE_ERROR_WIDTH = 100


def format_table(results: Sequence[StackResult]) -> str:
    """student | stack | state | duration | error (one line, shortened), plus a count line."""
    head = ("student", "stack", "state", "duration", "error")
    rows = []
    for r in results:
        error = r.error or (r.note if r.state == "skipped" else "") or ""
        error = " ".join(error.split())
        if len(error) > TABLE_ERROR_WIDTH:
            error = error[: TABLE_ERROR_WIDTH - 3] + "..."
        rows.append((r.student_id, r.stack, r.state, format_duration(r.duration_s), error))
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]

    def fmt(row) -> str:
        return "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    lines = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(row) for row in rows]
    counts = {}
    for r in results:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) or "no stacks")
    return "\n".join(lines)


class _Reporter:
    """Serializes progress callbacks from the worker threads so lines never interleave."""

    def __init__(self, progress: Optional[ProgressFn], action: str, total: int):
        self.progress, self.action, self.total = progress, action, total
        self.lock = threading.Lock()

    def __call__(self, index: int, job: StackJob, state: str, attempt: int, detail: Optional[str] = None) -> None:
        if self.progress is None:
            return
        event = ProgressEvent(index=index, total=self.total, student_id=job.student_id, stack=job.stack,
                              action=self.action, state=state, attempt=attempt, detail=detail)
        with self.lock:
            try:
                self.progress(event)
            except Exception:  # a broken progress printer must not break the class
                pass


def _run_one(action: str, index: int, job: StackJob, backend: StackBackend, *, retries: int, backoff_s: float,
             deadline_s: Optional[float], stop: threading.Event, report: _Reporter,
             output_for: OutputFactory) -> StackResult:
    """One stack, with retries on concurrent updates only. Never raises."""
    start = time.monotonic()
    attempt = 0
    on_output = _discard
    try:
        on_output = output_for(job, action)
    except Exception:
        pass
    while True:
        attempt += 1
        report(index, job, "running", attempt)
        try:
            if action == "up":
                backend.up(job, on_output)
            else:
                backend.destroy(job, on_output, remove_stack=True)
        except StackNotFound as exc:
            note = str(exc) or "no such stack; nothing to destroy"
            report(index, job, DONE_STATE[action], attempt, note)
            return StackResult(job.student_id, job.stack, DONE_STATE[action], time.monotonic() - start, None,
                               attempt, note=note)
        except BaseException as exc:  # noqa: BLE001 - one student's failure, whatever it is, stays theirs
            if isinstance(exc, KeyboardInterrupt):
                stop.set()
            error = one_line_error(exc)
            wait = backoff_s * attempt
            elapsed = time.monotonic() - start
            retryable = is_concurrent_update(exc) and attempt <= retries
            if retryable and deadline_s is not None and elapsed + wait >= deadline_s:
                error += f" (gave up: the {format_duration(deadline_s)} deadline for this stack would pass)"
                retryable = False
            if retryable and not stop.is_set():
                report(index, job, "retrying", attempt, f"{error}; attempt {attempt + 1} in {wait:g}s")
                if not stop.wait(wait):
                    continue
                error += " (interrupted before the next attempt)"
            elif retryable:
                error += " (interrupted before the next attempt)"
            report(index, job, "failed", attempt, error)
            return StackResult(job.student_id, job.stack, "failed", time.monotonic() - start, error, attempt)
        else:
            report(index, job, DONE_STATE[action], attempt)
            return StackResult(job.student_id, job.stack, DONE_STATE[action], time.monotonic() - start, None,
                               attempt)


def _skipped(job: StackJob, reason: str) -> StackResult:
    return StackResult(job.student_id, job.stack, "skipped", 0.0, reason, 0)


def run_class(action: str, jobs: Sequence[StackJob], backend: StackBackend, *, parallel: int = 4,
              retries: int = 2, backoff_s: float = 10.0, deadline_s: Optional[float] = None,
              progress: Optional[ProgressFn] = None, output_for: Optional[OutputFactory] = None,
              stop: Optional[threading.Event] = None, poll_s: float = 0.2) -> ClassRun:
    """Run `action` ("up" | "down") on every job, at most `parallel` at a time. Results in job order.

    `deadline_s` bounds retries per stack: no new attempt starts when it would begin after the deadline
    (a running `pulumi up` is never killed half-way). `stop` is set by Ctrl-C (or by the caller) to stop
    scheduling. Ctrl-C while waiting: the stacks already running are waited for and reported.
    """
    if action not in ACTIONS:
        raise ValueError(f"action: '{action}' (allowed: {', '.join(ACTIONS)})")
    if parallel < 1:
        raise ValueError(f"--parallel: {parallel} (allowed: 1 or more)")
    if retries < 0:
        raise ValueError(f"--retries: {retries} (allowed: 0 or more)")
    seen: set[str] = set()
    for job in jobs:
        if job.stack in seen:
            raise ValueError(f"stack '{job.stack}' appears twice in the class")
        seen.add(job.stack)
    stop = stop or threading.Event()
    output_for = output_for or (lambda job, act: _discard)
    report = _Reporter(progress, action, len(jobs))
    todo: "queue.Queue[int]" = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    results: list[Optional[StackResult]] = [None] * len(jobs)
    finished: "queue.Queue[int]" = queue.Queue()

    def worker() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            results[i] = _run_one(action, i + 1, jobs[i], backend, retries=retries, backoff_s=backoff_s,
                                  deadline_s=deadline_s, stop=stop, report=report, output_for=output_for)
            finished.put(i)

    # Daemon threads: after a second Ctrl-C the process may exit without waiting for a hung stack.
    workers = [threading.Thread(target=worker, name=f"classroom-{n}", daemon=True)
               for n in range(min(parallel, len(jobs)))]
    interrupted = False
    try:
        for t in workers:  # inside the try: a Ctrl-C may come while the first stacks already run
            t.start()
        while any(t.is_alive() for t in workers):
            try:
                finished.get(timeout=poll_s)
            except queue.Empty:
                pass
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        try:
            for t in workers:  # let running stacks finish (the CLI got the same Ctrl-C and cancels cleanly)
                while t.ident is not None and t.is_alive():
                    t.join(poll_s)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting; unfinished stacks are reported below
    if stop.is_set():
        interrupted = True
    final: list[StackResult] = []
    for i, job in enumerate(jobs):
        result = results[i]
        if result is None:
            running = any(t.is_alive() for t in workers) and not _queued(todo, i)
            reason = ("interrupted while running; the stack may still be locked (`pulumi cancel`)"
                      if running else "not started: interrupted")
            result = _skipped(job, reason)
            report(i + 1, job, "skipped", 0, reason)
        final.append(result)
    return ClassRun(action=action, results=final, interrupted=interrupted)


def _queued(todo: "queue.Queue[int]", index: int) -> bool:
    with todo.mutex:
        return index in todo.queue


# ---------------------------------------------------------------- the whole class, with the images stack


def run_classroom(action: str, jobs: Sequence[StackJob], backend: StackBackend, *,
                  images_job: Optional[StackJob] = None, images_backend: Optional[StackBackend] = None,
                  keep_images: Optional[str] = None, **options) -> ClassRun:
    """`up`: the class-images stack first, then every student; `down`: every student, then the images.

    The images are destroyed only when every student's stack is gone (a student still holding a VM made
    from the image would otherwise lose it). `keep_images` names another reason to keep them (e.g. only
    some students were selected).
    """
    progress = options.get("progress")
    single = {k: v for k, v in options.items() if k != "parallel"}
    if action == "up":
        before: list[StackResult] = []
        if images_job is not None:
            first = run_class("up", [images_job], images_backend or backend, parallel=1, **single)
            before.append(first.results[0])
            if not first.results[0].ok or first.interrupted:
                reason = (f"not started: the class images stack '{images_job.stack}' failed"
                          if not first.results[0].ok else "not started: interrupted")
                return _all_skipped(jobs, before, reason, progress, first.interrupted)
        if jobs:
            prepared = prepare_backend(backend, options.get("output_for"))
            if prepared is not None:
                before.append(prepared)
                return _all_skipped(jobs, before, "not started: the provider plugins could not be installed",
                                    progress, False)
        students = run_class("up", jobs, backend, **options)
        return ClassRun("up", [*before, *students.results], interrupted=students.interrupted)
    if jobs:  # destroying needs the providers too: install them once here as well, not in every stack at once
        prepared = prepare_backend(backend, options.get("output_for"))
        if prepared is not None:
            skipped = [_skipped(j, "not started: the provider plugins could not be installed") for j in jobs]
            kept = [] if images_job is None else [_skipped(images_job, "kept: no student stack was destroyed")]
            return ClassRun("down", [prepared, *skipped, *kept])
    if images_job is None:
        return run_class(action, jobs, backend, **options)
    images_backend = images_backend or backend

    students = run_class("down", jobs, backend, **options)
    left = [r for r in students.results if r.state != "destroyed"]
    reason = keep_images
    if left:
        reason = (f"kept: {len(left)} student stack(s) not destroyed "
                  f"({', '.join(r.student_id for r in left[:5])}{', ...' if len(left) > 5 else ''}) may still use the images")
    elif students.interrupted:
        reason = "kept: interrupted"
    if reason:
        kept = StackResult(images_job.student_id, images_job.stack, "skipped", 0.0, None, 0, note=reason)
        if progress:
            progress(ProgressEvent(1, 1, images_job.student_id, images_job.stack, "down", "skipped", 0, reason))
        return ClassRun("down", [*students.results, kept], interrupted=students.interrupted)
    last = run_class("down", [images_job], images_backend, parallel=1, **single)
    return ClassRun("down", [*students.results, *last.results], interrupted=last.interrupted)


PLUGINS_STACK = "(provider plugins)"


def prepare_backend(backend: StackBackend, output_for: Optional[OutputFactory] = None) -> Optional[StackResult]:
    """Run the backend's one-time `prepare` (installing provider plugins) before a wave; None when it went well
    (or there is none), else the failed row for the summary."""
    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        return None
    job = StackJob(stack=PLUGINS_STACK, student_id="(class)")
    on_output = _discard
    if output_for is not None:
        try:
            on_output = output_for(StackJob(stack="class-plugins", student_id="(class)"), "up")
        except Exception:
            pass
    start = time.monotonic()
    try:
        prepare(on_output)
    except Exception as exc:  # noqa: BLE001 - reported as the class's own failed row
        return StackResult(job.student_id, job.stack, "failed", time.monotonic() - start, one_line_error(exc), 1)
    return None


def _all_skipped(jobs: Sequence[StackJob], before: list[StackResult], reason: str, progress: Optional[ProgressFn],
                 interrupted: bool) -> ClassRun:
    skipped = [_skipped(j, reason) for j in jobs]
    if progress:
        for n, j in enumerate(jobs, 1):
            progress(ProgressEvent(n, len(jobs), j.student_id, j.stack, "up", "skipped", 0, reason))
    return ClassRun("up", [*before, *skipped], interrupted=interrupted)


def select_jobs(jobs: Sequence[StackJob], only: Optional[Iterable[str]]) -> list[StackJob]:
    """The jobs of the students named in `only` (all when None); unknown ids are an error naming --only."""
    if not only:
        return list(jobs)
    wanted = list(dict.fromkeys(only))
    known = {j.student_id for j in jobs}
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ValueError(f"--only: unknown student id(s) {', '.join(unknown)} "
                         f"(the roster has: {', '.join(sorted(known)) or 'none'})")
    return [j for j in jobs if j.student_id in set(wanted)]


__all__ = [
    "ACTIONS", "ClassRun", "ProgressEvent", "StackBackend", "StackJob", "StackNotFound", "StackResult",
    "format_table", "is_concurrent_update", "one_line_error", "run_class", "run_classroom", "select_jobs",
]

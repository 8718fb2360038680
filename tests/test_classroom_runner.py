"""The classroom runner against a fake stack backend: parallel limit, isolated failures, retries only on
concurrent updates, the summary, teardown past failures, and the class-images stack's place in the order."""
from __future__ import annotations

import _thread
import json
import signal
import threading
from collections import defaultdict, deque

import pytest

from pvelab.classroom.runner import (
    StackJob, StackNotFound, StackResult, format_table, is_concurrent_update, one_line_error, run_class,
    run_classroom, select_jobs,
)

WAIT = 5.0  # upper bound for any condition wait; a healthy run never gets near it
TOKEN = "root@pam!pvelab=00000000-1111-2222-3333-444444444444"


class ConcurrentUpdateError(Exception):
    """Named like pulumi.automation's: the runner recognises it by class name."""


PULUMI_FAILURE = (
    "\n code: 255\n stdout: Updating (s02):\n  +  proxmoxve:index:VmLegacy lab-pve1 creating (0s)\n"
    "Diagnostics:\n  proxmoxve:index:VmLegacy (lab-pve1):\n"
    "    error: creating VM 9111: 500 storage 'local-lvm' does not exist\n\n"
    "  pulumi:pulumi:Stack (pve-lab-s02):\n    error: update failed\n\n stderr: error: update failed\n"
)


def jobs(n: int) -> list[StackJob]:
    return [StackJob(stack=f"c1-s{i:02d}", student_id=f"s{i:02d}", config={"pve-lab:lab": "{}"},
                     secrets={"pve-lab:outerApiToken": TOKEN}) for i in range(1, n + 1)]


class FakeBackend:
    """Records every call; `script[(action, stack)]` lists what successive attempts do (an exception to raise,
    or None to succeed; a callable is called with the job first). Optionally blocks every call on `gate`."""

    def __init__(self, script=None, gate: threading.Event | None = None):
        self.script = defaultdict(deque, {k: deque(v) for k, v in (script or {}).items()})
        self.gate = gate
        self.cond = threading.Condition()
        self.running = 0
        self.max_running = 0
        self.events: list[tuple[str, str, str]] = []  # (start|end, action, stack)
        self.removed: list[str] = []
        self.remove_flags: list[bool] = []

    def _call(self, action, job, on_output):
        with self.cond:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.events.append(("start", action, job.stack))
            self.cond.notify_all()
        try:
            on_output(f"{action} {job.stack}")
            if self.gate is not None:
                assert self.gate.wait(WAIT), "test gate never opened"
            outcome = self.script[(action, job.stack)].popleft() if self.script[(action, job.stack)] else None
            if callable(outcome) and not isinstance(outcome, BaseException):
                outcome = outcome(job)
            if isinstance(outcome, BaseException):
                raise outcome
        finally:
            with self.cond:
                self.running -= 1
                self.events.append(("end", action, job.stack))
                self.cond.notify_all()

    def up(self, job, on_output):
        self._call("up", job, on_output)

    def destroy(self, job, on_output, remove_stack=True):
        self._call("down", job, on_output)
        self.remove_flags.append(remove_stack)
        if remove_stack:
            self.removed.append(job.stack)

    def started(self, action=None):
        return [s for kind, a, s in self.events if kind == "start" and (action is None or a == action)]


def states(run) -> dict[str, str]:
    return {r.student_id: r.state for r in run.results}


# ---------------------------------------------------------------- parallel limit


def test_no_more_than_parallel_stacks_run_at_once_and_the_limit_is_used():
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("run", run_class(
        "up", jobs(10), backend, parallel=3, retries=0, backoff_s=0)))
    runner.start()
    with backend.cond:
        assert backend.cond.wait_for(lambda: backend.running == 3, timeout=WAIT)
        # A runner that ignored the limit would start a 4th stack now; give it the chance.
        assert not backend.cond.wait_for(lambda: backend.running > 3, timeout=0.3)
    gate.set()
    runner.join(WAIT)
    run = outcome["run"]
    assert backend.max_running == 3
    assert [r.state for r in run.results] == ["up"] * 10
    assert sorted(backend.started()) == [j.stack for j in jobs(10)]
    assert run.exit_code == 0


def test_parallel_one_runs_stacks_one_after_another_in_roster_order():
    backend = FakeBackend()
    run_class("up", jobs(4), backend, parallel=1, backoff_s=0)
    assert backend.max_running == 1
    assert backend.started() == [j.stack for j in jobs(4)]


# ---------------------------------------------------------------- failures isolated


def test_a_failing_or_raising_stack_never_stops_the_others():
    backend = FakeBackend(script={
        ("up", "c1-s02"): [RuntimeError(PULUMI_FAILURE)],
        ("up", "c1-s04"): [KeyError("boom")],
        ("up", "c1-s05"): [SystemExit(3)],  # even a BaseException from a backend stays that student's
    })
    run = run_class("up", jobs(6), backend, parallel=2, retries=3, backoff_s=0)
    assert states(run) == {"s01": "up", "s02": "failed", "s03": "up", "s04": "failed", "s05": "failed", "s06": "up"}
    by_id = {r.student_id: r for r in run.results}
    assert by_id["s02"].error == "creating VM 9111: 500 storage 'local-lvm' does not exist"
    assert by_id["s04"].error == "'boom'"
    # Not a concurrent update: one attempt each, no retry.
    assert [by_id[s].attempts for s in ("s02", "s04", "s05")] == [1, 1, 1]
    assert backend.started().count("c1-s02") == 1
    assert run.exit_code == 1
    assert [r.student_id for r in run.failed] == ["s02", "s04", "s05"]


# ---------------------------------------------------------------- retries


def test_a_concurrent_update_is_retried_and_then_succeeds():
    backend = FakeBackend(script={("up", "c1-s01"): [ConcurrentUpdateError("stack locked"), None]})
    events = []
    run = run_class("up", jobs(2), backend, parallel=2, retries=2, backoff_s=0, progress=events.append)
    result = run.results[0]
    assert (result.state, result.attempts, result.error) == ("up", 2, None)
    assert backend.started().count("c1-s01") == 2
    lines = [e.line() for e in events if e.student_id == "s01"]
    assert lines[0] == "[1/2] s01  up  running"
    assert lines[1].startswith("[1/2] s01  up  retrying: concurrent update: stack locked; attempt 2 in 0s")
    assert lines[2] == "[1/2] s01  up  running (attempt 2)"
    assert lines[3] == "[1/2] s01  up  up"


def test_the_cli_lock_texts_count_as_concurrent_updates_too():
    locked = RuntimeError("stderr: error: the stack is currently locked by 1 lock(s). Either wait ...")
    conflict = RuntimeError("error: [409] Conflict: Another update is currently in progress.")
    assert is_concurrent_update(locked) and is_concurrent_update(conflict)
    assert not is_concurrent_update(RuntimeError(PULUMI_FAILURE))
    backend = FakeBackend(script={("down", "c1-s01"): [locked, conflict, None]})
    run = run_class("down", jobs(1), backend, retries=2, backoff_s=0)
    assert (run.results[0].state, run.results[0].attempts) == ("destroyed", 3)


def test_retries_are_bounded_and_other_errors_are_never_retried():
    backend = FakeBackend(script={
        ("up", "c1-s01"): [ConcurrentUpdateError("locked")] * 10,
        ("up", "c1-s02"): [RuntimeError("error: [403] Forbidden"), None],
    })
    run = run_class("up", jobs(2), backend, parallel=2, retries=2, backoff_s=0)
    first, second = run.results
    assert (first.state, first.attempts) == ("failed", 3)
    assert first.error == "concurrent update: locked"
    assert (second.state, second.attempts, second.error) == ("failed", 1, "[403] Forbidden")
    assert backend.started().count("c1-s02") == 1


def test_no_retry_starts_after_the_stack_deadline():
    backend = FakeBackend(script={("up", "c1-s01"): [ConcurrentUpdateError("locked"), None]})
    run = run_class("up", jobs(1), backend, retries=5, backoff_s=0, deadline_s=0)
    result = run.results[0]
    assert (result.state, result.attempts) == ("failed", 1)
    assert "deadline" in result.error


def test_the_backoff_grows_with_the_attempt_and_is_a_parameter():
    backend = FakeBackend(script={("up", "c1-s01"): [ConcurrentUpdateError("x"), ConcurrentUpdateError("x"), None]})
    events = []
    run_class("up", jobs(1), backend, retries=2, backoff_s=0.01, progress=events.append)
    waits = [e.detail.rsplit(" in ", 1)[1] for e in events if e.state == "retrying"]
    assert waits == ["0.01s", "0.02s"]


# ---------------------------------------------------------------- summary


def test_summary_table_has_one_row_per_stack_with_a_one_line_error():
    results = [
        StackResult("s01", "c1-s01", "up", 1834.4, None, 1),
        StackResult("s02", "c1-s02", "failed", 42.0, one_line_error(RuntimeError(PULUMI_FAILURE)), 1),
        StackResult("s03", "c1-s03", "failed", 3.2, "x" * 400, 3),
        StackResult("(class)", "c1-images", "skipped", 0.0, None, 0, note="kept: 1 student stack(s) not destroyed"),
    ]
    lines = format_table(results).splitlines()
    assert lines[0].split() == ["student", "stack", "state", "duration", "error"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["s01", "c1-s01", "up", "30m34s"]
    assert lines[3].split()[:4] == ["s02", "c1-s02", "failed", "42s"]
    assert lines[3].endswith("creating VM 9111: 500 storage 'local-lvm' does not exist")
    assert lines[4].endswith("x" * 97 + "...") and len(lines[4].split()[-1]) == 100
    assert lines[5].endswith("kept: 1 student stack(s) not destroyed")
    assert lines[6] == "1 up, 2 failed, 1 skipped"
    assert len(lines) == 7


def test_summary_json_and_exit_code():
    backend = FakeBackend(script={("up", "c1-s02"): [RuntimeError("error: no\nsecond line")]})
    run = run_class("up", jobs(3), backend, backoff_s=0)
    doc = json.loads(run.json_text())
    assert doc["action"] == "up" and doc["exitCode"] == 1
    assert doc["counts"] == {"up": 2, "destroyed": 0, "failed": 1, "skipped": 0}
    assert [s["student"] for s in doc["stacks"]] == ["s01", "s02", "s03"]
    assert doc["stacks"][1] | {"durationS": 0} == {"student": "s02", "stack": "c1-s02", "state": "failed",
                                                    "durationS": 0, "error": "no", "attempts": 1, "note": None}
    assert TOKEN not in run.json_text() and TOKEN not in run.table()
    assert TOKEN not in repr(jobs(1)[0])


def test_one_line_error_falls_back_to_the_last_line_and_the_type():
    assert one_line_error(RuntimeError("first\n\n  last line  \n")) == "last line"
    assert one_line_error(TimeoutError()) == "TimeoutError"
    assert len(one_line_error(RuntimeError("y" * 1000))) == 300


# ---------------------------------------------------------------- down


def test_down_destroys_removes_stacks_and_continues_past_a_failure():
    backend = FakeBackend(script={
        ("down", "c1-s02"): [RuntimeError("error: 596 Connection timed out")],
        ("down", "c1-s03"): [StackNotFound("no such stack; nothing to destroy")],
    })
    run = run_class("down", jobs(4), backend, parallel=2, backoff_s=0)
    assert states(run) == {"s01": "destroyed", "s02": "failed", "s03": "destroyed", "s04": "destroyed"}
    assert sorted(backend.removed) == ["c1-s01", "c1-s04"]
    assert set(backend.remove_flags) == {True}
    by_id = {r.student_id: r for r in run.results}
    assert by_id["s02"].error == "596 Connection timed out"
    assert by_id["s03"].note == "no such stack; nothing to destroy" and by_id["s03"].error is None
    assert run.exit_code == 1


# ---------------------------------------------------------------- the class-images stack


IMAGES = StackJob(stack="c1-images", student_id="(class)", secrets={"pve-lab-class:outerApiToken": TOKEN})


def test_up_brings_the_images_stack_up_before_any_student():
    backend = FakeBackend()
    run = run_classroom("up", jobs(3), backend, images_job=IMAGES, parallel=3, backoff_s=0)
    assert backend.events[:2] == [("start", "up", "c1-images"), ("end", "up", "c1-images")]
    assert sorted(backend.started()[1:]) == ["c1-s01", "c1-s02", "c1-s03"]
    assert [r.stack for r in run.results] == ["c1-images", "c1-s01", "c1-s02", "c1-s03"]
    assert run.exit_code == 0


def test_when_the_images_stack_fails_no_student_starts():
    backend = FakeBackend(script={("up", "c1-images"): [RuntimeError("error: 501 download-url: content type 'import' not allowed")]})
    run = run_classroom("up", jobs(3), backend, images_job=IMAGES, backoff_s=0)
    assert backend.started() == ["c1-images"]
    assert [r.state for r in run.results] == ["failed", "skipped", "skipped", "skipped"]
    assert run.results[1].error == "not started: the class images stack 'c1-images' failed"
    assert run.exit_code == 1


def test_down_destroys_the_images_stack_last():
    images_backend = FakeBackend()
    backend = FakeBackend()
    run = run_classroom("down", jobs(3), backend, images_job=IMAGES, images_backend=images_backend, backoff_s=0)
    assert images_backend.started() == ["c1-images"] and images_backend.removed == ["c1-images"]
    assert "c1-images" not in backend.started()
    assert [r.stack for r in run.results][-1] == "c1-images" and run.results[-1].state == "destroyed"
    assert run.exit_code == 0


def test_down_keeps_the_images_when_a_student_was_not_destroyed():
    backend = FakeBackend(script={("down", "c1-s02"): [RuntimeError("error: VM 9111 is locked (backup)")]})
    run = run_classroom("down", jobs(3), backend, images_job=IMAGES, backoff_s=0)
    assert "c1-images" not in backend.started()
    images = run.results[-1]
    assert (images.stack, images.state, images.error) == ("c1-images", "skipped", None)
    assert images.note.startswith("kept: 1 student stack(s) not destroyed (s02)")
    assert "kept: 1 student stack(s)" in run.table().splitlines()[-2]
    assert run.exit_code == 1  # because of s02, not because the images were kept


def test_down_with_only_some_students_keeps_the_images():
    backend = FakeBackend()
    only = select_jobs(jobs(3), ["s02"])
    run = run_classroom("down", only, backend, images_job=IMAGES, keep_images="kept: --only was given", backoff_s=0)
    assert backend.started() == ["c1-s02"]
    assert run.results[-1].note == "kept: --only was given"
    assert run.exit_code == 0


def test_select_jobs_names_unknown_students():
    assert [j.student_id for j in select_jobs(jobs(3), ["s03", "s01"])] == ["s01", "s03"]
    with pytest.raises(ValueError, match=r"--only: unknown student id\(s\) s09 \(the roster has: s01, s02, s03\)"):
        select_jobs(jobs(3), ["s09"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--parallel: 0"):
        run_class("up", jobs(1), FakeBackend(), parallel=0)
    with pytest.raises(ValueError, match="action: 'sideways'"):
        run_class("sideways", jobs(1), FakeBackend())
    with pytest.raises(ValueError, match="appears twice"):
        run_class("up", jobs(1) + jobs(1), FakeBackend())


# ---------------------------------------------------------------- Ctrl-C


def test_stop_stops_scheduling_and_lets_running_stacks_finish():
    stop = threading.Event()
    backend = FakeBackend(script={("up", "c1-s01"): [lambda job: stop.set()]})
    run = run_class("up", jobs(4), backend, parallel=1, backoff_s=0, stop=stop)
    assert [r.state for r in run.results] == ["up", "skipped", "skipped", "skipped"]
    assert run.results[1].error == "not started: interrupted"
    assert backend.started() == ["c1-s01"]
    assert run.interrupted and run.exit_code == 130


def test_ctrl_c_in_the_main_thread_waits_for_running_stacks_and_skips_the_rest():
    # A background job's SIGINT may be ignored (SIG_IGN); interrupt_main() needs Python's handler in place.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_case()
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_case():
    stop = threading.Event()
    second_running = threading.Event()

    def first(job):
        assert second_running.wait(WAIT)
        _thread.interrupt_main()  # what Ctrl-C does to the main thread
        assert stop.wait(WAIT)

    def second(job):
        second_running.set()
        assert stop.wait(WAIT)

    backend = FakeBackend(script={("up", "c1-s01"): [first], ("up", "c1-s02"): [second]})
    run = run_class("up", jobs(5), backend, parallel=2, backoff_s=0, stop=stop, poll_s=0.05)
    assert [r.state for r in run.results] == ["up", "up", "skipped", "skipped", "skipped"]
    assert sorted(backend.started()) == ["c1-s01", "c1-s02"]
    assert run.exit_code == 130


def test_the_backends_prepare_runs_once_before_the_wave_and_its_failure_starts_nobody():
    backend = FakeBackend()
    prepared = []
    backend.prepare = lambda on_output: prepared.append(len(backend.started()))
    run = run_classroom("up", jobs(4), backend, parallel=4, backoff_s=0)
    assert prepared == [0] and len(backend.started()) == 4 and run.exit_code == 0

    failing = FakeBackend()

    def broken(on_output):
        raise RuntimeError("error: could not install plugin proxmoxve: 404")

    failing.prepare = broken
    run = run_classroom("up", jobs(3), failing, parallel=2, backoff_s=0)
    assert failing.started() == []
    assert run.results[0].stack == "(provider plugins)" and run.results[0].state == "failed"
    assert "could not install plugin" in run.results[0].error
    assert [r.state for r in run.results[1:]] == ["skipped"] * 3 and run.exit_code == 1


def test_down_installs_the_plugins_once_before_destroying():
    backend = FakeBackend()
    prepared = []
    backend.prepare = lambda on_output: prepared.append(len(backend.started()))
    run = run_classroom("down", jobs(3), backend, parallel=3, backoff_s=0)
    assert prepared == [0] and len(backend.started("down")) == 3 and run.exit_code == 0

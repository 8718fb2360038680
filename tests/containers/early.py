"""Start the slow container and QEMU work as soon as the tests are collected, in background threads, so it
runs while the rest of the suite does; the tests then wait for what their job recorded.

A test module registers one job: `prepare(hosts, image)` runs in the main thread when the session starts
(it may evaluate the Pulumi program: the mock runtime is not thread-safe), `run(prepared)` in a background
thread; it boots, runs, records and removes its nodes, and returns plain results. tests/conftest.py starts
the jobs of the collected modules (only where containers can run) and waits for all at the session's end.

With pytest-xdist every worker collects every module, so each job is claimed once for the whole run (a file
created with O_EXCL in a folder named after the run): the worker that claims it runs it and leaves its result
as a pickle; the worker that runs the module's tests (maybe another) waits for that file.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from containers.image import TrixieImage, ensure_image
from containers.lab import PackageHosts, make_package_hosts
from containers.nspawn import container_support

RESULT_WAIT_S = 45 * 60  # the longest a module waits for a job another worker runs (a cold image build included)

_jobs: dict[str, tuple[Callable, Callable]] = {}
_futures: dict[str, Future] = {}
_results: dict[str, Any] = {}
_pool: Optional[ThreadPoolExecutor] = None
_lock = threading.Lock()
_shared: dict = {}


def register(module: str, prepare: Callable[[PackageHosts, TrixieImage], object],
             run: Callable[[object], object]) -> None:
    _jobs[module] = (prepare, run)


def run_folder() -> Path:
    """Shared by the processes of one test run (xdist gives its workers one run id), private to it."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"solo-{os.getpid()}"
    folder = Path(tempfile.gettempdir()) / f"pve-lab-early-{run_id}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _claim(module: str) -> bool:
    try:
        os.close(os.open(run_folder() / f"{module}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def _hosts() -> tuple[PackageHosts, TrixieImage]:
    if "hosts" not in _shared:
        image = ensure_image()
        folder = Path(tempfile.mkdtemp(prefix="pve-lab-package-hosts-"))
        _shared.update(folder=folder, image=image, hosts=make_package_hosts(folder, image))
    return _shared["hosts"], _shared["image"]


def _consume(module: str) -> None:
    """The module's outcome has been read: its files go, and the run's folder once it is empty."""
    folder = run_folder()
    for suffix in (".result", ".claim"):
        (folder / f"{module}{suffix}").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # another module's files are still there
        pass


def _publish(module: str, future: Future) -> None:
    """Leave the job's outcome where any worker of the run finds it (written whole, then renamed)."""
    if module in _results:  # this process's own test read it already
        return
    error = future.exception()
    outcome = ("error", error) if error is not None else ("ok", future.result())
    try:
        data = pickle.dumps(outcome)
    except Exception as exc:  # an outcome that does not pickle still reaches the test, as its description
        data = pickle.dumps(("error", RuntimeError(f"{module}: the job's outcome could not be passed on: "
                                                   f"{exc}; it was {outcome[1]!r}")))
    target = run_folder() / f"{module}.result"
    partial = target.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)


def start(modules) -> None:
    """Start the registered jobs of MODULES that no process of this run has claimed (main thread), unless
    this machine cannot run containers."""
    global _pool
    wanted = [m for m in sorted(modules) if m in _jobs and m not in _futures]
    if not wanted or container_support() is not None:
        return
    with _lock:
        claimed = [m for m in wanted if _claim(m)]
        if not claimed:
            return
        hosts, image = _hosts()
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pve-lab-containers")
        for module in claimed:
            prepare, run = _jobs[module]
            prepared = prepare(hosts, image)
            future = _pool.submit(run, prepared)
            future.add_done_callback(lambda f, m=module: _publish(m, f))
            _futures[module] = future


def _wait_for_file(module: str) -> Any:
    path = run_folder() / f"{module}.result"
    deadline = time.monotonic() + RESULT_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{module}: no result from the worker running its container job after "
                               f"{RESULT_WAIT_S}s ({path})")
        time.sleep(0.5)
    outcome = pickle.loads(path.read_bytes())
    _consume(module)
    return outcome


def result(module: str):
    """What MODULE's job recorded (started now if no process of the run started it); its exception re-raised."""
    if module not in _results:
        if module not in _futures:
            start([module])
        if module in _futures:
            future = _futures[module]
            error = future.exception()
            _results[module] = ("error", error) if error is not None else ("ok", future.result())
            _consume(module)
        else:
            _results[module] = _wait_for_file(module)
    kind, value = _results[module]
    if kind == "error":
        raise value
    return value


def wait_all() -> None:
    """At the session's end: let every job this process started finish (each removes its nodes), then clean
    up. An outcome no test read stays for the worker that still may (the reader removes it)."""
    for future in _futures.values():
        future.exception()
    if _pool is not None:
        _pool.shutdown(wait=True)
    if "folder" in _shared:
        shutil.rmtree(_shared["folder"], ignore_errors=True)
    for module in _futures:
        if module in _results:
            _consume(module)

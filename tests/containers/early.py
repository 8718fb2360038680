"""Start the slow container and QEMU work as soon as the tests are collected, in background threads, so it
runs while the rest of the suite does; the tests then wait for what their job recorded.

A test module registers one job: `prepare(hosts, image)` runs in the main thread when the session starts
(it may evaluate the Pulumi program: the mock runtime is not thread-safe), `run(prepared)` in a background
thread; it boots, runs, records and removes its nodes, and returns plain results. tests/conftest.py starts
the jobs of the collected modules (only where containers can run) and waits for all at the session's end.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from containers.image import TrixieImage, ensure_image
from containers.lab import PackageHosts, make_package_hosts
from containers.nspawn import container_support

_jobs: dict[str, tuple[Callable, Callable]] = {}
_futures: dict[str, Future] = {}
_pool: Optional[ThreadPoolExecutor] = None
_lock = threading.Lock()
_shared: dict = {}


def register(module: str, prepare: Callable[[PackageHosts, TrixieImage], object],
             run: Callable[[object], object]) -> None:
    _jobs[module] = (prepare, run)


def _hosts() -> tuple[PackageHosts, TrixieImage]:
    if "hosts" not in _shared:
        image = ensure_image()
        folder = Path(tempfile.mkdtemp(prefix="pve-lab-package-hosts-"))
        _shared.update(folder=folder, image=image, hosts=make_package_hosts(folder, image))
    return _shared["hosts"], _shared["image"]


def start(modules) -> None:
    """Start the registered jobs of MODULES (main thread), unless this machine cannot run containers."""
    global _pool
    wanted = [m for m in modules if m in _jobs and m not in _futures]
    if not wanted or container_support() is not None:
        return
    with _lock:
        hosts, image = _hosts()
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pve-lab-containers")
        for module in wanted:
            prepare, run = _jobs[module]
            prepared = prepare(hosts, image)
            _futures[module] = _pool.submit(run, prepared)


def result(module: str):
    """What MODULE's job recorded (started now if the session did not start it); its exception re-raised."""
    if module not in _futures:
        start([module])
    return _futures[module].result()


def wait_all() -> None:
    """At the session's end: let every started job finish (each removes its nodes), then clean up."""
    for future in _futures.values():
        future.exception()
    if _pool is not None:
        _pool.shutdown(wait=True)
    if "folder" in _shared:
        shutil.rmtree(_shared["folder"], ignore_errors=True)

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture(scope="session")
def default_lab():
    """The default `lab` stack, evaluated once (read-only: don't mutate it)."""
    from harness import evaluate_lab

    ev = evaluate_lab()
    assert ev.error is None, ev.error
    return ev


@pytest.fixture(scope="session")
def run_shared_dir(tmp_path_factory):
    """A folder shared by every pytest-xdist worker of this run (each worker has its own session, so a
    session fixture runs once per worker): build something once for the whole run here, under a file lock
    (atomicfile.locked). Without xdist it is the run's own temporary folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

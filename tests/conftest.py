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


def pytest_collection_modifyitems(session, config, items):
    """Start the container and QEMU tests' slow work now, in the background (tests/containers/early.py)."""
    from containers import early

    early.start({item.module.__name__ for item in items})


def pytest_sessionfinish(session, exitstatus):
    from containers import early

    early.wait_all()

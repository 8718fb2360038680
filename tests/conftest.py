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

"""The suite runs in parallel (pytest-xdist, pytest.ini): what tests share, and what they must not."""
from __future__ import annotations

import os

from pvelab import atomicfile


def test_run_shared_dir_is_one_folder_for_every_worker(run_shared_dir, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp (popen-gwN) lies in the run's folder
        assert base.parent == run_shared_dir and base.name.startswith("popen-gw")
    else:
        assert base == run_shared_dir
    with atomicfile.locked(run_shared_dir / "probe"):  # the file lock a run-wide build holds
        (run_shared_dir / "probe").write_text("built once\n")
    assert (run_shared_dir / "probe").read_text() == "built once\n"


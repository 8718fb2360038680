"""`classroom baseline|reset ROSTER`: every student's lab through pvelab/ops/reset.py (tested against fakepve
in test_ops_reset.py); here the orchestration: --only, one failure never stops the others, the table."""
from __future__ import annotations

import shutil
from pathlib import Path

import pvelab.classroom.reset_cli as reset_cli
from pvelab.cli import main
from pvelab.ops.reset import ResetReport

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"


class FakeLab:
    calls: list = []

    def __init__(self, spec, stack, fail):
        self.spec, self.stack, self.fail = spec, stack, fail

    def reset(self):
        FakeLab.calls.append(("reset", self.stack, [p.vmid for p in self.spec.node_plans]))
        report = ResetReport("reset", self.stack, "baseline", ok=not self.fail,
                             phases=[{"phase": "start every node", "seconds": 42.0}])
        report.error = "no snapshot 'baseline' on s02-pve1" if self.fail else None
        return report

    def take_baseline(self, replace=False):
        FakeLab.calls.append(("baseline", self.stack, replace))
        return ResetReport("baseline", self.stack, "baseline", ok=True)


def roster(tmp_path) -> Path:
    target = tmp_path / "classroom.yaml"
    shutil.copy(EXAMPLE, target)
    return target


def test_reset_every_student_and_one_failure_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    FakeLab.calls = []
    monkeypatch.setattr(reset_cli, "lab_snapshots",
                        lambda spec, stack, project_dir, out, snapshot: FakeLab(spec, stack, stack.endswith("s02")))
    code = main(["classroom", "reset", str(roster(tmp_path)), "--yes", "--parallel", "2"])
    out = capsys.readouterr().out
    assert code == 1
    stacks = sorted(c[1] for c in FakeLab.calls)
    assert len(stacks) >= 3 and all(c[0] == "reset" for c in FakeLab.calls)
    assert any(line.split()[2] == "failed" and "no snapshot 'baseline' on s02-pve1" in line
               for line in out.splitlines() if "s02" in line)
    assert sum(1 for line in out.splitlines()[1:] if line.split()[2] == "done") == len(stacks) - 1
    # every student's own VMIDs: no two labs share one
    vmids = [v for c in FakeLab.calls for v in c[2]]
    assert len(vmids) == len(set(vmids))


def test_only_picks_students_and_baseline_passes_replace(tmp_path, monkeypatch, capsys):
    FakeLab.calls = []
    monkeypatch.setattr(reset_cli, "lab_snapshots",
                        lambda spec, stack, project_dir, out, snapshot: FakeLab(spec, stack, False))
    code = main(["classroom", "baseline", str(roster(tmp_path)), "--only", "s01", "--yes", "--replace"])
    assert code == 0, capsys.readouterr()
    assert [(c[0], c[1].rsplit("-", 1)[-1], c[2]) for c in FakeLab.calls] == [("baseline", "s01", True)]


def test_unknown_student_and_no_terminal_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["classroom", "reset", str(roster(tmp_path)), "--only", "nobody", "--yes"]) == 2
    assert "--only: unknown student id(s) nobody" in capsys.readouterr().err
    assert main(["classroom", "reset", str(roster(tmp_path))]) == 2
    assert "pass --yes" in capsys.readouterr().err

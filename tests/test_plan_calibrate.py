"""`plan --calibrate EVENTLOG`: step kinds' durations learned from a `pulumi up --event-log` file.

The log here is written the way the engine writes it (pulumi sdk/go/common/apitype/events.go: one
EngineEvent per line, resourcePreEvent then resOutputsEvent per step, Unix-second timestamps, secrets shown
as "[secret]"), from the real program's resources evaluated on the mock runtime.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import evaluate_lab
from pvelab.cli import main
from pvelab.evaluate import SECRET_SIG, SIG_KEY
from pvelab.plan.calibrate import CalibrationError, calibrated, learn
from pvelab.plan.durations import STEP_DURATIONS
from pvelab.plan.model import build_plan

MEASURED = {"install-pve:finish": 300, "install-pve:prepare": 200, "ceph-osd": 90, "vm:outer": 45}


def masked(value):
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return "[secret]"
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def seconds_for(record) -> int:
    text = str(masked(record.inputs.get("create")) or "")
    last = text.rstrip("\n").splitlines()[-1] if text else ""
    for kind, s in MEASURED.items():
        script, _, arg = kind.partition(":")
        if f'pve-lab/{script}.sh"' in last and (not arg or last.endswith(f" {arg}")):
            return s * (2 if script == "ceph-osd" else 1)  # two OSD devices below
    if record.type.endswith("VmLegacy") and "pve-lab-node" in (record.plain("tags") or []):
        return MEASURED["vm:outer"]
    return 3


def write_log(path: Path, ev, op: str = "create") -> Path:
    seq, clock, lines = 0, 1_700_000_000, []
    for r in ev.records:
        if not r.custom or r.type.startswith("pulumi:providers:"):
            continue
        meta = {"op": op, "urn": r.urn, "type": r.type, "provider": r.provider,
                "new": {"type": r.type, "urn": r.urn, "custom": True, "parent": r.parent, "id": "",
                        "inputs": masked(r.inputs), "outputs": {}, "provider": r.provider}}
        lines.append({"sequence": seq, "timestamp": clock, "resourcePreEvent": {"metadata": meta}})
        clock += seconds_for(r)
        lines.append({"sequence": seq + 1, "timestamp": clock, "resOutputsEvent": {"metadata": meta}})
        seq += 2
    lines.append({"sequence": seq, "timestamp": clock, "summaryEvent": {"durationSeconds": 0, "result": "succeeded"}})
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path


@pytest.fixture(scope="module")
def two_osds():
    ev = evaluate_lab({"nodes": {"cephDisks": 2, "memoryMiB": 12288}})
    assert ev.error is None, ev.error
    return ev


def test_learns_each_kind_from_the_event_log(tmp_path, two_osds):
    measured = learn(write_log(tmp_path / "up.json", two_osds))
    assert measured["install-pve:finish"].median_s == 300 and len(measured["install-pve:finish"].seconds) == 3
    assert measured["install-pve:prepare"].median_s == 200
    assert measured["ceph-osd"].median_s == 90  # per OSD device: each step had two
    assert measured["vm:outer"].median_s == 45
    assert sorted(measured["install-pve:finish"].steps) == ["lab-pve1-finish", "lab-pve2-finish", "lab-pve3-finish"]
    # node 1's own join (a membership check on a first build) is its own kind, as plan counts it
    assert measured["cluster-join@creator"].steps == ["lab-cluster-join-pve1"]
    assert sorted(measured["cluster-join"].steps) == ["lab-cluster-join-pve2", "lab-cluster-join-pve3"]


def test_the_plan_uses_the_measured_figures_and_stays_an_estimate(tmp_path, two_osds):
    before = build_plan(two_osds)
    measured = learn(write_log(tmp_path / "up.json", two_osds))
    table = dict(STEP_DURATIONS)
    with calibrated(measured, "up.json"):
        after = build_plan(two_osds)
    assert dict(STEP_DURATIONS) == table  # restored
    finish = next(s for s in after.steps if s.id == "lab-pve1-finish")
    assert finish.estimate_s == 300 and finish.estimate_source == "measured: median of 3 step(s) in up.json"
    osd = next(s for s in after.steps if s.id == "lab-ceph-osd-pve1")
    assert osd.estimate_s == 180  # 90 s x 2 devices
    assert after.estimate_s < before.estimate_s


def test_steps_that_did_nothing_do_not_count(tmp_path, two_osds):
    with pytest.raises(CalibrationError):
        learn(tmp_path / "missing.json")
    measured = learn(write_log(tmp_path / "same.json", two_osds, op="same"))
    assert measured == {}


def test_cli_prints_the_calibration_and_rejects_a_bad_file(tmp_path, two_osds, capsys):
    log = write_log(tmp_path / "up.json", evaluate_lab())
    assert main(["plan", "-s", "lab", "--calibrate", str(log), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Calibration from" in out and "install-pve:finish" in out and "(table: 480 s; 3 step(s))" in out
    assert "ESTIMATE" in out
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    assert main(["plan", "-s", "lab", "--calibrate", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
    assert main(["plan", "-s", "lab", "--calibrate", str(log), "--format", "json", "--out", str(tmp_path / "o")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["calibration"]["install-pve:finish"]["median_s"] == 300


def test_template_path_steps_get_their_own_kinds(tmp_path):
    ev = evaluate_lab({"nodes": {"source": "template"}})
    measured = learn(write_log(tmp_path / "tpl.json", ev))
    assert len(measured["install-pve:prepare"].steps) == 1  # the builder's real install
    assert len(measured["install-pve:prepare@clone"].steps) == 3  # the clones' /etc/hosts step
    assert len(measured["ceph-install@clone"].steps) == 3 and len(measured["ceph-install"].steps) == 1
    assert {"vm:builder", "vm:outer@clone", "outer-template", "node-seal", "node-firstboot:identity"} <= set(measured)


def test_automation_events_are_written_back_as_an_event_log(tmp_path, two_osds):
    """The real-host test records its run through the Automation API's typed events."""
    from pulumi.automation.events import EngineEvent

    from pvelab.plan.calibrate import EventLogWriter

    raw = [json.loads(line) for line in write_log(tmp_path / "up.json", two_osds).read_text().splitlines()]
    writer = EventLogWriter(tmp_path / "again.json")
    for data in raw:
        writer(EngineEvent.from_json(data))
    assert {k: m.median_s for k, m in learn(tmp_path / "again.json").items()} == \
        {k: m.median_s for k, m in learn(tmp_path / "up.json").items()}

"""`baseline` and `reset` against a fake outer host and a fake nested cluster wired together (LabSim).

fakepve's snapshot and rollback follow qemu-server (PVE/API2/Qemu.pm, pve-guest-common AbstractConfig.pm):
a snapshot needs every disk on a storage with snapshots; a rollback leaves the VM stopped.
"""
from __future__ import annotations

import pytest

from ops_fixtures import (FAST, ROOT_PASSWORD, TOKEN, NestedFake, ca, lab_raw, lab_sim, nested_urls,  # noqa: F401
                          ops_servers, outer_fake, serve)
from pvelab.cli import main
from pvelab.ops.connect import nested_client, outer_client
from pvelab.ops.reset import LabSnapshots, ResetTiming, render_json, render_text
from pvelab.spec import parse_spec

SCALE = 0.004
TIMING = ResetTiming(poll_s=0.02, task_deadline_s=5, shutdown_s=5, healthy_deadline_s=5)
VMIDS = (9100, 9101, 9102)


class Lab:
    def __init__(self, serve, ca):
        self.sim = lab_sim(scale=SCALE, start_after=40)
        self.outer = serve(outer_fake(self.sim, lab_vms=True))
        self.nested = serve(NestedFake(self.sim))
        for vmid in VMIDS:  # a system disk on LVM-thin: snapshots work
            self.outer.vm(vmid).config["scsi0"] = f"local-lvm:vm-{vmid}-disk-0,size=32G"
            self.outer.vm(vmid).shutdown_secs = 0.05
        self.ca = ca
        self.lines: list[str] = []

    def snapshots(self, timing=TIMING) -> LabSnapshots:
        spec = parse_spec(lab_raw())
        # the lab's simulated clock: its time moves on only when reset waits (tests/ops_fixtures.py SimClock)
        clock = self.sim.clock
        outer = outer_client(spec, self.outer.url, self.ca, FAST, clock, token=TOKEN)
        nested = nested_client(spec, nested_urls(self.nested), self.ca, FAST, clock, password=ROOT_PASSWORD)
        return LabSnapshots(spec, "lab", outer, nested, timing, clock=clock, out=self.lines.append)

    def posts(self):
        return [p.split("/qemu/")[1] for m, p, _ in self.outer.requests if m == "POST" and "/qemu/" in p]

    def all_running(self):
        return all(self.outer.vm(v).status == "running" for v in VMIDS)


@pytest.fixture
def lab(serve, ca):
    return Lab(serve, ca)


def test_baseline_shuts_all_down_before_any_snapshot_then_proves_health(lab):
    report = lab.snapshots().take_baseline()
    assert report.ok, report.error
    posts = lab.posts()
    shutdowns = [i for i, p in enumerate(posts) if p.endswith("/status/shutdown")]
    snaps = [i for i, p in enumerate(posts) if p.endswith("/snapshot")]
    starts = [i for i, p in enumerate(posts) if p.endswith("/status/start")]
    assert len(shutdowns) == len(snaps) == len(starts) == 3
    assert max(shutdowns) < min(snaps) and max(snaps) < min(starts)  # all off at the same point
    for vmid in VMIDS:
        snap = lab.outer.vm(vmid).snapshots["baseline"]
        assert "vmstate" not in snap  # disks only: the nodes were off
    assert lab.all_running()
    assert report.status["healthy"] and report.status["ceph"]["health"] == "HEALTH_OK"
    assert [p["phase"].split(" (")[0] for p in report.phases][:2] == ["shut down every node cleanly",
                                                                        "snapshot 'baseline' of every node"]


def test_baseline_twice_needs_replace(lab):
    assert lab.snapshots().take_baseline().ok
    report = lab.snapshots().take_baseline()
    assert not report.ok
    assert "snapshot 'baseline' already exists on pve1, pve2, pve3; pass --replace" in report.error
    assert lab.all_running()
    report = lab.snapshots().take_baseline(replace=True)
    assert report.ok, report.error
    assert all(list(lab.outer.vm(v).snapshots) == ["baseline"] for v in VMIDS)


def test_reset_rolls_every_node_back_and_proves_quorum_ceph_and_ha(lab):
    assert lab.snapshots().take_baseline().ok
    for vmid in VMIDS:  # a broken experiment: something changed on every node
        lab.outer.vm(vmid).config["description"] = "broken"
        lab.outer.vm(vmid).config["cores"] = 1
    before = len(lab.posts())
    report = lab.snapshots().reset()
    assert report.ok, report.error
    posts = lab.posts()[before:]
    stops = [i for i, p in enumerate(posts) if p.endswith("/status/stop")]
    rollbacks = [i for i, p in enumerate(posts) if p.endswith("/snapshot/baseline/rollback")]
    starts = [i for i, p in enumerate(posts) if p.endswith("/status/start")]
    assert len(stops) == len(rollbacks) == len(starts) == 3
    assert max(stops) < min(rollbacks) and max(rollbacks) < min(starts)
    assert all(lab.outer.vm(v).config["cores"] == 4 for v in VMIDS)
    assert lab.all_running()
    status = report.status
    assert status["cluster"]["quorate"] and status["cluster"]["online"] == 3
    assert status["ceph"]["health"] == "HEALTH_OK"
    assert [s["state"] for s in status["ha"]["services"]] == ["started"]
    text = render_text(report)
    assert "reset of stack 'lab' (snapshot 'baseline'): done" in text and "in all" in text
    assert '"ok": true' in render_json(report)


def test_reset_without_a_baseline_touches_nothing(lab):
    report = lab.snapshots().reset()
    assert not report.ok
    assert report.error == ("no snapshot 'baseline' on pve1, pve2, pve3; take one first with "
                            "`python -m pvelab baseline -s lab` on a healthy lab")
    assert not [p for p in lab.posts() if "/status/" in p]


def test_a_storage_without_snapshots_fails_and_restarts_the_nodes(lab):
    lab.outer.storages["local"]["content"] += ",images"
    for vmid in VMIDS:
        lab.outer.vm(vmid).config["scsi0"] = f"local:{vmid}/vm-{vmid}-disk-0.raw,size=32G"
    report = lab.snapshots().take_baseline()
    assert not report.ok
    assert "snapshot feature is not available" in report.error
    assert lab.all_running() and report.still_stopped == []
    assert all(not lab.outer.vm(v).snapshots for v in VMIDS)


def test_an_unhealthy_lab_gets_no_baseline(lab):
    lab.sim.power(9102, False)  # pve3 is off
    lab.outer.vm(9102).status = "stopped"
    report = lab.snapshots().take_baseline()
    assert not report.ok
    assert report.error.startswith("the lab is not healthy; a baseline must be a good state to return to: ")
    assert "node pve3 is offline" in report.error
    assert not [p for p in lab.posts() if p.endswith("/snapshot")]


def test_reset_that_never_gets_healthy_says_what_it_saw(lab):
    assert lab.snapshots().take_baseline().ok
    lab.sim.boot_after = 1e9  # the nodes never come back after the reset
    report = lab.snapshots(ResetTiming(poll_s=0.02, task_deadline_s=5, shutdown_s=5, healthy_deadline_s=0.3)).reset()
    assert not report.ok
    assert report.error.startswith("timed out after 0.3 s waiting for quorum, every member online, Ceph HEALTH_OK "
                                   "and every HA service started; last seen: ")
    assert lab.all_running()  # the VMs are started: the lab itself is the problem


def test_cli_refuses_without_yes_off_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    assert main(["reset", "-s", "lab"]) == 2
    err = capsys.readouterr().err
    assert "reset hard-stops every nested node and throws away everything done since the baseline" in err
    assert "pass --yes" in err

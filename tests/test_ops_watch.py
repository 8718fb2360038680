"""`status --watch` against the fake nested cluster: frames redrawn as the cluster changes."""
from __future__ import annotations

import io
import json

import pytest
import yaml

import pvelab.ops.cli as ops_cli
from ops_fixtures import (CLI_TIMEOUT, FAST, ROOT_PASSWORD, NestedFake, ca, lab_raw, lab_sim, nested_urls,  # noqa: F401
                          ops_servers, serve)
from pvelab.cli import main
from pvelab.ops.api import Clock
from pvelab.ops.connect import nested_client
from pvelab.ops.i18n import translate
from pvelab.ops.status import gather
from pvelab.ops.watch import HOME_CLEAR, watch
from pvelab.spec import parse_spec
from pvelab.stackfile import load_stack

SPEC = parse_spec(lab_raw())


@pytest.fixture(autouse=True)
def english_locale(monkeypatch):
    monkeypatch.setenv("LC_ALL", "C.UTF-8")


@pytest.fixture
def cluster(serve):
    return serve(NestedFake(lab_sim()))


def client(cluster, ca):
    return nested_client(SPEC, nested_urls(cluster), ca, FAST, password=ROOT_PASSWORD)


class ThenPowerOff(Clock):
    """Between the first and the second frame, pve1 (running the HA VM) loses power."""

    def __init__(self, sim):
        self.sim, self.sleeps = sim, []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        if len(self.sleeps) == 1:
            self.sim.power(9100, False)


def test_watch_redraws_as_the_cluster_changes(cluster, ca):
    out = io.StringIO()
    clock = ThenPowerOff(cluster.sim)
    assert watch(client(cluster, ca), out, interval_s=2, count=2, clock=clock, tty=True) == 1
    frames = out.getvalue().split(HOME_CLEAR)[1:]
    assert len(frames) == 2 and len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= 2
    assert frames[0].startswith("pve-lab status ") and "every 2 s (Ctrl-C to stop)" in frames[0]
    assert "Healthy." in frames[0]
    assert "vm:100   pve1  started  started    running on pve1" in frames[0]
    # HA still says started while the VM is gone with its node: the frame shows the truth
    assert "node pve1 is offline" in frames[1]
    assert "HA service vm:100 is started on pve1 but its guest is unknown" in frames[1]  # its node is gone


def test_watch_off_a_terminal_and_as_json_lines(cluster, ca):
    out = io.StringIO()
    assert watch(client(cluster, ca), out, interval_s=0.01, count=2, tty=False) == 0
    assert HOME_CLEAR not in out.getvalue() and out.getvalue().count("pve-lab status ") == 2
    out = io.StringIO()
    assert watch(client(cluster, ca), out, interval_s=0.01, count=2, fmt="json") == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["healthy"] for line in lines)


class CtrlC(Clock):
    def sleep(self, seconds):
        raise KeyboardInterrupt


def test_ctrl_c_ends_the_watch_cleanly(cluster, ca):
    out = io.StringIO()
    assert watch(client(cluster, ca), out, interval_s=5, clock=CtrlC(), tty=False) == 0
    assert out.getvalue().count("pve-lab status ") == 1


def test_watch_in_japanese(cluster, ca):
    out = io.StringIO()
    watch(client(cluster, ca), out, interval_s=5, count=1, tty=False, translate=lambda t: translate(t, "ja"))
    assert "5 秒ごとに更新（Ctrl-C で終了）" in out.getvalue() and "正常です。" in out.getvalue()


def test_cli_watch(cluster, ca, tmp_path, monkeypatch, capsys):
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    args = ["status", "-s", "t", "--nested-ca", ca, "--watch", "--interval", "0.01", "--count", "2", *CLI_TIMEOUT]
    assert main(args + [f"--nested-url={u}" for u in nested_urls(cluster)]) == 0
    assert capsys.readouterr().out.count("Healthy.") == 2


def test_status_shows_a_frozen_started_service(cluster, ca):
    cluster.sim.power(9101, False)
    cluster.sim.power(9102, False)  # quorum lost: HA freezes vm:100 as 'started'
    gather(client(cluster, ca))
    cluster.sim.power(9100, False)
    cluster.sim.power(9100, True)  # pve1 boots again, alone: no quorum, so its LRM does not start the VM
    cluster.sim.clock.sleep(cluster.sim.boot_after * cluster.sim.scale)  # the lab time its boot takes
    assert cluster.sim.up("pve1")
    report = gather(client(cluster, ca))
    assert report["ha"]["services"][0]["state"] == "started"
    assert report["guests"]["vm:100"]["status"] == "stopped"
    assert "HA service vm:100 is started on pve1 but its guest is stopped (not running yet, or frozen while " \
           "quorum was lost)" in report["problems"]


def test_drill_view_redraws_the_status_above_the_progress(cluster, ca):
    from pvelab.ops.watch import DrillView, TickingClock

    out = io.StringIO()
    view = DrillView(client(cluster, ca), out, interval_s=0.0, tty=True)
    clock = TickingClock(Clock(), view.tick)
    view.line("drill ha: vm:100 runs on pve1; stopping that node hard")
    cluster.sim.power(9100, False)
    view.line("  +    0.0 s  pve1 powered off (outer VM 9100 stopped hard)")
    clock.sleep(0)  # a drill's wait between two polls: the status is read again
    frames = out.getvalue().split(HOME_CLEAR)[1:]
    assert len(frames) == 3
    assert "Healthy." in frames[0] and frames[0].rstrip().endswith("stopping that node hard")
    assert "node pve1 is offline" in frames[2] and frames[2].rstrip().endswith("stopped hard)")
    plain = io.StringIO()  # off a terminal: just the lines
    DrillView(client(cluster, ca), plain, tty=False).line("drill ha: something")
    assert plain.getvalue() == "drill ha: something\n"

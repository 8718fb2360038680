"""`drill ha` / `drill quorum` against a fake outer host and a fake nested cluster wired together (LabSim).

Lab seconds run at 4 ms each of the LabSim's SimClock, which moves only when the drill waits (a poll
of 0.02 s is 5 lab seconds): every run sees the same states at the same times, however loaded the machine.
"""
from __future__ import annotations

import io
import json

import pytest
import yaml

import pvelab.ops.cli as ops_cli
from ops_fixtures import (CLI_TIMEOUT, FAST, ROOT_PASSWORD, TOKEN, NestedFake, ca, lab_raw, lab_sim,  # noqa: F401
                          nested_urls, ops_servers, outer_fake, serve, use_sim_clock)
from pvelab.cli import main
from pvelab.ops.api import Clock
from pvelab.ops.connect import nested_client, outer_client
from pvelab.ops.drill import DrillTiming, render_json, render_text, run_drill
from pvelab.ops.migrate import run_migrate
from pvelab.ops.partition import run_partition, with_link_down
from pvelab.ops.status import gather
from pvelab.spec import parse_spec
from pvelab.stackfile import load_stack

SCALE = 0.004
TIMING = DrillTiming(poll_s=0.02, task_deadline_s=5, recovery_deadline_s=5, rejoin_deadline_s=5, observe_s=0.3)


class Lab:
    def __init__(self, serve, ca, **sim_args):
        self.sim = lab_sim(scale=SCALE, start_after=40, **sim_args)
        self.outer = serve(outer_fake(self.sim, lab_vms=True))
        self.nested = serve(NestedFake(self.sim))
        self.ca = ca
        self.lines: list[str] = []

    def run(self, kind, raw=None, timing=TIMING, clock=None, ping=None):
        spec = parse_spec(raw or lab_raw())
        clock = clock or self.sim.clock  # the drill's waits are what moves the lab's time on
        outer = outer_client(spec, self.outer.url, self.ca, FAST, self.sim.clock, token=TOKEN)
        nested = nested_client(spec, nested_urls(self.nested), self.ca, FAST, self.sim.clock, password=ROOT_PASSWORD)
        if kind == "partition":
            return run_partition(spec, outer, nested, timing, clock, out=self.lines.append, ping=ping)
        if kind.startswith("migrate"):
            target = kind.partition(":")[2] or None
            return run_migrate(spec, outer, nested, timing, clock, out=self.lines.append, target=target, ping=ping)
        return run_drill(kind, spec, outer, nested, timing, clock, out=self.lines.append, ping=ping)

    def nic(self, vmid=9100):
        return self.outer.vm(vmid).config["net0"]

    def outer_puts(self):
        return [p.split("/qemu/")[1] for m, p, _ in self.outer.requests if m == "PUT" and "/qemu/" in p]

    def outer_posts(self):
        return [p.split("/qemu/")[1] for m, p, _ in self.outer.requests if m == "POST" and "/status/" in p]

    def all_running(self):
        return all(vm.status == "running" for vm in self.outer.vms)


@pytest.fixture
def lab(serve, ca):
    return lambda **sim_args: Lab(serve, ca, **sim_args)



@pytest.fixture(autouse=True)
def english_locale(monkeypatch):
    """The text assertions below are English: the locale must not pick Japanese (see test_ops_i18n.py)."""
    monkeypatch.setenv("LC_ALL", "C.UTF-8")

def ha_states(report):
    return [e.what.removeprefix("vm:100 ") for e in report.events if e.what.startswith("vm:100 ")]


def test_ha_drill_measures_the_failover(lab):
    lab = lab()  # pve1 runs the VM and is the HA master too (the harder case)
    power = lab.sim.power

    def power_and_blip(vmid, on):  # the HA status API blips after the power failure and while pve1 rejoins
        power(vmid, on)
        if not on:
            lab.nested.fail("GET", "/api2/json/cluster/ha/status/current", 503, "Service Unavailable", times=2)
        else:  # a non-transient error while nodes rejoin must not fail the drill either
            lab.nested.fail("GET", "/api2/json/cluster/ha/status/current", 500, "cfs-lock timeout", times=1)

    lab.sim.power = power_and_blip
    report = lab.run("ha")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    # the new master fences and recovers in one round: no 'fence', no 'recovery' in the API; then failback
    assert ha_states(report) == ["started on pve1", "starting on pve2", "started on pve2", "migrate on pve2",
                                 "started on pve1"]
    whats = [e.what for e in report.events]
    assert whats.index("VM 100 running on pve2") < whats.index("pve1 powered on (outer VM 9100 started)")
    assert whats[-1] == "VM 100 running on pve1"
    assert any("HA never showed 'fence' for vm:100: pve1 was also the HA master" in f for f in report.findings)
    # manager lock 120 s + the new master's fence delay 60 s + the start (40 s here) after the power failure
    assert 220 * SCALE <= report.recovery_s < TIMING.recovery_deadline_s
    assert report.failback_s is not None and report.failback_s > report.recovery_s
    assert any(line.startswith("failback to pve1 at +") for line in lab.lines)
    assert report.stopped == ["pve1"] and report.still_stopped == []
    assert lab.outer_posts() == ["9100/status/stop", "9100/status/start"]  # a hard stop, not a shutdown
    assert lab.all_running() and lab.sim.quorate() and all(lab.sim.up(n) for n in ("pve1", "pve2", "pve3"))
    assert report.rejoin_s is not None
    text = render_text(report)
    assert "time to recovery:" in text and "failback to the preferred node at +" in text
    # the lab is settled when the drill ends: status is healthy at once
    spec = parse_spec(lab_raw())
    after = gather(nested_client(spec, nested_urls(lab.nested), lab.ca, FAST, password=ROOT_PASSWORD))
    assert after["healthy"], after["problems"]


def test_ha_drill_shows_fence_when_the_master_survives(lab):
    lab = lab(master="pve2")
    report = lab.run("ha")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert ha_states(report)[:4] == ["started on pve1", "fence on pve1", "starting on pve2", "started on pve2"]
    # fence at 60 s, the agent lock expires at 120 s, then the start (40 s here)
    assert 160 * SCALE <= report.recovery_s < 220 * SCALE + 1.0
    assert not any("never showed 'fence'" in f for f in report.findings)
    # the key journal lines next to the timeline: link down, fence, recovery (from the master pve2)
    logged = [(x["node"], x["line"].split(": ", 1)[1]) for x in report.log_lines]
    assert ("pve2", "[KNET  ] link: host: 1 link: 0 is down") in logged
    assert ("pve2", "service 'vm:100': state changed from 'started' to 'fence'") in logged
    assert ("pve2", "recover service 'vm:100' from fenced node 'pve1' to node 'pve2'") in logged
    assert "key log lines since the first stop" in render_text(report)
    assert json.loads(render_json(report))["log_lines"] == report.log_lines


def test_ha_drill_without_failback_leaves_the_vm_where_it_went(lab):
    lab = lab(failback=False)
    report = lab.run("ha")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert report.failback_s is None and "migrate on pve2" not in ha_states(report)
    assert lab.sim.ha_node == "pve2"


def test_ha_drill_times_out_cleanly_and_restarts_the_node(lab):
    lab = lab(stuck="recovery")  # no node can take the VM
    report = lab.run("ha", timing=DrillTiming(poll_s=0.02, task_deadline_s=5, recovery_deadline_s=1.0))
    assert not report.ok
    assert report.error.startswith("HA did not recover vm:100: timed out after 1 s")
    assert "last seen: recovery on pve1" in report.error
    assert report.still_stopped == [] and lab.all_running()
    assert lab.outer_posts() == ["9100/status/stop", "9100/status/start"]


def test_failed_restart_names_the_node_and_the_command(lab, tmp_path, monkeypatch, capsys):
    lab = lab(stuck="fence")
    lab.outer.fail("POST", "/api2/json/nodes/pve/qemu/9100/status/start", 500, "start failed: disk missing")
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    use_sim_clock(monkeypatch, lab.sim.clock)
    args = ["drill", "ha", "-s", "t", "--outer-url", lab.outer.url, "--outer-ca", lab.ca, "--nested-ca", lab.ca,
            "--retries", "2", "--poll", "0.02", "--recovery-timeout", "0.5", "--yes", *CLI_TIMEOUT]
    args += [f"--nested-url={u}" for u in nested_urls(lab.nested)]
    assert main(args) == ops_cli.EXIT_STILL_STOPPED
    out = capsys.readouterr().out
    assert "node pve1 (outer VM 9100 on pve) may still be STOPPED or stop soon" in out
    assert "qm start 9100" in out and "pvesh create /nodes/pve/qemu/9100/status/start" in out
    assert "STILL STOPPED (start them, see above): pve1" in out
    assert TOKEN.split("=")[1] not in out and ROOT_PASSWORD not in out


class InterruptAfterStop(Clock):
    """Ctrl-C during the first wait after the node was stopped."""

    def sleep(self, seconds):
        raise KeyboardInterrupt


def test_ctrl_c_after_stopping_starts_the_node_again(lab):
    lab = lab()
    report = lab.run("ha", clock=InterruptAfterStop())
    assert not report.ok and report.error == "interrupted (Ctrl-C)"
    assert lab.outer_posts() == ["9100/status/stop", "9100/status/start"]
    assert lab.all_running() and report.still_stopped == []


def test_stop_task_past_its_deadline_is_reported(lab):
    lab = lab()
    lab.outer.time_scale = 1.0
    lab.outer.vm(9100).stop_secs = 30  # the outer host takes 30 s to stop the VM
    report = lab.run("ha", timing=DrillTiming(poll_s=0.02, task_deadline_s=0.2))
    assert report.error.startswith("timed out after 0.2 s waiting for the outer host's stop of pve1 (VM 9100) "
                                   "to finish")
    assert report.still_stopped == ["pve1"]
    assert any("its stop task is still running" in line for line in lab.lines)
    assert any("qm start 9100" in line for line in lab.lines)


class BrokenClock(Clock):
    def sleep(self, seconds):
        raise RuntimeError("a bug")


def test_unexpected_error_still_starts_the_node_again(lab):
    lab = lab()
    with pytest.raises(RuntimeError, match="a bug"):
        lab.run("ha", clock=BrokenClock())
    assert lab.outer_posts() == ["9100/status/stop", "9100/status/start"] and lab.all_running()
    assert "starting the stopped node(s) again ..." in lab.lines


def test_quorum_drill_shows_the_survivor_without_quorum(lab):
    lab = lab()
    report = lab.run("quorum")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert report.stopped == ["pve1", "pve3"]  # the HA VM's node first; pve2 (LRM idle) survives alone
    findings = "\n".join(report.findings)
    assert "pve2: quorate no, 1 of 3 online" in findings
    assert "/etc/pve is read-only on pve2: pmxcfs refuses writes" in findings and "Permission denied" in findings
    assert "no HA recovery in 0.3 s: vm:100 stayed started on pve1" in findings
    assert "HA's own view: master pve1 'old timestamp - dead?', quorum entry 'No quorum on node 'pve2'!'" in findings
    assert "warning" not in findings and lab.sim.resets == []
    # after quorum returns HA still says 'started' while the VM is not running yet: the drill waits for it
    whats = [e.what for e in report.events]
    assert whats.index("all 3 members online and quorate again") < whats.index("VM 100 running on pve1")
    assert lab.all_running() and lab.sim.quorate() and lab.sim.vm_runs()
    assert lab.nested.node_config["pve2"] == {}  # the probe wrote nothing
    logged = [(x["node"], x["line"].split(": ", 1)[1]) for x in report.log_lines]
    assert ("pve2", "[status] notice: node lost quorum") in logged
    assert ("pve2", "[status] notice: node has quorum") in logged


def test_quorum_drill_after_a_failover_keeps_the_idle_node(lab):
    lab = lab()
    assert lab.run("ha").ok
    # pve2 ran the VM until the failback: its LRM stays active (and holds the watchdog) for 10 minutes
    report = lab.run("quorum")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert report.stopped == ["pve1", "pve2"] and lab.sim.resets == []
    assert "pve3: quorate no" in "\n".join(report.findings)


def test_quorum_drill_warns_and_detects_a_watchdog_reset(lab):
    lab = lab()
    lab.sim.service_left.update(pve2=lab.sim.now(), pve3=lab.sim.now())  # both ran HA services lately
    report = lab.run("quorum", timing=DrillTiming(poll_s=0.02, task_deadline_s=5, recovery_deadline_s=5,
                                                  rejoin_deadline_s=5, observe_s=0.5))
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert any(line.startswith("warning: pve2 keep(s) an active HA agent") for line in lab.lines)
    assert [n for n, _ in lab.sim.resets] == ["pve2"]
    assert any("pve2 rebooted during the drill" in f for f in report.findings)


def test_a_refused_write_counts_only_with_pmxcfs_permission_denied(lab):
    lab = lab()
    lab.nested.fail("PUT", "/api2/json/nodes/pve2/config", 500, "cluster not ready - no quorum?")
    report = lab.run("quorum")
    findings = "\n".join(report.findings)
    assert "does not prove /etc/pve read-only: PUT /nodes/pve2/config" in findings
    assert "/etc/pve is read-only on pve2" not in findings


def test_unhealthy_cluster_refuses_and_stops_nothing(lab):
    lab = lab()
    lab.sim.power(9102, False)
    lab.outer.vm(9102).status = "stopped"
    report = lab.run("ha")
    assert not report.ok and "not healthy before the drill" in report.error and "offline: pve3" in report.error
    assert lab.outer_posts() == []


def test_ha_drill_needs_an_ha_test_vm(lab):
    lab = lab()
    raw = lab_raw()
    raw["ha"] = {"enabled": False}
    report = lab.run("ha", raw)
    assert not report.ok and "pve-lab:lab.ha.enabled is false" in report.error
    assert lab.outer_posts() == []


@pytest.mark.parametrize("flag,value", [("--poll", "0"), ("--recovery-timeout", "-5"), ("--retries", "zero")])
def test_bad_timing_flags_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["drill", "ha", flag, value])
    assert exc.value.code == 2 and f"argument {flag}: '{value}'" in capsys.readouterr().err


def test_drill_asks_first_and_refuses_without_yes_off_a_terminal(lab, tmp_path, monkeypatch, capsys):
    lab = lab()
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    args = ["drill", "quorum", "-s", "t", "--outer-url", lab.outer.url, "--outer-ca", lab.ca, "--nested-ca", lab.ca]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "drill quorum hard-stops 2 of the 3 nested nodes of stack 't' (outer VMs 9100, 9101, 9102 on pve)" in err
    assert "pass --yes" in err
    assert lab.outer_posts() == [] and lab.all_running()


ORIGINAL_NET0 = "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=0"


def test_partition_drill_cuts_the_ha_node_off_and_heals_it(lab):
    lab = lab(master="pve2")
    report = lab.run("partition")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    whats = [e.what for e in report.events]
    assert whats[:3] == ["vm:100 started on pve1",
                         "pve1 cut off: link_down on net0 of outer VM 9100 (the node keeps running)",
                         "majority keeps quorum: 2 of 3 online, pve1 offline"]
    assert "pve1 (isolated, asked through the guest agent): pvecm status says Quorate: No" in whats
    assert any(w.startswith("write on pve1 (isolated) refused: touch: cannot touch") for w in whats)
    assert ha_states(report)[:4] == ["started on pve1", "fence on pve1", "starting on pve2", "started on pve2"]
    assert any(w.startswith("Ceph: 2 of 3 OSDs up (OSD_DOWN: 1 osds down)") for w in whats)
    assert whats.index("pve1 reconnected: links of outer VM 9100 restored") > whats.index("VM 100 running on pve2")
    assert "VM 100 running on pve1" in whats  # failback after the heal
    assert whats[-1].startswith("pve1 was reset during the drill (uptime now ")
    findings = "\n".join(report.findings)
    assert "pve1 (isolated): no quorum (pvecm status 'Quorate: No')" in findings
    assert "/etc/pve is read-only on pve1 (isolated): pmxcfs refuses writes" in findings
    assert "the majority (pve2, pve3) keeps quorum: 2 of 3 online" in findings
    assert "HA fenced pve1 and restarted vm:100 on pve2" in findings
    assert "Ceph marked the isolated node's OSDs down: 2 of 3 up" in findings
    assert "pve1 rebooted during the drill" in findings  # its LRM held the watchdog: self-fenced
    assert [n for n, _ in lab.sim.resets] == ["pve1"]
    assert report.cut == ["pve1"] and report.stopped == []
    # powered all along, links as before, no power action at all
    assert lab.outer_posts() == [] and lab.all_running()
    assert lab.nic() == ORIGINAL_NET0 and lab.outer.vm(9100).pending == {}
    assert lab.outer_puts() == ["9100/config", "9100/config"]
    assert lab.sim.ha_node == "pve1" and lab.sim.vm_runs() and lab.sim.quorate()
    text = render_text(report)
    assert "time to recovery:" in text and "(cut -> the VM runs on another node)" in text


def test_partition_drill_restores_the_links_when_it_fails(lab):
    lab = lab(stuck="fence")
    report = lab.run("partition", timing=DrillTiming(poll_s=0.02, task_deadline_s=5, recovery_deadline_s=1.0))
    assert not report.ok and report.error.startswith("HA did not recover vm:100")
    assert "restoring the cut network link(s) ..." in lab.lines
    assert lab.nic() == ORIGINAL_NET0 and report.still_cut == []


def test_partition_drill_prints_the_manual_restore_when_it_cannot(lab):
    lab = lab(stuck="fence")
    calls = {"n": 0}
    apply = lab.outer._apply_config

    async def refuse_the_second(vm, user, p):  # the cut works, the restore is refused
        calls["n"] += 1
        if calls["n"] > 1:
            from fakepve.model import PveError
            raise PveError(500, "VM 9100 qmp command 'set_link' failed - got timeout")
        await apply(vm, user, p)

    lab.outer._apply_config = refuse_the_second
    report = lab.run("partition", timing=DrillTiming(poll_s=0.02, task_deadline_s=5, recovery_deadline_s=0.5))
    assert report.still_cut == ["pve1"]
    out = "\n".join(lab.lines)
    assert "node pve1 (outer VM 9100 on pve) may still be CUT OFF" in out
    assert f"qm set 9100 --net0 '{ORIGINAL_NET0}'" in out
    assert f"pvesh set /nodes/pve/qemu/9100/config --net0 '{ORIGINAL_NET0}'" in out
    assert "STILL CUT OFF (restore their links, see above): pve1" in render_text(report)


def test_partition_drill_refuses_when_the_link_change_would_only_pend(lab):
    lab = lab()
    lab.outer.vm(9100).config["hotplug"] = "disk,usb"  # no network hotplug: link_down would wait for a restart
    report = lab.run("partition")
    assert not report.ok and "did not apply link_down on net0 of VM 9100 live" in report.error
    assert lab.nic() == ORIGINAL_NET0 and lab.outer.vm(9100).pending == {} and lab.sim.quorate()


def test_link_down_keeps_the_other_options():
    assert with_link_down(ORIGINAL_NET0, True) == ORIGINAL_NET0 + ",link_down=1"
    assert with_link_down(ORIGINAL_NET0 + ",link_down=1", False) == ORIGINAL_NET0
    assert with_link_down("virtio=AA,link_down=0,bridge=vmbr0", True) == "virtio=AA,bridge=vmbr0,link_down=1"


def test_partition_drill_asks_first(lab, tmp_path, monkeypatch, capsys):
    lab = lab()
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    assert main(["drill", "partition", "-s", "t"]) == 2
    err = capsys.readouterr().err
    assert ("drill partition cuts the network links (link_down) of the nested node that runs the HA test VM of "
            "stack 't' (outer VMs 9100, 9101, 9102 on pve), then restores them.") in err
    assert lab.outer_puts() == []


def test_migrate_drill_reports_the_downtime_and_the_failback(lab):
    lab = lab()
    report = lab.run("migrate")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert ha_states(report) == ["started on pve1", "migrate on pve1", "started on pve2", "migrate on pve2",
                                 "started on pve1"]
    whats = [e.what for e in report.events]
    assert "migration of vm:100 to pve2 requested" in whats and "VM 100 running on pve2" in whats
    assert report.downtime_ms == 37
    assert any(w.startswith("QEMU paused the VM for 37 ms for the switch-over (task UPID:pve1:") for w in whats)
    assert any("the VM kept running except for 37 ms" in f for f in report.findings)
    assert not any(f.startswith("unexpected") for f in report.findings)
    assert report.failback_s is not None  # the rule prefers pve1 and failback is on: HA moved it back
    assert lab.outer_posts() == [] and lab.outer_puts() == []  # nothing powered off or cut
    posts = [p for m, p, _ in lab.nested.requests if m == "POST" and "/access/" not in p]
    assert posts == ["/api2/json/cluster/ha/resources/vm:100/migrate"]
    text = render_text(report)
    assert "migration:" in text and "downtime: 37 ms" in text
    assert json.loads(render_json(report))["downtime_ms"] == 37


def test_a_slow_api_does_not_change_what_the_drill_sees(lab):
    """Lab time moves only when the drill waits: an API that answers slowly (a loaded machine; here 50 ms a
    request, 12.5 lab seconds on a real-time sim) must not hide the short 'migrate' state (15 lab s)."""
    lab = lab()
    lab.nested.answer_delay_s = 0.05
    report = lab.run("migrate")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert ha_states(report) == ["started on pve1", "migrate on pve1", "started on pve2", "migrate on pve2",
                                 "started on pve1"]


def test_migrate_drill_to_a_chosen_node_without_failback(lab):
    lab = lab(failback=False)
    report = lab.run("migrate:pve3")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert ha_states(report)[-1] == "started on pve3" and report.failback_s is None
    assert lab.sim.ha_node == "pve3"


def test_migrate_drill_refuses_a_bad_target(lab):
    lab = lab()
    report = lab.run("migrate:pve1")
    assert not report.ok and report.error == "--to pve1: the HA test VM already runs there"
    report = lab.run("migrate:pve9")
    assert not report.ok and report.error.startswith("--to pve9: not a member of the cluster")
    assert [p for m, p, _ in lab.nested.requests if m == "POST" and "/access/" not in p] == []


def test_quorum_drill_with_a_qdevice_keeps_two_nodes_quorate(serve, ca):
    from ops_fixtures import LabSim, outer_fake

    sim = LabSim({"pve1": 9100, "pve2": 9101}, scale=SCALE, start_after=40, qdevice=True)
    outer = serve(outer_fake(sim))
    outer.add_lab_vms((9100, 9101))
    nested = serve(NestedFake(sim))
    raw = lab_raw()
    raw.update(nodes={"count": 2, "qdevice": True}, ha={"enabled": False}, ceph={"enabled": False})
    spec = parse_spec(raw)
    lines = []
    report = run_drill("quorum", spec, outer_client(spec, outer.url, ca, FAST, sim.clock, token=TOKEN),
                       nested_client(spec, nested_urls(nested), ca, FAST, sim.clock, password=ROOT_PASSWORD), TIMING,
                       sim.clock, out=lines.append)
    assert report.ok, render_text(report) + "\n" + "\n".join(lines)
    assert report.stopped == ["pve2"]  # half of two nodes; pve1 keeps quorum with the QDevice's vote
    whats = [e.what for e in report.events]
    assert "quorum kept: 1 of 2 members online, plus the QDevice's vote" in whats
    assert any("pve1: still quorate with 1 of 2 nodes: the QDevice casts the tie-breaking vote" in f
               for f in report.findings)
    assert sim.quorate() and all(vm.status == "running" for vm in outer.vms)
    sim.qdevice = False  # without it, the same failure would lose quorum
    sim.power(9101, False)
    assert not sim.quorate()


def test_cli_migrate_needs_no_outer_token(lab, tmp_path, monkeypatch, capsys):
    lab = lab()
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN", raising=False)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    use_sim_clock(monkeypatch, lab.sim.clock)
    args = ["drill", "migrate", "-s", "t", "--to", "pve3", "--nested-ca", lab.ca, "--poll", "0.02", "--format", "json",
            *CLI_TIMEOUT]
    assert main(args + [f"--nested-url={u}" for u in nested_urls(lab.nested)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "migrate" and data["ok"] and data["downtime_ms"] == 37
    assert lab.outer.requests == []


def test_cli_drill_with_watch_off_a_terminal_prints_the_progress(lab, tmp_path, monkeypatch, capsys):
    lab = lab(master="pve2")
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    use_sim_clock(monkeypatch, lab.sim.clock)
    args = ["drill", "ha", "-s", "t", "--outer-url", lab.outer.url, "--outer-ca", lab.ca, "--nested-ca", lab.ca,
            "--poll", "0.02", "--yes", "--watch", "--lang", "ja", *CLI_TIMEOUT]
    assert main(args + [f"--nested-url={u}" for u in nested_urls(lab.nested)]) == 0
    out = capsys.readouterr().out
    assert "pve1 の電源断（外側 VM 9100 を強制停止）" in out and "ドリル ha: 完了" in out
    assert "\x1b[H" not in out  # not a terminal: no redraw


def test_ha_drill_pings_the_test_vm_and_reports_the_downtime_a_client_sees(lab):
    lab = lab(master="pve2")
    report = lab.run("ha", ping="10.10.10.50")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert "pinging 10.10.10.50 from pve2 every 0.5 s (ping -D -O, through the guest agent)" in lab.lines
    p = report.ping
    assert p["address"] == "10.10.10.50" and p["from_node"] == "pve2" and p["sent"] > p["answered"] > 0
    # the VM stops with its node (+0) and answers again once it runs on pve2 (fence 60 + lock 120 + start 40)
    assert p["first_lost_s"] < 10 * SCALE + 0.2 and p["downtime_s"] >= 150 * SCALE
    assert p["answered_again_s"] <= report.recovery_s + 0.2
    whats = [e.what for e in report.events]
    lost = whats.index("ping 10.10.10.50: no answer (from pve2)")
    assert whats.index("pve1 powered off (outer VM 9100 stopped hard)") <= lost + 1
    assert any(w.startswith("ping 10.10.10.50: answers again after ") for w in whats)
    assert [e.t for e in report.events] == sorted(e.t for e in report.events)
    assert any(f.startswith("a client saw 10.10.10.50 down for ") for f in report.findings)
    pinged = [(c, a) for c, a in lab.outer.vm(9101).agent_requests if c == "exec"]
    assert pinged[0][1]["command"][2].startswith("echo $$ > /run/pvelab-ping.pid; exec ping -D -O -n -i 0.5 -W 1")
    assert pinged[-1][1]["command"][2].startswith("kill -INT")
    assert json.loads(render_json(report))["ping"]["downtime_s"] == p["downtime_s"]


def test_migrate_drill_ping_sees_no_downtime(lab):
    lab = lab()
    report = lab.run("migrate", ping="10.10.10.50")
    assert report.ok, render_text(report) + "\n" + "\n".join(lab.lines)
    assert report.ping["outages"] == [] and report.ping["answered"] == report.ping["sent"] > 0
    assert any("answered every ping" in f for f in report.findings)


def test_ping_takes_only_an_ip_address(capsys):
    from pvelab.ops.ping import start_argv

    with pytest.raises(ValueError):
        start_argv("10.0.0.1; reboot", 10)
    with pytest.raises(SystemExit):
        main(["drill", "ha", "--ping", "$(reboot)"])
    assert "argument --ping: '$(reboot)' is not an IP address" in capsys.readouterr().err


def test_ping_output_parsing():
    from pvelab.ops.ping import parse

    text = ("[1000.0] 64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.3 ms\n"
            "[1000.5] no answer yet for icmp_seq=2\n[1001.0] no answer yet for icmp_seq=3\n"
            "[1003.5] 64 bytes from 10.0.0.5: icmp_seq=8 ttl=64 time=0.3 ms\n"
            "[1010.0] no answer yet for icmp_seq=21\n")
    rep = parse(text, "10.0.0.5", "pve2", 1000.0)
    assert (rep.sent, rep.answered, rep.first_lost_s, rep.answered_again_s, rep.downtime_s) == (5, 2, 0.5, 3.5, 3.0)
    assert rep.outages == [[0.5, 3.5], [10.0, -1]]


GUEST_IMAGE = {"url": "https://cloud.debian.org/images/cloud/trixie/20260101-0000/"
                       "debian-13-genericcloud-amd64-20260101-0000.qcow2",
               "checksum": "0123456789abcdef" * 8, "checksumAlgorithm": "sha512",  # made up: nothing is downloaded
               "fileName": "debian-13-genericcloud-amd64-20260101-0000.qcow2"}


def _guest_stack(tmp_path, monkeypatch, lab):
    """A stack whose HA test VM boots an OS (ha.testVmImage): its address is 10.10.10.14 (after the 3 nodes)."""
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump(
        {"config": {"pve-lab:lab": {**lab_raw(), "ha": {"testVmImage": GUEST_IMAGE}}}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    use_sim_clock(monkeypatch, lab.sim.clock)
    return ["-s", "t", "--outer-url", lab.outer.url, "--outer-ca", lab.ca, "--nested-ca", lab.ca, "--poll", "0.02",
            "--yes", *CLI_TIMEOUT, *[f"--nested-url={u}" for u in nested_urls(lab.nested)]]


def _pings(lab):
    return [a["command"][2] for c, a in lab.outer.vm(9101).agent_requests + lab.outer.vm(9102).agent_requests
            if c == "exec" and "exec ping" in a["command"][2]]


def test_ha_drill_pings_the_booted_test_vm_by_default(lab, tmp_path, monkeypatch, capsys):
    lab = lab(master="pve2")
    args = _guest_stack(tmp_path, monkeypatch, lab)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(["drill", "ha", *args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ping"]["address"] == "10.10.10.14" and data["ping"]["downtime_s"] > 0
    assert [p.rsplit(" ", 1)[-1] for p in _pings(lab)] == ["10.10.10.14"]


def test_ping_overrides_and_no_ping_skips_the_default(lab, tmp_path, monkeypatch, capsys):
    lab = lab()
    args = _guest_stack(tmp_path, monkeypatch, lab)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(["drill", "migrate", *args, "--to", "pve3", "--ping", "10.10.10.50", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ping"]["address"] == "10.10.10.50"
    before = len(_pings(lab))
    assert main(["drill", "migrate", *args, "--to", "pve2", "--no-ping", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ping"] is None and len(_pings(lab)) == before
    with pytest.raises(SystemExit):
        main(["drill", "ha", *args, "--ping", "10.10.10.50", "--no-ping"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_migrate_with_the_default_ping_says_why_it_needs_the_outer_token(lab, tmp_path, monkeypatch, capsys):
    lab = lab()
    args = _guest_stack(tmp_path, monkeypatch, lab)
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN", raising=False)
    assert main(["drill", "migrate", *args, "--to", "pve3"]) == 2
    err = capsys.readouterr().err
    assert "PVE_LAB_OUTER_API_TOKEN is not set" in err
    assert "pings the HA test VM at 10.10.10.14 through the outer host's guest agent; --no-ping skips" in err
    assert lab.outer.requests == [] and lab.nested.requests == []
    # without an OS in the test VM nothing is pinged by default and migrate needs no outer token (test_cli_migrate_...)

"""`classroom preflight` (and `classroom up`'s own run of it) against a fake outer host (fakepve on 127.0.0.1):
the whole class summed per outer node against the host's real free memory, storage and VMIDs."""
from __future__ import annotations

import argparse
import io
import json

import pytest
import yaml

from ops_fixtures import GiB, TOKEN, ca, ops_servers, outer_fake, serve  # noqa: F401
from pvelab.classroom import cli as classroom_cli
from pvelab.classroom import run_cli
from pvelab.classroom.allocate import plan_class
from pvelab.classroom.preflight import CANNOT_CHECK, class_failed, render_class_text, run_class_preflight
from pvelab.ops.api import Retry
from pvelab.ops.connect import outer_client


def roster_doc(students: int = 8) -> dict:
    return {
        "class": "c1",
        "lab": {"outer": {"endpoint": "https://pve.example.internal:8006/", "storage": "local-lvm",
                          "imageStorage": "local", "bridge": "vmbr0"},
                "nodes": {"count": 3, "cores": 2, "memoryMiB": 6144, "systemDiskGiB": 32, "cephDisks": 1,
                          "cephDiskGiB": 32},
                "ha": {"testVms": 1, "testVmMemoryMiB": 512}},
        "allocation": {"vmidBase": 20000, "vmidBlock": 10, "supernet": "10.100.0.0/16", "subnetPrefix": 24,
                       "network": {"mode": "vlan", "tagBase": 1100}},
        # the roster trusts these capacities; the host has 64 GiB available on each node
        "outerNodes": [{"name": "pve", "memoryGiB": 200}, {"name": "pve2", "memoryGiB": 200}],
        "students": [{"id": f"s{i:02d}", "name": f"Student {i}"} for i in range(1, students + 1)],
    }


@pytest.fixture
def roster(tmp_path):
    path = tmp_path / "c1.yaml"
    path.write_text(yaml.safe_dump(roster_doc()))
    return path


@pytest.fixture
def host(serve):
    fake = serve(outer_fake())
    fake.nodes["pve2"] = {"online": True}
    fake.nested_on = ["pve", "pve2"]
    return fake


def preflight(fake, ca, plan):
    spec = plan.students[0].spec
    client = outer_client(spec, fake.url, ca, Retry(attempts=1, request_timeout_s=60), token=TOKEN)
    return run_class_preflight(plan, client)


def checks(report) -> dict:
    return {c.name: c for c in report.checks}


def test_the_class_is_summed_per_node_against_the_hosts_real_free_memory(host, ca, roster):
    plan = plan_class(roster)
    assert plan.ok  # `classroom plan` trusts the roster's 200 GiB per node
    reports = {r.node: r for r in preflight(host, ca, plan)}
    assert sorted(reports) == ["pve", "pve2"] and len(reports["pve"].students) == 4
    memory = checks(reports["pve"])["memory"]
    assert memory.status == "fail" and "72.0 GiB for 4 student lab(s) not built yet" in memory.detail
    assert "64.0 GiB available on 'pve'" in memory.detail
    assert class_failed(list(reports.values()))


def test_labs_already_built_are_not_counted_again(host, ca, roster):
    plan = plan_class(roster)
    on_pve = [s for s in plan.students if s.outer_node == "pve"]
    built = on_pve[0]
    for p in built.spec.node_plans:
        host.add_vm(p.vmid, p.hostname, node="pve", status="running", config={"tags": "pve-lab;pve-lab-node"})
    reports = {r.node: r for r in preflight(host, ca, plan)}
    assert reports["pve"].built == [built.student_id]
    memory = checks(reports["pve"])["memory"]
    assert memory.status == "pass" and "54.0 GiB for 3 student lab(s) not built yet (1 built already)" in memory.detail
    vmids = checks(reports["pve"])["VMIDs"]
    assert vmids.status == "pass" and "3 already this lab's VMs" in vmids.detail


def test_every_students_vmids_are_asked_of_the_host(host, ca, roster):
    plan = plan_class(roster)
    host.memory_available = 200 * GiB
    victim = plan.students[5]
    host.add_vm(victim.vmids[1], "database", node="pve2")
    reports = {r.node: r for r in preflight(host, ca, plan)}
    vmids = checks(reports[victim.outer_node])["VMIDs"]
    assert vmids.status == "fail" and f"{victim.vmids[1]} (qemu 'database' on pve2)" in vmids.detail


def test_thin_storage_overcommit_is_a_warning_and_thick_storage_fails(host, ca, roster):
    plan = plan_class(roster)
    host.memory_available = 200 * GiB
    host.storages["local-lvm"]["avail"] = 300 * GiB  # 4 labs x 3 x 65 GiB = 780 GiB
    reports = preflight(host, ca, plan)
    storage = checks(reports[0])["storage local-lvm"]
    assert storage.status == "warn" and "thin storage (lvmthin)" in storage.detail and "overcommitted" in storage.detail
    host.storages["local-lvm"]["type"] = "lvm"
    storage = checks(preflight(host, ca, plan)[0])["storage local-lvm"]
    assert storage.status == "fail" and "780.0 GiB needed" in storage.detail


def test_the_text_says_what_it_cannot_check(host, ca, roster):
    plan = plan_class(roster)
    text = render_class_text(plan, preflight(host, ca, plan), host.url)
    assert "not checked (cannot be seen through the PVE API" in text
    assert "drop traffic between student subnets" in text and CANNOT_CHECK[0][:40] in text


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    classroom_cli.register(sub)
    return parser.parse_args(argv)


def test_the_command_prints_per_node_checks_and_exits_1_on_a_failure(host, ca, roster, monkeypatch, capsys):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    args = parse(["classroom", "preflight", str(roster), "--outer-url", host.url, "--outer-ca", ca, "--format", "json"])
    assert args.func(args) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [n["node"] for n in doc["nodes"]] == ["pve", "pve2"] and doc["ok"] is False
    assert doc["notChecked"] == list(CANNOT_CHECK)


def test_classroom_up_runs_the_class_preflight_first_and_stops_on_a_failure(host, ca, roster, monkeypatch, tmp_path):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    started = []
    monkeypatch.setattr(run_cli, "make_backends", lambda *a, **kw: started.append(1))
    args = parse(["classroom", "up", str(roster), "--outer-url", host.url, "--outer-ca", ca,
                  "--log-dir", str(tmp_path / "logs"), "--project-dir", str(tmp_path)])
    out, err = io.StringIO(), io.StringIO()
    assert run_cli.run_command("up", args, out, err) == 2
    assert "the class preflight failed (nothing started" in err.getvalue()
    assert "pve: memory: 72.0 GiB for 4 student lab(s)" in err.getvalue()
    assert started == []

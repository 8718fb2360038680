"""`status` against a fake nested cluster (fakepve, one loopback port per node): healthy and broken clusters."""
from __future__ import annotations

import json

import pytest
import yaml

import pvelab.ops.cli as ops_cli
from ops_fixtures import (CLI_TIMEOUT, FAST, ROOT_PASSWORD, NestedFake, ca, closed_port_url, lab_raw,  # noqa: F401
                          lab_sim, nested_urls, ops_servers, serve)
from pvelab.cli import main
from pvelab.ops.api import ApiError
from pvelab.ops.connect import nested_client, nested_endpoints
from pvelab.ops.status import gather, parse_service, render_json, render_text
from pvelab.spec import parse_spec
from pvelab.stackfile import load_stack

SPEC = parse_spec(lab_raw())


@pytest.fixture
def cluster(serve):
    sim = lab_sim()
    return serve(NestedFake(sim))



@pytest.fixture(autouse=True)
def english_locale(monkeypatch):
    """The text assertions below are English: the locale must not pick Japanese (see test_ops_i18n.py)."""
    monkeypatch.setenv("LC_ALL", "C.UTF-8")

def client_for(fake, ca, urls=None, password=ROOT_PASSWORD):
    return nested_client(SPEC, urls or nested_urls(fake), ca, FAST, password=password)


def test_healthy_cluster(cluster, ca):
    report = gather(client_for(cluster, ca))
    assert report["healthy"] and report["problems"] == []
    cl = report["cluster"]
    assert (cl["name"], cl["quorate"], cl["members"], cl["online"]) == ("pve-lab", True, 3, 3)
    assert [n["name"] for n in cl["nodes"]] == ["pve1", "pve2", "pve3"]
    assert report["ceph"]["health"] == "HEALTH_OK"
    assert report["ha"]["quorum"] == "OK" and report["ha"]["master"]["node"] == "pve1"
    (svc,) = report["ha"]["services"]
    assert (svc["sid"], svc["node"], svc["state"]) == ("vm:100", "pve1", "started")
    # PVE 9 puts `ceph mon dump` in monmap (no num_mons): the monitors are counted from its list
    assert report["ceph"]["mons"] == 3
    # lrm entries carry their state only inside `status` (API2/HA/Status.pm)
    assert [(x["node"], x["state"]) for x in report["ha"]["lrm"]] == [
        ("pve1", "active"), ("pve2", "idle"), ("pve3", "idle")]
    assert report["ha"]["master"]["state"] == "active"
    text = render_text(report)
    assert "mons 3 (quorum pve1,pve2,pve3)" in text and "mons None" not in text
    assert "Cluster pve-lab: quorate yes, 3 of 3 members online" in text
    assert "Ceph: HEALTH_OK" in text and "Healthy." in text
    assert json.loads(render_json(report))["healthy"] is True


def test_broken_cluster_lists_every_problem(cluster, ca):
    sim = cluster.sim
    sim.power(9102, False)  # pve3 loses power; the others keep quorum
    sim.ha_state = "error"
    cluster.ceph_down()
    report = gather(client_for(cluster, ca))
    assert not report["healthy"]
    assert report["cluster"]["quorate"] is True and report["cluster"]["online"] == 2
    assert "node pve3 is offline" in report["problems"]
    assert any(p.startswith("Ceph unreachable: GET /cluster/ceph/status") and "rados_connect failed" in p
               for p in report["problems"])
    assert "HA service vm:100 is error on pve1" in report["problems"]
    text = render_text(report)
    assert "Ceph: unreachable" in text and "Problems:" in text


def test_lost_quorum_is_reported(cluster, ca):
    cluster.sim.power(9101, False)
    cluster.sim.power(9102, False)
    report = gather(client_for(cluster, ca))
    assert report["cluster"]["quorate"] is False
    assert any(p.startswith("no quorum: 1 of 3 members online") for p in report["problems"])
    assert report["ha"]["quorum"] == "No quorum on node 'pve1'!"


def test_reads_through_the_next_node_when_one_is_down(cluster, ca):
    cluster.sim.power(9100, False)  # pve1's API no longer answers
    report = gather(client_for(cluster, ca))
    assert report["endpoint"].startswith("pve2 (")
    assert report["cluster"]["online"] == 2


def test_unreachable_cluster_is_a_clear_report(ca):
    urls = [f"pve{i}={closed_port_url()}" for i in (1, 2, 3)]
    report = gather(nested_client(SPEC, urls, ca, FAST, password="x"))
    assert not report["healthy"]
    assert "unreachable (Connection refused)" in report["cluster"]["error"]


def test_wrong_password(cluster, ca):
    with pytest.raises(ApiError, match="login as root@pam .* failed"):
        client_for(cluster, ca, password="wrong").get("cluster/status")


def test_transient_error_is_retried(cluster, ca):
    cluster.fail("GET", "/api2/json/cluster/status", 596, "Broken pipe", times=1)
    assert gather(client_for(cluster, ca))["cluster"]["members"] == 3


def test_service_state_parsed_from_the_status_line():
    # older ha-manager answers carry node and state only inside `status`
    assert parse_service({"id": "service:vm:100", "type": "service", "status": "vm:100 (pve2, recovery)"}) == {
        "sid": "vm:100", "node": "pve2", "state": "recovery", "request_state": None, "crm_state": None,
        "failback": None, "status": "vm:100 (pve2, recovery)"}


def test_default_endpoints_are_the_nodes_addresses():
    eps = nested_endpoints(SPEC)
    assert [(e.label, e.url, e.verify) for e in eps] == [
        ("pve1", "https://10.10.10.11:8006/", False), ("pve2", "https://10.10.10.12:8006/", False),
        ("pve3", "https://10.10.10.13:8006/", False)]


def test_cli_table_and_json(cluster, ca, tmp_path, monkeypatch, capsys):
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    args = ["status", "-s", "t", "--nested-ca", ca, *CLI_TIMEOUT] + [f"--nested-url={u}" for u in nested_urls(cluster)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quorate yes" in out and ROOT_PASSWORD not in out
    cluster.sim.power(9102, False)
    assert main(args + ["--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == ["node pve3 is offline"]
    monkeypatch.delenv("PVE_LAB_ROOT_PASSWORD")
    assert main(args) == 2
    assert "PVE_LAB_ROOT_PASSWORD is not set" in capsys.readouterr().err


def test_monitor_count_from_mon_dump_or_num_mons():
    from pvelab.ops.status import monitor_count

    assert monitor_count({"epoch": 3, "mons": [{"name": "pve1"}, {"name": "pve2"}]}) == 2
    assert monitor_count({"epoch": 1, "num_mons": 1}) == 1  # fakepve's / older status shape
    assert monitor_count({}) is None


def test_agent_state_of_lrm_and_master_lines():
    from pvelab.ops.status import agent_state

    assert agent_state({"status": "pve1 (active, watchdog active, Mon Nov 30 12:00:00 2026)"}) == "active"
    assert agent_state({"status": "pve2 (idle, Mon Nov 30 12:00:00 2026)"}) == "idle"  # before the watchdog note
    assert agent_state({"status": "pve3 (old timestamp - dead?, Mon Nov 30 12:00:00 2026)"}) == "old timestamp - dead?"
    assert agent_state({"status": "pve3 (unable to read lrm status)"}) == "unable to read lrm status"
    assert agent_state({}) is None


def test_a_task_with_warnings_succeeded():
    from pvelab.ops.api import task_succeeded

    assert task_succeeded("OK") and task_succeeded("WARNINGS: 2")
    assert not task_succeeded("WARNINGS") and not task_succeeded("start failed: disk missing")
    assert not task_succeeded(None)


def test_logs_of_each_node_as_text_and_json(cluster, ca, tmp_path, monkeypatch, capsys):
    cluster.sim.power(9102, False)  # pve3 down: the others log its link going down; its own log is unreachable
    report = gather(client_for(cluster, ca), log_lines=3)
    logs = report["logs"]
    assert sorted(logs) == ["pve1", "pve2", "pve3"]
    assert logs["pve3"]["error"].startswith("offline")
    pve1 = logs["pve1"]["lines"]
    assert len(pve1) == 3 and not any(line.startswith("s=") for line in pve1)  # cursor lines dropped
    assert any(line.endswith("corosync[1101]: [KNET  ] host: host: 3 has no active links") for line in pve1)
    units = [r for m, r, _ in cluster.requests if m == "GET" and "/journal" in r]
    assert units, "read through GET /nodes/{node}/journal"
    text = render_text(report)
    assert "Logs (journalctl -u corosync -u pve-cluster -n 3, through the API):" in text
    assert "  pve3: offline" in text

    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    args = ["status", "-s", "t", "--nested-ca", ca, "--logs", "--lines", "2", "--format", "json", *CLI_TIMEOUT]
    assert main(args + [f"--nested-url={u}" for u in nested_urls(cluster)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert len(data["logs"]["pve2"]["lines"]) == 2 and data["log_lines"] == 2


def test_journal_merges_units_in_time_order():
    from pvelab.ops.logs import journal

    class Fake:
        def get(self, path, **params):
            cursor = "s=ab;i=1;b=cd;m=1;t=2;x=3"
            return {"corosync": [cursor, "Nov 30 10:00:05 pve1 corosync[1]: b", cursor],
                    "pve-cluster": [cursor, "Nov 30 10:00:01 pve1 pmxcfs[2]: a", "Nov 30 10:00:09 pve1 pmxcfs[2]: c",
                                    cursor]}[params["unit"]]

    assert [x[-1] for x in journal(Fake(), "pve1", ("corosync", "pve-cluster"), 2)] == ["b", "c"]


# ------------------------------------------------------------------ the HA test VM's reachability (ha.testVmImage)

GUEST_IMAGE = {"url": "https://cloud.debian.org/images/cloud/trixie/20260101-0000/"
                       "debian-13-genericcloud-amd64-20260101-0000.qcow2",
               "checksum": "0123456789abcdef" * 8, "checksumAlgorithm": "sha512",  # made up: nothing is downloaded
               "fileName": "debian-13-genericcloud-amd64-20260101-0000.qcow2"}


@pytest.fixture
def guest_lab(serve, ca, tmp_path, monkeypatch):
    """Outer host and nested cluster sharing one simulated lab, and a stack whose test VM boots an OS."""
    from ops_fixtures import outer_fake

    sim = lab_sim()
    outer, nested = serve(outer_fake(sim, lab_vms=True)), serve(NestedFake(sim))
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump(
        {"config": {"pve-lab:lab": {**lab_raw(), "ha": {"testVmImage": GUEST_IMAGE}}}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    args = ["status", "-s", "t", "--nested-ca", ca, "--outer-url", outer.url, "--outer-ca", ca, *CLI_TIMEOUT,
            *[f"--nested-url={u}" for u in nested_urls(nested)]]
    return sim, outer, args


def _pinged(outer):
    return [a["command"] for v in outer.vms for c, a in v.agent_requests if c == "exec"]


def test_status_pings_the_booted_test_vm_once(guest_lab, monkeypatch, capsys):
    from ops_fixtures import TOKEN

    sim, outer, args = guest_lab
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(args + ["--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["test_vm"] == {"address": "10.10.10.14", "from_node": "pve1", "answers": True}
    assert _pinged(outer) == [["ping", "-c", "1", "-W", "1", "-n", "10.10.10.14"]]  # one ping, no shell
    assert main(args) == 0
    assert "Test VM 10.10.10.14: answers ping from pve1  [ping]" in capsys.readouterr().out
    assert main(args + ["--lang", "ja"]) == 0
    assert "テスト VM 10.10.10.14: pve1 からの ping に応答あり  [ping]" in capsys.readouterr().out


def test_a_running_test_vm_that_does_not_answer_is_a_problem(guest_lab, monkeypatch, capsys):
    from ops_fixtures import TOKEN

    sim, outer, args = guest_lab
    sim.guest_answers = False
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "Test VM 10.10.10.14: does NOT answer ping from pve1  [ping]" in out
    assert "the HA test VM runs but 10.10.10.14 does not answer ping (from pve1): check its console" in out


def test_status_without_the_outer_token_says_how_to_get_the_ping_and_no_ping_skips_it(guest_lab, monkeypatch,
                                                                                        capsys):
    sim, outer, args = guest_lab
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN", raising=False)
    assert main(args) == 0  # the cluster is healthy; the ping is only not possible
    out = capsys.readouterr().out
    assert ("Test VM 10.10.10.14: not pinged (export PVE_LAB_OUTER_API_TOKEN to ping it through the outer host's "
            "guest agent)  [ping]") in out
    assert outer.requests == []
    assert main(args + ["--no-ping", "--format", "json"]) == 0
    assert "test_vm" not in json.loads(capsys.readouterr().out) and outer.requests == []


def test_status_watch_pings_once_per_frame(guest_lab, monkeypatch, capsys):
    from ops_fixtures import TOKEN

    sim, outer, args = guest_lab
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(args + ["--watch", "--interval", "0.01", "--count", "2"]) == 0
    assert capsys.readouterr().out.count("Test VM 10.10.10.14: answers ping from pve1") == 2
    assert len(_pinged(outer)) == 2


def test_a_lab_without_an_os_in_the_test_vm_is_not_pinged(cluster, ca, tmp_path, monkeypatch, capsys):
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", ROOT_PASSWORD)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", "root@pam!x=00000000-1111-2222-3333-444444444444")
    args = ["status", "-s", "t", "--nested-ca", ca, "--format", "json", *CLI_TIMEOUT]
    assert main(args + [f"--nested-url={u}" for u in nested_urls(cluster)]) == 0
    assert "test_vm" not in json.loads(capsys.readouterr().out)

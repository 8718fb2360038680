"""components/scripts/ceph-*.sh run for real (tests/node_runner.FakeNode) against the Ceph stand-ins.

Three FakeNodes share one state dir: they are installed PVE 9 nodes of a formed cluster (no debian.json),
each with one data disk `/dev/sdb`, serial pvelab-osd0, attached as a PVE 9 outer host (QEMU machine 10) does:
named /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive-scsi1 (the serial is only in lsblk's SERIAL). The full
sequence runs once per module (`templates`); tests copy its state after install + init or when built.
"""
from __future__ import annotations

import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import command_text
from node_runner import STANDIN_BIN, FakeNode, Result, standin_log

sys.path.insert(0, str(STANDIN_BIN))
import _ceph  # noqa: E402
import _debian  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

NODES = ("pve1", "pve2", "pve3")
NETWORK = "10.10.10.0/24"
FAST = {"DEADLINE_S": "30", "POLL_S": "0.02"}  # a bound for a loaded machine: success never waits it out
SUCCESS_DEADLINE_S = "60"  # for steps a test expects to succeed (they end as soon as they are done)
MEMORY_TARGET = str(1536 * 1024 * 1024)
KERNEL_NAMES = ("sdb", "sdc", "sdd")
MUTATING = re.compile(r": (pveceph |apt-get |ceph .*config set)")


def disk(k: int) -> str:
    """The by-id name of data disk k (scsi{k+1}) on a PVE 9 outer host."""
    return f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive-scsi{k + 1}"


def make_lab(state: Path, disks: int = 1) -> dict[str, FakeNode]:
    nodes = {name: FakeNode(name, state) for name in NODES}
    for n in nodes.values():
        for k in range(disks):
            _ceph.add_disk(state, n.name, n.root, f"pvelab-osd{k}", KERNEL_NAMES[k])
    return nodes


def install(n: FakeNode, release: str = "squid", repository: str = "no-subscription", **env: str) -> Result:
    return n.run_script("ceph-install", env={"CEPH_RELEASE": release, "CEPH_REPOSITORY": repository, "NODE_NAME": n.name,
                                            **env})


def init(n: FakeNode, network: str = NETWORK, cluster_network: str | None = None) -> Result:
    env = {"CEPH_NETWORK": network, "NODE_NAME": n.name}
    if cluster_network:
        env["CEPH_CLUSTER_NETWORK"] = cluster_network
    return n.run_script("ceph-init", env=env)


def mon(n: FakeNode, **env: str) -> Result:
    return n.run_script("ceph-mon", env={"NODE_NAME": n.name, "OSD_MEMORY_TARGET_BYTES": MEMORY_TARGET, **FAST, **env})


def osd(n: FakeNode, disks: int = 1, **env: str) -> Result:
    serials = " ".join(f"pvelab-osd{k}" for k in range(disks))
    return n.run_script("ceph-osd", env={"NODE_NAME": n.name, "OSD_SERIALS": serials, **FAST, **env})


def health(n: FakeNode, osds: int = 3, **env: str) -> Result:
    return n.run_script("ceph-health", env={"EXPECTED_OSDS": str(osds), "EXPECTED_MONS": "3", "NODE_NAME": n.name,
                                            **FAST, **env})


def ok(r: Result) -> Result:
    assert r.returncode == 0, r.output
    return r


def failed(r: Result) -> str:
    assert r.returncode == 1, r.output
    return r.stderr


def full_run(nodes: dict[str, FakeNode], disks: int = 1, snapshot: Path | None = None) -> dict[str, Result]:
    """The order of the program's graph: installs in parallel, init, monitors one by one, OSDs in parallel."""
    results = {}
    with ThreadPoolExecutor(len(nodes)) as pool:
        for name, r in zip(nodes, pool.map(install, nodes.values())):
            results[f"install-{name}"] = ok(r)
        results["init"] = ok(init(nodes["pve1"]))
        if snapshot is not None:
            shutil.copytree(nodes["pve1"].state, snapshot, symlinks=True)
        # Every step here must succeed: a deadline far above FAST's, so that a loaded test machine (three
        # stand-in processes at once) never kills a bounded pveceph call that is merely slow.
        for name, n in nodes.items():
            results[f"mon-{name}"] = ok(mon(n, DEADLINE_S=SUCCESS_DEADLINE_S))
        for name, r in zip(nodes, pool.map(lambda n: osd(n, disks, DEADLINE_S=SUCCESS_DEADLINE_S), nodes.values())):
            results[f"osd-{name}"] = ok(r)
    results["health"] = ok(health(nodes["pve1"], osds=3 * disks, DEADLINE_S=SUCCESS_DEADLINE_S))
    return results


def ceph_state(state: Path) -> dict:
    return _ceph.load_cluster(state)


def calls_since(state: Path, start: int) -> list[str]:
    return standin_log(state)[start:]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """The full sequence, once: a copy of the state after install + init ("prepared"), and the built state."""
    base = tmp_path_factory.mktemp("templates")
    state = base / "built"
    nodes = make_lab(state)
    results = full_run(nodes, snapshot=base / "prepared")
    return {"prepared": base / "prepared", "built": state, "results": results}


def copy_of(template: Path, tmp_path: Path) -> dict[str, FakeNode]:
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    return {name: FakeNode(name, state) for name in NODES}


@pytest.fixture
def built(templates, tmp_path) -> dict[str, FakeNode]:
    """A copy of the built lab (3 MON, 3 MGR, 3 OSD, HEALTH_OK) that a test may change."""
    return copy_of(templates["built"], tmp_path)


@pytest.fixture
def prepared(templates, tmp_path) -> dict[str, FakeNode]:
    """A copy of the lab after ceph-install on every node and ceph-init: no monitor yet."""
    return copy_of(templates["prepared"], tmp_path)


@pytest.fixture
def fresh(tmp_path) -> dict[str, FakeNode]:
    return make_lab(tmp_path / "state")


def test_full_sequence_builds_three_of_each_and_prints_health(templates):
    state, results = templates["built"], templates["results"]
    data = ceph_state(state)
    assert sorted(data["mons"]) == list(NODES) and sorted(data["mgrs"]) == list(NODES)
    assert sorted((o["host"], o["device"]) for o in data["osds"].values()) == [(n, "/dev/sdb") for n in NODES]
    assert data["public_network"] == NETWORK and data["cluster_network"] == NETWORK
    assert data["config"]["osd"]["osd_memory_target"] == MEMORY_TARGET
    out = results["health"].stdout
    assert "health: HEALTH_OK" in out and "mon: 3 daemons, quorum pve1,pve2,pve3" in out
    assert "osd: 3 osds: 3 up" in out and "mgr: pve1(active" in out
    assert results["install-pve2"].stdout == _ceph.version_line("squid") + "\n"
    for step in ("init", "mon-pve1", "osd-pve3"):
        assert results[step].stdout == "", f"{step} prints its progress on stderr only"
    log = standin_log(state)
    # The first monitor made a manager itself: mgr create ran only on the other nodes.
    assert [line.split(":")[0] for line in log if ": pveceph mgr create" in line] == ["pve2", "pve3"]
    assert sorted(line for line in log if "pveceph install" in line) == \
        [f"{n}: pveceph install --repository no-subscription --version squid" for n in NODES]
    # OSDs created at once on three nodes got distinct ids.
    assert sorted(data["osds"]) == ["0", "1", "2"]
    # Health was HEALTH_WARN (PGs peering) for a couple of polls before HEALTH_OK.
    health_start = max(i for i, line in enumerate(log) if ": ceph-volume " in line)
    polls = [line for line in log[health_start:] if line.startswith("pve1: ceph ") and "status -f json" in line]
    assert len(polls) == 3


def test_install_leaves_no_assume_yes_behind_and_writes_the_ceph_source(built):
    n = built["pve1"]
    assert not (n.root / "etc/apt/apt.conf.d").exists()
    sources = (n.root / "etc/apt/sources.list.d/ceph.sources").read_text()
    assert "URIs: http://download.proxmox.com/debian/ceph-squid" in sources and "Components: no-subscription" in sources


def test_second_full_run_changes_nothing(built):
    state = built["pve1"].state
    start = len(standin_log(state))
    before = ceph_state(state)
    results = full_run(built)
    calls = calls_since(state, start)
    assert calls, "the second run must read the state"
    assert [c for c in calls if MUTATING.search(c)] == []
    after = ceph_state(state)
    assert (after["mons"], after["mgrs"], after["osds"], after["config"]) == \
        (before["mons"], before["mgrs"], before["osds"], before["config"])
    assert "health: HEALTH_OK" in results["health"].stdout


def test_pveceph_install_without_assume_yes_aborts(fresh):
    # The stand-in's apt asks like the real one: the script's private apt config is what answers it.
    r = fresh["pve1"].run("pveceph install --repository no-subscription --version squid </dev/null")
    assert r.returncode == 255 and "Do you want to continue? [Y/n] Abort." in r.output


def test_install_apt_failure_then_rerun(fresh):
    n = fresh["pve1"]
    arm_fault(n.state, "apt-fail", times=1)
    err = failed(install(n))
    assert "apt failed during ceph installation" in err
    assert "pveceph install --repository no-subscription --version squid failed on pve1" in err
    assert err.rstrip().splitlines()[-1].startswith("pve-lab: Check that pve1 reaches the Ceph repository")
    assert "ceph-mon" not in _debian.load(n.state, n.name)["packages"]
    apt_log = n.root / "var/log/pve-lab/apt.log"
    assert "Could not connect to download.proxmox.com:80" in apt_log.read_text()
    again = ok(install(n))
    assert again.stdout.startswith("ceph version 19.2")
    # pveceph's apt progress goes to the node's apt log, not into the step's output (kept in the Pulumi state)
    assert "update available package list" in apt_log.read_text().split("(stand-in fault apt-fail)")[-1]
    assert "update available package list" not in again.output and "start installation" not in again.output
    assert "(its output: /var/log/pve-lab/apt.log)" in again.stderr


@pytest.mark.parametrize("pve_manager, note", [("9.1.5", True), ("9.1.12", True), ("9.1.13", False), ("9.2.11", False)])
def test_tentacle_is_a_tech_preview_from_9_1_5_and_the_default_from_9_1_13(fresh, pve_manager, note):
    n = fresh["pve1"]
    _ceph.set_pve_manager_version(n.state, "pve1", pve_manager)
    r = ok(install(n, "tentacle"))
    assert r.stdout == _ceph.version_line("tentacle") + "\n"
    assert ("NOTE: installing experimental/tech-preview Ceph release 20.2 Tentacle!" in r.stderr) is note
    assert "pve1: pveceph install --repository no-subscription --version tentacle --allow-experimental 1" \
        in standin_log(n.state)


def test_pveceph_refuses_the_tentacle_preview_without_the_flag_and_offers_no_tentacle_before_9_1_5(fresh):
    n = fresh["pve1"]
    _ceph.set_pve_manager_version(n.state, "pve1", "9.1.12")
    refused = n.run("pveceph install --repository no-subscription --version tentacle </dev/null")
    assert refused.returncode == 255
    assert "Refusing to install tech-preview Ceph release 20.2 Tentacle without 'allow-experimental' parameter!" \
        in refused.stderr
    _ceph.set_pve_manager_version(n.state, "pve1", "9.1.4")
    err = failed(install(n, "tentacle"))
    assert "this node's pve-manager does not offer Ceph tentacle (pveceph offers: 'squid')" in err
    assert "needs pve-manager 9.1.5 or later" in err
    # Without --version, pveceph installs its default: squid before 9.1.13, tentacle from 9.1.13.
    for version, default in (("9.1.12", "squid"), ("9.1.13", "tentacle")):
        _ceph.set_pve_manager_version(n.state, "pve1", version)
        assert ok(n.run("echo y | pveceph install --repository no-subscription"))
        assert ok(n.run("ceph --version")).stdout == _ceph.version_line(default) + "\n"


def test_bundled_ceph_client_alone_does_not_count_as_installed(fresh):
    n = fresh["pve1"]
    # PVE ships ceph-common: `ceph --version` already names squid before any install.
    assert ok(n.run("ceph --version")).stdout.startswith("ceph version 19.2.3")
    ok(install(n))
    assert "pve1: pveceph install --repository no-subscription --version squid" in standin_log(n.state)


def test_changing_the_release_of_a_built_ceph_is_refused(built):
    n = built["pve2"]
    err = failed(install(n, "tentacle"))
    assert "Ceph 'squid' is installed on pve2, but ceph.release is 'tentacle'" in err
    assert "set ceph.release back to 'squid'" in err
    assert not [c for c in standin_log(n.state) if "tentacle" in c and "pveceph" in c]


def test_bad_environment_is_named(fresh):
    n = fresh["pve1"]
    assert "CEPH_REPOSITORY='pve-no-subscription' (allowed: no-subscription, enterprise, test)" in \
        failed(install(n, repository="pve-no-subscription"))
    assert "CEPH_NETWORK='10.10.10.0' is not an IPv4 CIDR" in failed(init(n, network="10.10.10.0"))
    assert "OSD_MEMORY_TARGET_BYTES='1.5G' must be a number of bytes" in failed(mon(n, OSD_MEMORY_TARGET_BYTES="1.5G"))
    assert "EXPECTED_OSDS='0' must be a positive count" in failed(health(n, osds=0))


def test_init_task_failure_with_exit_0_is_caught_then_rerun(fresh):
    n = fresh["pve1"]
    ok(install(n))
    arm_fault(n.state, "init-task-fails", times=1)
    err = failed(init(n))
    assert "pveceph init exited 0, but /etc/pve/ceph.conf has no fsid" in err
    ok(init(n))
    conf = (n.root / "etc/pve/ceph.conf").read_text()
    assert re.search(r"^\tfsid = [0-9a-f-]{36}$", conf, re.M) and "\tpublic_network = 10.10.10.0/24" in conf


def test_init_refuses_a_ceph_on_other_networks(built):
    n = built["pve1"]
    start = len(standin_log(n.state))
    err = failed(init(n, network="10.20.0.0/24"))
    assert "uses public network '10.10.10.0/24', but ceph.network is '10.20.0.0/24'" in err
    err = failed(init(n, cluster_network="10.10.20.0/24"))
    assert "uses cluster network '10.10.10.0/24', but this lab asks for '10.10.20.0/24'" in err
    assert not [c for c in calls_since(n.state, start) if "pveceph" in c], "never re-init a built Ceph"


def test_init_with_a_cluster_network(fresh):
    n = fresh["pve1"]
    ok(init(n, cluster_network="10.10.20.0/24"))
    assert "\tcluster_network = 10.10.20.0/24" in (n.root / "etc/pve/ceph.conf").read_text()
    ok(init(n, cluster_network="10.10.20.0/24"))
    assert [c for c in standin_log(n.state) if "pveceph init" in c] == \
        ["pve1: pveceph init --network 10.10.10.0/24 --cluster-network 10.10.20.0/24"]


def test_mon_lock_timeout_is_retried_within_the_deadline(prepared):
    ok(mon(prepared["pve1"]))
    arm_fault(prepared["pve1"].state, "mon-lock-timeout", times=2)
    r = ok(mon(prepared["pve2"]))
    assert r.stderr.count("ceph.conf is locked by another operation; trying again") == 2
    assert len([c for c in standin_log(prepared["pve2"].state) if c == "pve2: pveceph mon create"]) == 3
    assert "pve2" in ceph_state(prepared["pve2"].state)["mons"]


def test_mon_lock_held_past_the_deadline_fails_then_rerun(prepared):
    arm_fault(prepared["pve1"].state, "mon-lock-timeout")
    err = failed(mon(prepared["pve1"], DEADLINE_S="1", POLL_S="0.25"))
    assert "the ceph.conf lock (cfs-lock 'file-ceph_conf') stayed busy for 1s on pve1" in err
    assert "got lock request timeout" in err
    (prepared["pve1"].state / "faults/mon-lock-timeout").unlink()
    ok(mon(prepared["pve1"]))


def test_mon_without_cluster_quorum_fails_clearly_then_rerun(prepared):
    arm_fault(prepared["pve1"].state, "ceph-no-quorum", times=1)
    err = failed(mon(prepared["pve1"]))
    assert "pveceph mon create failed on pve1: cfs-lock 'file-ceph_conf' error: no quorum!" in err
    assert err.rstrip().endswith("then run this step again.")
    ok(mon(prepared["pve1"]))


def test_monitor_that_never_joins_the_quorum_times_out(prepared):
    ok(mon(prepared["pve1"]))
    _ceph.set_delays(prepared["pve1"].state, mon_quorum=10_000)
    err = failed(mon(prepared["pve2"], DEADLINE_S="0"))
    assert "mon.pve2 did not join the monitor quorum within 0s; last seen: quorum: pve1" in err


def test_missing_disk_names_the_serial_then_rerun(built):
    state, n = built["pve2"].state, built["pve2"]
    err = failed(osd(n, disks=2))
    assert "no disk with serial 'pvelab-osd1' on pve2" in err
    _ceph.add_disk(state, "pve2", n.root, "pvelab-osd1", "sdc")
    ok(osd(n, disks=2))
    assert len(ceph_state(state)["osds"]) == 4


@pytest.mark.parametrize("qemu_machine, by_id", [
    (10, "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive-scsi2"),  # PVE 9 outer host: device_id=drive-scsiN
    (9, "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_pvelab-osd1"),   # PVE 8.4 outer host: the serial
], ids=["qemu-10", "qemu-9"])
def test_data_disks_are_found_by_serial_whatever_the_outer_qemu(built, qemu_machine, by_id):
    state, n = built["pve1"].state, built["pve1"]
    _ceph.add_disk(state, "pve1", n.root, "pvelab-osd1", "sdc", {"content": "ext4"}, qemu_machine=qemu_machine)
    assert (n.root / by_id.lstrip("/")).is_symlink()
    assert n.run("lsblk -dno PATH,SERIAL").stdout.splitlines()[1:] == ["/dev/sdb pvelab-osd0", "/dev/sdc pvelab-osd1"]
    err = failed(osd(n, disks=2))
    # The zap command names the stable name the disk really has on this host.
    assert f"ceph-volume lvm zap --destroy {by_id} ;" in err
    _ceph.add_disk(state, "pve1", n.root, "pvelab-osd1", "sdc", qemu_machine=qemu_machine)  # wiped
    r = ok(osd(n, disks=2))
    assert f"creating an OSD on {by_id} (/dev/sdc, serial pvelab-osd1)" in r.stderr
    assert sorted(o["device"] for o in ceph_state(state)["osds"].values() if o["host"] == "pve1") == ["/dev/sdb", "/dev/sdc"]


def test_two_disks_with_one_serial_are_refused(built):
    state, n = built["pve2"].state, built["pve2"]
    _ceph.add_disk(state, "pve2", n.root, "pvelab-osd0", "sdc")
    err = failed(osd(n))
    assert "2 disks have the serial 'pvelab-osd0' on pve2: /dev/sdb /dev/sdc" in err


def test_a_serial_that_is_not_one_is_named(built):
    err = failed(osd(built["pve1"], OSD_SERIALS="pvelab-osd0 /dev/sdb"))
    assert "OSD_SERIALS entry '/dev/sdb' is not a disk serial" in err


def test_disk_in_use_by_something_else_is_refused_with_the_zap_command(built):
    state, n = built["pve1"].state, built["pve1"]
    _ceph.add_disk(state, "pve1", n.root, "pvelab-osd1", "sdc", {"content": "ext4"})
    err = failed(osd(n, disks=2))
    assert f"{disk(1)} (/dev/sdc, serial pvelab-osd1) on pve1 is already in use" in err
    assert f"ceph-volume lvm zap --destroy {disk(1)}" in err
    _ceph.add_disk(state, "pve1", n.root, "pvelab-osd1", "sdc")  # wiped
    ok(osd(n, disks=2))
    assert len(ceph_state(state)["osds"]) == 4


def test_disk_with_an_osd_of_another_cluster_is_refused(built):
    state, n = built["pve3"].state, built["pve3"]
    _ceph.add_disk(state, "pve3", n.root, "pvelab-osd1", "sdc",
                   {"content": "ceph-osd", "cluster_fsid": "0e3f1c2a-0000-4000-8000-00000000abcd", "osd_id": 7,
                    "osd_fsid": "5a1b2c3d-0000-4000-8000-000000000007"})
    start = len(standin_log(state))
    err = failed(osd(n, disks=2))
    assert f"{disk(1)} (/dev/sdc, serial pvelab-osd1) on pve3 holds osd.7 of another Ceph cluster (fsid 0e3f1c2a-" in err
    assert f"ceph-volume lvm zap --destroy {disk(1)}" in err
    assert not [c for c in calls_since(state, start) if "pveceph osd create" in c]
    _ceph.add_disk(state, "pve3", n.root, "pvelab-osd1", "sdc")  # zapped
    ok(osd(n, disks=2))
    assert [c for c in calls_since(state, start) if "pveceph osd create" in c] == ["pve3: pveceph osd create /dev/sdc"]


def test_second_disk_per_node_adds_one_osd_each_and_skips_the_first(built):
    state = built["pve1"].state
    for n in built.values():
        _ceph.add_disk(state, n.name, n.root, "pvelab-osd1", "sdc")
    start = len(standin_log(state))
    for n in built.values():
        r = ok(osd(n, disks=2))
        assert f"{disk(0)} (/dev/sdb, serial pvelab-osd0) already holds osd." in r.stderr
    creates = [c for c in calls_since(state, start) if "pveceph osd create" in c]
    assert creates == [f"{n}: pveceph osd create /dev/sdc" for n in NODES]
    assert "osd: 6 osds: 6 up" in ok(health(built["pve1"], osds=6)).stdout
    assert sorted(o["device"] for o in ceph_state(state)["osds"].values()) == ["/dev/sdb"] * 3 + ["/dev/sdc"] * 3


def test_osds_that_never_come_up_time_out(built):
    state = built["pve1"].state
    _ceph.set_delays(state, osd_up=10_000)
    _ceph.add_disk(state, "pve1", built["pve1"].root, "pvelab-osd1", "sdc")
    err = failed(osd(built["pve1"], disks=2, DEADLINE_S="0"))
    assert "the OSDs of pve1 did not come up within 0s; still down: osd.3" in err


def test_health_timeout_shows_ceph_s_and_health_detail_then_rerun(built):
    n = built["pve1"]
    arm_fault(n.state, "health-stays-warn")
    err = failed(health(n, DEADLINE_S="0"))
    assert "Ceph did not become ready within 0s on pve1; last seen: HEALTH_WARN (MON_CLOCK_SKEW), 3/3 monitors in quorum" in err
    assert "pve-lab: ceph -s:" in err and "  cluster:" in err and "health: HEALTH_WARN" in err
    assert "pve-lab: ceph health detail:" in err and "[WRN] MON_CLOCK_SKEW: clock skew detected on mon.pve3" in err
    assert err.rstrip().endswith("then run this step again.")
    (n.state / "faults/health-stays-warn").unlink()
    assert "health: HEALTH_OK" in ok(health(n)).stdout


@pytest.mark.parametrize("fault, code", [("slow-op-alert", "BLUESTORE_SLOW_OP_ALERT"),
                                         ("recent-crash", "RECENT_CRASH")])
def test_long_lived_benign_warnings_are_accepted_and_printed(built, fault, code):
    n = built["pve1"]
    arm_fault(n.state, fault)
    r = ok(health(n))
    assert "health: HEALTH_WARN" in r.stdout
    assert f"pve-lab: accepted health warnings (benign for a lab, see ceph-health.sh): {code}" in r.stderr


def test_a_benign_warning_does_not_hide_a_real_one(built):
    n = built["pve1"]
    arm_fault(n.state, "slow-op-alert")
    arm_fault(n.state, "health-stays-warn")
    err = failed(health(n, DEADLINE_S="0"))
    assert "last seen: HEALTH_WARN (MON_CLOCK_SKEW), 3/3 monitors in quorum" in err


def test_with_a_benign_warning_it_still_waits_for_clean_pgs(built):
    n = built["pve1"]
    arm_fault(n.state, "slow-op-alert")
    data = ceph_state(n.state)
    data["peering_polls"] = 3
    _ceph.cluster_path(n.state).write_text(__import__("json").dumps(data))
    start = len(standin_log(n.state))
    r = ok(health(n))
    polls = [c for c in calls_since(n.state, start) if "status -f json" in c]
    assert len(polls) == 4, polls  # three answers with the PG peering, then active+clean
    assert "pgs:     1 active+clean" in r.stdout


def test_ceph_warnings_on_stderr_are_not_parsed(built):
    """The client can print warnings on stderr: the fsid, quorum, OSD and health reads parse stdout only."""
    state = built["pve1"].state
    arm_fault(state, "stderr-warning")
    r = ok(osd(built["pve2"]))
    assert "ceph fsid said on stderr: 2026-11-30T10:00:00.000+0000" in r.stderr
    ok(mon(built["pve3"]))
    ok(health(built["pve1"]))


@pytest.mark.parametrize("step", ["install", "osd"])
def test_a_pveceph_call_that_hangs_is_stopped_at_the_deadline(request, step):
    import time

    n = request.getfixturevalue("fresh" if step == "install" else "built")["pve1"]
    if step == "osd":
        _ceph.add_disk(n.state, "pve1", n.root, "pvelab-osd1", "sdc")
    arm_fault(n.state, "pveceph-hangs")
    started = time.monotonic()
    r = install(n, DEADLINE_S="1") if step == "install" else osd(n, disks=2, DEADLINE_S="1")
    assert time.monotonic() - started < 20
    err = failed(r)
    assert "did not finish within 1s on pve1 and was stopped" in err


def test_pool_create_can_exit_0_without_a_pool(built):
    # Not called by the scripts (the pool goes through the provider), modelled for anyone who verifies it.
    n = built["pve1"]
    arm_fault(n.state, "pool-create-task-fails", times=1)
    assert n.run("pveceph pool create vmpool --size 3 --min_size 2 --add_storages 1").returncode == 0
    assert n.run("ceph osd pool ls").stdout == ""
    assert n.run("pveceph pool create vmpool --size 3 --min_size 2 --add_storages 1").returncode == 0
    assert n.run("ceph osd pool ls").stdout == "vmpool\n"


def test_health_waits_for_the_expected_osds(built):
    err = failed(health(built["pve1"], osds=4, DEADLINE_S="0"))
    assert "last seen: HEALTH_OK, 3/3 monitors in quorum, 3/4 OSDs up, 3/4 in" in err


def test_scripts_are_shellcheck_clean():
    import subprocess

    folder = Path(__file__).resolve().parent.parent / "components/scripts"
    scripts = sorted(str(p) for p in folder.glob("ceph-*.sh"))
    assert len(scripts) == 5
    shellcheck = Path(sys.executable).parent / "shellcheck"
    # -x: follow `source lib/*.sh`, so the helpers are checked as the scripts use them.
    r = subprocess.run([str(shellcheck), "-x", "-S", "style", *scripts, *map(str, sorted(folder.glob("lib/*.sh")))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_commands_built_by_the_program_run_unchanged(default_lab, tmp_path):
    """The real program's Ceph steps (its env names and values) against the stand-ins."""
    state = tmp_path / "state"
    nodes = make_lab(state)
    # The program polls every 5 s: make everything ready at once so no poll has to sleep.
    _ceph.set_delays(state, mon_quorum=0, osd_up=0, peering=0)
    steps = [(f"lab-ceph-install-{n}", n) for n in NODES] + [("lab-ceph-init", "pve1")]
    steps += [(f"lab-ceph-mon-{n}", n) for n in NODES] + [(f"lab-ceph-osd-{n}", n) for n in NODES]
    steps += [("lab-ceph-health", "pve1")]
    for name, node_name in steps:
        record = default_lab.named(name)
        assert record.plain("connection")["host"] == f"10.10.10.1{NODES.index(node_name) + 1}"
        r = nodes[node_name].run(command_text(record))
        assert r.returncode == 0, f"{name}:\n{r.output}"
    data = ceph_state(state)
    assert len(data["mons"]) == len(data["mgrs"]) == len(data["osds"]) == 3
    assert data["config"]["osd"]["osd_memory_target"] == str(1536 * 1024 * 1024)
    assert "health: HEALTH_OK" in r.stdout
    assert data["public_network"] == NETWORK

"""install-pve.sh on a real Debian 13 userland: booted trixie containers (systemd-nspawn) with real apt, dpkg,
systemd units and timers, against the stand-in Proxmox repository (tests/standins/proxmox_repo.py).

Each node runs the program's own commands (the default lab's `remote.Command` texts, with the test key's
sha256 as repository.keyringSha256). The scenarios run concurrently, one node each, in the background
from the session's start (tests/containers/early.py); the tests assert on what each scenario saw. What is
still a stand-in is listed in README.md.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from containers import early
from containers.fixtures import container_host  # noqa: F401 (fixture)
from containers.image import TrixieImage
from containers.lab import APT_PROXY, LabNode, PackageHosts, destroy_all
from containers.program import node_commands, run_env, scripts_step
from standins.proxmox_repo import PVE_KERNEL, PVE_MANAGER_VERSION

STEPS = ("prepare", "reboot", "finish", "ready")
# What a re-run must leave alone: the files under /etc, /boot and the keyrings, and dpkg's database.
TREE_DIGEST = r"""
find /etc /boot /usr/share/keyrings -xdev \( -type f -o -type l \) -print0 | sort -z |
    xargs -0 stat -c '%n %a %F %N' | sha256sum
find /etc /boot /usr/share/keyrings -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum
sha256sum < /var/lib/dpkg/status
"""
# Another apt (apt-daily) holding the package lists lock, as apt does (fcntl lock on lists/lock).
HOLD_LISTS_LOCK = ("systemd-run --unit=apt-daily-standin --quiet python3 -c 'import fcntl, time; "
                   "f = open(\"/var/lib/apt/lists/lock\", \"w\"); fcntl.lockf(f, fcntl.LOCK_EX); time.sleep({s})'")
CLOUD_HOSTS_LOOPBACK = "127.0.1.1 {fqdn} {host}\n127.0.0.1 localhost\n"


def new_node(workdir: Path, hosts, image, commands, name: str, scripts: tuple) -> LabNode:
    fqdn = run_env(commands[f"lab-{name}-prepare"])["NODE_FQDN"]
    return LabNode(name, fqdn, workdir, hosts, image, scripts=scripts)


def step(node: LabNode, commands: dict, name: str):
    return node.run(commands[f"lab-{node.hostname}-{name}"], timeout=600)


def dpkg_status(node: LabNode, *packages: str) -> dict:
    out = node.run("dpkg-query -W -f='${Package} ${db:Status-Status}\\n' " + " ".join(packages)).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def happy_path(node: LabNode, commands: dict) -> dict:
    """All four steps, the first `apt-get update` meeting a held lists lock; then all four again."""
    seen = {}
    node.create()
    assert node.run(HOLD_LISTS_LOCK.format(s=4)).returncode == 0
    for name in STEPS:
        seen[name] = step(node, commands, name)
        assert seen[name].returncode == 0, f"{name}: {seen[name].output[-4000:]}"
        if name == "reboot":
            seen["kernel_before_reboot"] = node.run("uname -r").stdout.strip()
            node.wait_for_reboot()
            seen["kernel_after_reboot"] = node.run("uname -r").stdout.strip()
    seen["packages"] = dpkg_status(node, "proxmox-ve", "pve-manager", "proxmox-default-kernel", "chrony",
                                   "postfix", "open-iscsi", "qemu-guest-agent")
    seen["enterprise_sources"] = node.file("etc/apt/sources.list.d/pve-enterprise.sources").read_text()
    seen["proxmox_sources"] = node.file("etc/apt/sources.list.d/proxmox.sources").read_text()
    seen["keyring_sha256"] = node.run("sha256sum /usr/share/keyrings/proxmox-archive-keyring.gpg").stdout.split()[0]
    before = node.run(TREE_DIGEST).stdout
    requests_before = len(node.requests())
    seen["rerun"] = {name: step(node, commands, name) for name in STEPS}
    seen["digest_changed"] = node.run(TREE_DIGEST).stdout != before
    seen["update"] = node.run("apt-get -q update")
    seen["rerun_requests"] = node.requests()[requests_before:]
    # A later upgrade of pve-manager (here: a reinstall) keeps the edited conffile.
    seen["reinstall"] = node.run("DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confdef "
                                 "-o Dpkg::Options::=--force-confold install --reinstall pve-manager")
    seen["enterprise_after_reinstall"] = node.file("etc/apt/sources.list.d/pve-enterprise.sources").read_text()
    return seen


def unreachable_repository(node: LabNode, commands: dict) -> dict:
    """download.proxmox.com has no route (no proxy for it, no network): real apt only warns."""
    node.create(apt_proxy=APT_PROXY.replace('Acquire::http::Proxy::download.proxmox.com', '// no proxy:'))
    return {"prepare": step(node, commands, "prepare"),
            "packages": dpkg_status(node, "proxmox-default-kernel", "chrony")}


def half_configured(node: LabNode, commands: dict) -> dict:
    """finish fails inside dpkg (pve-cluster's start refuses a loopback node name): pve-cluster is left
    half-configured; once the cause is fixed, running finish again completes the install."""
    seen = {}
    node.create()
    for name in ("prepare", "reboot"):
        assert step(node, commands, name).returncode == 0
        if name == "reboot":
            node.wait_for_reboot()
    good_hosts = node.file("etc/hosts").read_text()
    node.file("etc/hosts").write_text(CLOUD_HOSTS_LOOPBACK.format(fqdn=node.fqdn, host=node.hostname))
    seen["first"] = step(node, commands, "finish")
    seen["apt_log"] = node.file("var/log/pve-lab/apt.log").read_text()  # all of apt's output (the step shows its end)
    seen["after_first"] = dpkg_status(node, "pve-cluster", "pve-manager", "proxmox-ve")
    node.file("etc/hosts").write_text(good_hosts)
    seen["second"] = step(node, commands, "finish")
    seen["after_second"] = dpkg_status(node, "pve-cluster", "pve-manager", "proxmox-ve")
    return seen


def prepare(hosts: PackageHosts, image: TrixieImage) -> tuple:
    """Main thread: the program's commands, with the test key's sha256 as the keyring's."""
    overrides = {"repository": {"keyringSha256": hosts.keyring_sha256}}
    return hosts, image, node_commands(overrides), scripts_step(overrides)


def run_scenarios(prepared: tuple) -> dict:
    """Background thread: the scenarios at once, one node each; what each saw (or its exception)."""
    hosts, image, commands, scripts = prepared
    runs = {"happy": happy_path, "unreachable": unreachable_repository, "half": half_configured}
    folder = Path(tempfile.mkdtemp(prefix="pve-lab-install-"))
    nodes = {key: new_node(folder / key, hosts, image, commands, "pve1", scripts) for key in runs}
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(runs)) as pool:
            futures = {key: pool.submit(fn, nodes[key], commands) for key, fn in runs.items()}
            results = {}
            for key, future in futures.items():
                try:
                    results[key] = future.result()
                except Exception as e:  # reported by the test that needs it
                    results[key] = e
        results["seconds"] = time.monotonic() - started
        return results
    finally:
        destroy_all(nodes.values())
        shutil.rmtree(folder, ignore_errors=True)


early.register(__name__, prepare, run_scenarios)


@pytest.fixture(scope="module")
def scenarios(container_host):
    return early.result(__name__)


def result(scenarios, key):
    value = scenarios[key]
    if isinstance(value, BaseException):
        raise value
    return value


def test_the_install_steps_build_a_node_on_real_debian(scenarios):
    seen = result(scenarios, "happy")
    assert "another apt process holds the package lists lock" in seen["prepare"].stderr
    assert seen["keyring_sha256"] != "" and "Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg" in seen["proxmox_sources"]
    assert seen["kernel_before_reboot"] != PVE_KERNEL and seen["kernel_after_reboot"] == PVE_KERNEL
    assert set(seen["packages"].values()) == {"installed"}, seen["packages"]
    assert seen["ready"].stdout.strip() == f"pve-manager/{PVE_MANAGER_VERSION}/42db4a6cf33dac83 (running kernel: {PVE_KERNEL})"


def test_a_second_run_of_every_step_changes_nothing(scenarios):
    seen = result(scenarios, "happy")
    for name, r in seen["rerun"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert "no reboot needed" in seen["rerun"]["reboot"].stderr
    assert not seen["digest_changed"]


def test_the_enterprise_repository_is_disabled_and_stays_disabled(scenarios):
    seen = result(scenarios, "happy")
    assert "Enabled: no" in seen["enterprise_sources"]
    assert "URIs: https://enterprise.proxmox.com/debian/pve" in seen["enterprise_sources"]
    # apt no longer asks the enterprise repository (which answers 401), and every index is fresh
    assert seen["update"].returncode == 0 and not re.search(r"^(W|E):", seen["update"].output, re.M), seen["update"].output
    assert not [r for r in seen["rerun_requests"] if "enterprise.proxmox.com/debian/pve" in r]
    assert seen["reinstall"].returncode == 0, seen["reinstall"].output[-3000:]
    assert seen["enterprise_after_reinstall"] == seen["enterprise_sources"]


def test_an_unreachable_proxmox_repository_stops_prepare_before_the_upgrade(scenarios):
    seen = result(scenarios, "unreachable")
    r = seen["prepare"]
    assert r.returncode == 1
    # real apt: a host it cannot reach is only a warning, and it exits 0
    assert "W: Failed to fetch http://download.proxmox.com/debian/pve/dists/trixie/InRelease" in r.stderr
    assert "pve-lab: error: apt-get update could not read every repository (exit 0)" in r.stderr
    assert "Calculating upgrade" not in r.stderr
    assert seen["packages"].get("proxmox-default-kernel") != "installed"


def test_a_half_configured_install_completes_on_the_next_run(scenarios):
    seen = result(scenarios, "half")
    assert seen["first"].returncode == 1
    # pmxcfs's reason goes to the journal; apt shows the failed start and dpkg's error
    assert "Job for pve-cluster.service failed" in seen["apt_log"]
    assert "dpkg: error processing package pve-cluster (--configure)" in seen["apt_log"]
    assert "apt-get install failed (exit 100): its last lines are above" in seen["first"].stderr
    assert seen["after_first"]["pve-cluster"] == "half-configured", seen["after_first"]
    assert seen["second"].returncode == 0, seen["second"].output[-3000:]
    assert set(seen["after_second"].values()) == {"installed"}, seen["after_second"]

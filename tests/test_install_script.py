"""components/scripts/install-pve.sh run for real (tests/node_runner.FakeNode) against the Debian stand-ins.

A node starts as a fresh Debian 13 genericcloud VM (cloud-init's /etc/hosts with 127.0.1.1, Debian cloud
kernel). `perform_reboot` plays the part of the machine: it boots the default kernel, starts sshd again and
lets cloud-init render /etc/hosts from its template, as it does on every boot on PVE (manage_etc_hosts).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_runner import STANDIN_BIN, FakeNode, standin_log

sys.path.insert(0, str(STANDIN_BIN))
import _debian  # noqa: E402
from standin_lib import arm_fault  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "components" / "scripts" / "install-pve.sh"
NODE_ENV = {"NODE_HOSTNAME": "pve1", "NODE_FQDN": "pve1.lab.example", "NODE_IP": "10.10.10.11"}
STANDIN_KEYRING_SHA256 = hashlib.sha256(_debian.STANDIN_KEYRING).hexdigest()
FAST = {"KEYRING_SHA256": STANDIN_KEYRING_SHA256, "DEADLINE_S": "5", "POLL_S": "0.02"}

CLOUD_TEMPLATE = """## template:jinja
{# cloud-init renders this at every boot when manage_etc_hosts is true -#}
127.0.1.1 {{fqdn}} {{hostname}}
127.0.0.1 localhost

# IPv6
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""
EXPECTED_HOSTS = """127.0.0.1 localhost
10.10.10.11 pve1.lab.example pve1

# IPv6
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""
EXPECTED_SOURCES = """Types: deb
URIs: http://download.proxmox.com/debian/pve
Suites: trixie
Components: pve-no-subscription
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
"""


def render_cloud_hosts(template: str, fqdn: str, hostname: str) -> str:
    body = template.split("\n", 1)[1]
    body = re.sub(r"\{#.*?-?#\}\n?", "", body, flags=re.S)
    return body.replace("{{fqdn}}", fqdn).replace("{{hostname}}", hostname)


@pytest.fixture
def node(tmp_path) -> FakeNode:
    return fresh_node(tmp_path)


def fresh_node(tmp_path: Path, packages: list[str] | None = None) -> FakeNode:
    state = tmp_path / "state"
    n = FakeNode("pve1", state)
    _debian.seed_fresh(state, n.name, packages)
    template = n.root / "etc/cloud/templates/hosts.debian.tmpl"
    template.parent.mkdir(parents=True)
    template.write_text(CLOUD_TEMPLATE)
    (n.root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (n.root / "etc/hosts").write_text(render_cloud_hosts(CLOUD_TEMPLATE, NODE_ENV["NODE_FQDN"], "pve1"))
    return n


def run(n: FakeNode, step: str, **env: str):
    return n.run_script("install-pve", [step], {**NODE_ENV, **FAST, **env})


def debian(n: FakeNode) -> dict:
    return _debian.load(n.state, n.name)


def perform_reboot(n: FakeNode) -> None:
    """Do what the node does when the timer fires: boot the default kernel, sshd and cloud-init start."""
    path = _debian.state_path(n.state, n.name)
    data = json.loads(path.read_text())
    assert [s["command"] for s in data["scheduled"]] == [["systemctl", "reboot"]], data["scheduled"]
    data["running_kernel"] = data["default_kernel"]
    data["scheduled"] = []
    data["units"] = {u: v for u, v in data["units"].items() if not u.endswith(".timer")}
    data["units"]["ssh.service"]["active"] = True
    path.write_text(json.dumps(data))
    # PVE's cloud-init user-data has manage_etc_hosts: true, which beats any cloud.cfg.d drop-in.
    template = (n.root / "etc/cloud/templates/hosts.debian.tmpl").read_text()
    (n.root / "etc/hosts").write_text(render_cloud_hosts(template, NODE_ENV["NODE_FQDN"], "pve1"))


def install(n: FakeNode) -> None:
    for step in ("prepare", "reboot"):
        r = run(n, step)
        assert r.returncode == 0, r.output
    perform_reboot(n)
    for step in ("finish", "ready"):
        r = run(n, step)
        assert r.returncode == 0, r.output


def index_of(log: list[str], pattern: str, start: int = 0) -> int:
    for i, line in enumerate(log[start:], start):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no call matching {pattern!r} in:\n" + "\n".join(log))


def snapshot(n: FakeNode) -> dict:
    files = {str(p.relative_to(n.root)): p.read_bytes() for p in sorted(n.root.rglob("*")) if p.is_file()}
    return {"files": files, "debian": debian(n)}


MUTATING = re.compile(r": (apt-get .*\b(install|remove|purge|update|full-upgrade)\b|systemd-run|update-grub|"
                      r"debconf-set-selections|systemctl (start|stop|enable|disable|restart|reboot)|curl .*\.gpg)")


def test_full_install_runs_the_steps_in_order(node):
    install(node)
    log = standin_log(node.state)
    keyring = index_of(log, r"curl .*proxmox-archive-keyring-trixie\.gpg")
    update = index_of(log, r"apt-get .* update$")
    upgrade = index_of(log, r"apt-get .* full-upgrade$")
    kernel = index_of(log, r"apt-get .* install .*proxmox-default-kernel")
    ssh_stop = index_of(log, r"systemctl stop ssh\.service")
    reboot = index_of(log, r"systemd-run .*--on-active=5 --timer-property=AccuracySec=1s .*systemctl reboot")
    pve = index_of(log, r"apt-get .* install proxmox-ve postfix open-iscsi qemu-guest-agent$")
    removal = index_of(log, r"apt-get .* remove linux-image-6\.12\.48\+deb13-cloud-amd64 linux-image-cloud-amd64$")
    grub = index_of(log, r"update-grub")
    assert keyring < update < upgrade < kernel < ssh_stop < reboot < pve < removal < grub
    # The sources file was in place, signed by the verified keyring, when apt read the lists.
    state = debian(node)
    assert state["proxmox_source"]["Components"] == "pve-no-subscription"
    assert (node.root / "etc/apt/sources.list.d/proxmox.sources").read_text() == EXPECTED_SOURCES
    keyring_file = node.root / "usr/share/keyrings/proxmox-archive-keyring.gpg"
    assert keyring_file.read_bytes() == _debian.STANDIN_KEYRING
    assert state["running_kernel"].endswith("-pve")
    assert not [p for p in state["packages"] if p.startswith("linux-image-")]
    assert {"proxmox-ve", "postfix", "open-iscsi", "chrony", "qemu-guest-agent"} <= set(state["packages"])
    assert state["debconf"]["postfix/main_mailer_type"] == {"type": "select", "value": "Local only"}
    assert state["units"]["qemu-guest-agent.service"]["active"]
    assert state["units"]["chrony.service"]["active"]
    grub_cfg = (node.root / "boot/grub/grub.cfg").read_text()
    assert "vmlinuz-6.17.2-1-pve" in grub_cfg and "6.12" not in grub_cfg


def test_only_ready_prints_to_stdout(node):
    outputs = []
    for step in ("prepare", "reboot"):
        outputs.append(run(node, step).stdout)
    perform_reboot(node)
    outputs.append(run(node, "finish").stdout)
    assert outputs == ["", "", ""]


def test_ready_prints_the_pveversion_line(node):
    install(node)
    r = run(node, "ready")
    assert r.returncode == 0, r.output
    assert r.stdout == f"pve-manager/{_debian.PVE_MANAGER_VERSION} (running kernel: {_debian.PVE_KERNEL})\n"


def test_hosts_file_and_cloud_init_dropin(node):
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    hosts = (node.root / "etc/hosts").read_text()
    assert hosts == EXPECTED_HOSTS
    assert "127.0.1.1" not in hosts
    dropin = (node.root / "etc/cloud/cloud.cfg.d/99-pve-lab-hosts.cfg").read_text()
    assert re.search(r"^manage_etc_hosts: false$", dropin, re.M)
    # cloud-init renders its template at the next boot: the hosts file must survive that.
    assert run(node, "reboot").returncode == 0
    perform_reboot(node)
    assert (node.root / "etc/hosts").read_text() == EXPECTED_HOSTS


def test_hosts_keeps_other_entries_and_drops_stale_mappings(node):
    (node.root / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost pve1\n127.0.1.1 pve1.lab.example pve1\n10.10.10.99 pve1\n10.10.10.12 pve2.lab.example pve2\n")
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert (node.root / "etc/hosts").read_text() == (
        "127.0.0.1 localhost\n10.10.10.11 pve1.lab.example pve1\n10.10.10.12 pve2.lab.example pve2\n")


def test_every_step_again_changes_nothing(node):
    install(node)
    before = snapshot(node)
    calls_before = len(standin_log(node.state))
    for step in ("prepare", "reboot", "finish", "ready"):
        r = run(node, step)
        assert r.returncode == 0, f"{step}: {r.output}"
    again = standin_log(node.state)[calls_before:]
    assert [c for c in again if MUTATING.search(c)] == []
    assert snapshot(node) == before


def test_prepare_twice_before_the_reboot_changes_nothing(node):
    assert run(node, "prepare").returncode == 0
    before = snapshot(node)
    calls_before = len(standin_log(node.state))
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert [c for c in standin_log(node.state)[calls_before:] if MUTATING.search(c)] == []
    assert snapshot(node) == before


def test_reboot_closes_ssh_then_schedules_and_is_skipped_on_the_pve_kernel(node):
    assert run(node, "prepare").returncode == 0
    r = run(node, "reboot")
    assert r.returncode == 0, r.output
    state = debian(node)
    assert state["units"]["ssh.service"]["active"] is False
    assert state["scheduled"][0]["on_active"] == "5"
    # Asked again before the timer fired: no second timer.
    r = run(node, "reboot")
    assert r.returncode == 0 and "already scheduled" in r.stderr
    assert len(debian(node)["scheduled"]) == 1
    perform_reboot(node)
    calls_before = len(standin_log(node.state))
    r = run(node, "reboot")
    assert r.returncode == 0 and "no reboot needed" in r.stderr
    assert [c for c in standin_log(node.state)[calls_before:] if MUTATING.search(c)] == []


def test_reboot_before_prepare_fails_clearly(node):
    r = run(node, "reboot")
    assert r.returncode == 1
    assert "proxmox-default-kernel is not installed" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "pve-lab: Run the prepare step first."
    assert debian(node)["units"]["ssh.service"]["active"] is True


def test_generic_image_kernels_and_os_prober_are_removed(tmp_path):
    packages = sorted(set(_debian.FRESH_PACKAGES) - {"linux-image-cloud-amd64", f"linux-image-{_debian.DEBIAN_KERNEL}"}
                      | {"linux-image-amd64", "linux-image-6.12.48+deb13-amd64", "os-prober"})
    n = fresh_node(tmp_path, packages)
    path = _debian.state_path(n.state, n.name)
    data = json.loads(path.read_text())
    data["running_kernel"] = data["default_kernel"] = "6.12.48+deb13-amd64"
    path.write_text(json.dumps(data))
    install(n)
    log = standin_log(n.state)
    index_of(log, r"apt-get .* remove linux-image-6\.12\.48\+deb13-amd64 linux-image-amd64 os-prober$")
    assert not {"os-prober", "linux-image-amd64"} & set(debian(n)["packages"])


def test_wrong_keyring_hash_stops_before_the_sources(node):
    r = run(node, "prepare", KEYRING_SHA256="0" * 64)
    assert r.returncode == 1
    assert f"has sha256 {STANDIN_KEYRING_SHA256}, expected {'0' * 64}; not trusting it" in r.stderr
    assert not (node.root / "etc/apt/sources.list.d/proxmox.sources").exists()
    assert not list((node.root / "usr/share/keyrings").glob("*"))
    assert not [c for c in standin_log(node.state) if "apt-get" in c]


def test_default_keyring_hash_is_the_published_one(node):
    # The stand-in serves other bytes than Proxmox's real keyring, so the built-in hash must reject them.
    env = {k: v for k, v in FAST.items() if k != "KEYRING_SHA256"}
    r = node.run_script("install-pve", ["prepare"], {**NODE_ENV, **env})
    assert r.returncode == 1
    assert "expected 136673be77aba35dcce385b28737689ad64fd785a797e57897589aed08db6e45" in r.stderr


def test_keyring_download_failure(node):
    arm_fault(node.state, "keyring-download-fail")
    r = run(node, "prepare")
    assert r.returncode == 1
    assert "could not download the Proxmox keyring" in r.stderr
    assert not (node.root / "etc/apt/sources.list.d/proxmox.sources").exists()


def test_apt_failure_is_reported_and_the_step_resumes(node):
    arm_fault(node.state, "apt-fail", times=1)
    r = run(node, "prepare")
    assert r.returncode == 1
    assert "pve-lab: error: apt-get update could not read every repository (exit 100)" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].endswith("run this step again; it resumes where it stopped.")
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert "proxmox-default-kernel" in debian(node)["packages"]


def test_finish_before_the_reboot_fails_clearly(node):
    assert run(node, "prepare").returncode == 0
    assert run(node, "reboot").returncode == 0
    r = run(node, "finish")
    assert r.returncode == 1
    assert "running kernel is 6.12.48+deb13-cloud-amd64, not a Proxmox kernel" in r.stderr
    assert not [c for c in standin_log(node.state) if "install proxmox-ve" in c]


def test_ready_times_out_with_what_did_not_come_up(node):
    install(node)
    arm_fault(node.state, "api-slow")
    started = time.monotonic()
    r = run(node, "ready", DEADLINE_S="1", POLL_S="0.05")
    assert time.monotonic() - started < 10
    assert r.returncode == 1
    assert r.stdout == ""
    assert ("the API on https://localhost:8006/ did not come up within 1s on pve1; last error: API "
            "https://localhost:8006/: curl: (7) Failed to connect") in r.stderr


def test_ready_before_finish_names_pveversion(node):
    r = run(node, "ready", DEADLINE_S="0", POLL_S="0.01")
    assert r.returncode == 1
    assert "pveversion did not come up within 0s" in r.stderr
    assert "command not found" in r.stderr


def test_prepare_waits_for_cloud_init(node):
    arm_fault(node.state, "cloud-init-running", times=3)
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert len([c for c in standin_log(node.state) if c.endswith("cloud-init status")]) == 4


def test_prepare_gives_up_on_cloud_init_at_the_deadline(node):
    arm_fault(node.state, "cloud-init-running")
    r = run(node, "prepare", DEADLINE_S="0")
    assert r.returncode == 1
    assert "cloud-init still 'running' after 0s" in r.stderr


def test_wrong_machine_is_refused(node):
    r = run(node, "prepare", NODE_HOSTNAME="pve2", NODE_FQDN="pve2.lab.example")
    assert r.returncode == 1
    assert "this machine is named 'pve1' but NODE_HOSTNAME is 'pve2'" in r.stderr


@pytest.mark.parametrize("env, message", [
    ({"NODE_IP": ""}, "missing environment variable(s): NODE_IP"),
    ({"NODE_IP": "10.10.10"}, "NODE_IP='10.10.10' is not an IPv4 address"),
    ({"NODE_FQDN": "other.lab.example"}, "NODE_FQDN='other.lab.example' must start with NODE_HOSTNAME"),
    ({"DEADLINE_S": "soon"}, "DEADLINE_S='soon' must be a number of seconds"),
    ({"KEYRING_SHA256": "abc"}, "KEYRING_SHA256 must be 64 lower-case hex digits"),
])
def test_bad_environment_gets_one_clear_error(node, env, message):
    r = run(node, "prepare", **env)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.output
    assert standin_log(node.state) == []


def test_unknown_step_shows_usage(node):
    r = run(node, "install")
    assert r.returncode == 1
    assert "Usage: install-pve.sh prepare|reboot|finish|ready" in r.stderr


def test_script_never_traces_commands():
    text = SCRIPT.read_text()
    assert not re.search(r"^\s*set\s+(-\w*x|-o\s+xtrace)", text, re.M)
    assert "bash -x" not in text


def test_shellcheck_style_passes():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not shellcheck:
        pytest.skip("shellcheck is not installed")
    # -x: follow `source lib/common.sh`, so the helpers are checked as the script uses them.
    proc = subprocess.run([shellcheck, "-x", "-S", "style", str(SCRIPT), str(SCRIPT.parent / "lib/common.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_finish_disables_the_enterprise_source_pve_manager_installs(node):
    install(node)
    enterprise = node.root / "etc/apt/sources.list.d/pve-enterprise.sources"
    assert enterprise.read_text() == _debian.PVE_ENTERPRISE_SOURCES + "Enabled: no\n"
    # apt no longer reads it: a later update (e.g. prepare after a lost keyring) succeeds instead of 401
    r = node.run("apt-get -q update", timeout=30)
    assert r.returncode == 0, r.output
    assert run(node, "finish").returncode == 0
    assert enterprise.read_text().count("Enabled: no") == 1


def test_an_enabled_enterprise_source_fails_update_with_401(node):
    install(node)
    enterprise = node.root / "etc/apt/sources.list.d/pve-enterprise.sources"
    enterprise.write_text(_debian.PVE_ENTERPRISE_SOURCES)
    r = node.run("apt-get -q update", timeout=30)
    assert r.returncode == 100
    assert "401  Unauthorized" in r.stderr
    # the next prepare disables it before it updates
    (node.root / "usr/share/keyrings/proxmox-archive-keyring.gpg").unlink()
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert "disabled the enterprise repository" in r.stderr


def test_the_enterprise_source_stays_when_the_enterprise_repository_is_chosen(node):
    for step in ("prepare", "reboot"):
        assert run(node, step, PVE_REPO_COMPONENT="pve-enterprise").returncode == 0
    perform_reboot(node)
    assert run(node, "finish", PVE_REPO_COMPONENT="pve-enterprise").returncode == 0
    enterprise = node.root / "etc/apt/sources.list.d/pve-enterprise.sources"
    assert enterprise.read_text() == _debian.PVE_ENTERPRISE_SOURCES


def test_update_waits_while_another_apt_holds_the_lists_lock(node):
    arm_fault(node.state, "apt-lists-lock", times=2)
    r = run(node, "prepare")
    assert r.returncode == 0, r.output
    assert r.stderr.count("another apt process holds the package lists lock") == 2
    assert "proxmox-default-kernel" in debian(node)["packages"]


def test_update_gives_up_on_the_lists_lock_at_the_deadline(node):
    arm_fault(node.state, "apt-lists-lock")
    r = run(node, "prepare", DEADLINE_S="0.2")
    assert r.returncode == 1
    assert "another apt process still holds /var/lib/apt/lists/lock after 0.2s" in r.stderr
    assert not [c for c in standin_log(node.state) if "full-upgrade" in c]


def test_an_unreachable_proxmox_repository_stops_prepare(node):
    # real apt exits 0 here, with warnings only (seen in tests/test_container_install.py)
    arm_fault(node.state, "proxmox-unreachable")
    r = run(node, "prepare")
    assert r.returncode == 1
    assert "apt-get update could not read every repository (exit 0)" in r.stderr
    assert "Temporary failure resolving 'download.proxmox.com'" in r.stderr
    assert not [c for c in standin_log(node.state) if "full-upgrade" in c]

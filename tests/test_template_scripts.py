"""The golden-template scripts run for real against the stand-ins: a builder installed with install-pve.sh
from a fresh Debian VM, sealed by node-seal.sh, "cloned" (its file tree and package state copied to a new
node), first-booted the way PVE and cloud-init boot a clone, then given its identity by node-firstboot.sh.

`boot_clone` plays the machine and cloud-init (tests/standins/README.md "Template tools"): systemd makes a
machine-id when /etc/machine-id is empty, cloud-init (a new instance after `cloud-init clean`) sets the host
name, regenerates missing SSH host keys, writes root's key and renders /etc/hosts from its template;
pmxcfs fails to start when /etc/hosts does not name the node (pve-cluster, like the real one).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from node_runner import STANDIN_BIN, FakeNode, standin_log

sys.path.insert(0, str(STANDIN_BIN))
import _debian  # noqa: E402
import _identity  # noqa: E402

BUILDER = {"NODE_HOSTNAME": "pvelab-builder", "NODE_FQDN": "pvelab-builder.lab.internal", "NODE_IP": "10.10.10.14"}
CLONE = {"NODE_HOSTNAME": "pve2", "NODE_FQDN": "pve2.lab.internal", "NODE_IP": "10.10.10.12"}
FAST = {"KEYRING_SHA256": hashlib.sha256(_debian.STANDIN_KEYRING).hexdigest(), "DEADLINE_S": "3", "POLL_S": "0.02"}
CLOUD_TEMPLATE = "## template:jinja\n127.0.1.1 {{fqdn}} {{hostname}}\n127.0.0.1 localhost\n"
MUTATING = re.compile(r": (apt-get .*\b(install|remove|purge|update|full-upgrade)\b|systemd-run|ssh-keygen|"
                      r"systemd-machine-id-setup|pvecm updatecerts|cloud-init clean|"
                      r"systemctl (start|stop|enable|disable|restart|reboot))")


def render(template: str, fqdn: str, host: str) -> str:
    return template.split("\n", 1)[1].replace("{{fqdn}}", fqdn).replace("{{hostname}}", host)


def seed(n: FakeNode, env: dict) -> None:
    """A fresh Debian 13 cloud VM as cloud-init leaves it after its first boot."""
    _debian.seed_fresh(n.state, n.name)
    root = n.root
    (root / "etc/cloud/templates").mkdir(parents=True)
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (root / "etc/cloud/templates/hosts.debian.tmpl").write_text(CLOUD_TEMPLATE)
    (root / "etc/hosts").write_text(render(CLOUD_TEMPLATE, env["NODE_FQDN"], env["NODE_HOSTNAME"]))
    (root / "etc/resolv.conf").write_text("search lab.internal\nnameserver 10.10.10.1\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("builder host key\n")
    (root / "root/.ssh").mkdir(parents=True)
    (root / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA builder-stack-key\n")
    (root / "var/lib/cloud/instances/builder-instance").mkdir(parents=True)
    (root / "var/lib/cloud/instance").symlink_to("instances/builder-instance")
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_trixie_InRelease").write_text("lists\n")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/archives/pve-manager_9.1.1_amd64.deb").write_text("deb\n")


def set_state(n: FakeNode, **changes) -> None:
    path = _debian.state_path(n.state, n.name)
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def install_builder(n: FakeNode) -> None:
    """install-pve.sh as the builder runs it, then what pve-manager's postinst does (`pvecm updatecerts --silent`)."""
    for step in ("prepare", "reboot"):
        r = n.run_script("install-pve", [step], {**BUILDER, **FAST})
        assert r.returncode == 0, r.output
    data = _debian.load(n.state, n.name)
    set_state(n, running_kernel=data["default_kernel"], scheduled=[],
              units={**{u: v for u, v in data["units"].items() if not u.endswith(".timer")},
                     "ssh.service": {"enabled": "enabled", "active": True}})
    for step in ("finish", "ready"):
        r = n.run_script("install-pve", [step], {**BUILDER, **FAST})
        assert r.returncode == 0, r.output
    (n.root / "etc/postfix").mkdir(parents=True, exist_ok=True)
    (n.root / "etc/postfix/main.cf").write_text(f"myhostname = {BUILDER['NODE_FQDN']}\nmydestination = localhost\n")
    (n.root / "etc/mailname").write_text(BUILDER["NODE_FQDN"] + "\n")
    r = n.run("pvecm updatecerts --silent")  # pve-manager debian/postinst
    assert r.returncode == 0, r.output


def seal(n: FakeNode, **env: str):
    return n.run_script("node-seal", [], {**BUILDER, "TEMPLATE_KEY": "tpl-abc123", "POWEROFF_DELAY_S": "1", **env})


def clone(builder: FakeNode, name: str = "pve2") -> FakeNode:
    """What `qm clone` of the template gives: the builder's disk (file tree and package state) as a new VM."""
    n = FakeNode(name, builder.state)
    shutil.rmtree(n.root)
    shutil.copytree(builder.root, n.root, symlinks=True)
    shutil.copy(_debian.state_path(builder.state, builder.name), _debian.state_path(n.state, n.name))
    return n


def boot_clone(n: FakeNode, hostname: str = "pve2", cloud_init_ran: bool = True, host_keys: bool = True) -> None:
    """The clone's first boot: systemd, cloud-init (a new instance), and pmxcfs, as the real ones behave."""
    root = n.root
    data = _debian.load(n.state, n.name)
    data["scheduled"] = []
    data["units"] = {u: v for u, v in data["units"].items() if not u.endswith(".timer")}
    for unit in data["units"].values():
        unit["active"] = unit["enabled"] in ("enabled", "static")
    # pve-ha-manager's units need pmxcfs: at the clone's first boot they fail with it
    for unit in ("pve-ha-lrm.service", "pve-ha-crm.service"):
        data["units"][unit] = {"enabled": "enabled", "active": False}
    if not (root / "etc/machine-id").read_text().strip():
        (root / "etc/machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    if cloud_init_ran:
        data["hostname"] = hostname
        for kind in ("rsa", "ecdsa", "ed25519") if host_keys else ():
            key = root / f"etc/ssh/ssh_host_{kind}_key"
            if not key.exists():
                key.write_text(f"{hostname} {kind} host key\n")
        (root / "root/.ssh").mkdir(parents=True, exist_ok=True)
        (root / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA lab-stack-key\n")
        template = (root / "etc/cloud/templates/hosts.debian.tmpl").read_text()
        (root / "etc/hosts").write_text(render(template, f"{hostname}.lab.internal", hostname))
    else:
        data["hostname"] = BUILDER["NODE_HOSTNAME"]
    if not list((root / "etc/ssh").glob("ssh_host_*_key")):
        # sshd exits at once without host keys; systemd restarts it until its start limit, then gives up
        # (seen in tests/test_container_template.py: Debian's sshd-keygen.service needs ConditionFirstBoot,
        # which an empty /etc/machine-id does not give)
        data["units"]["ssh.service"].update(active=False, start_limit_hit=True)
    name = _debian.hostname({**data, "hostname": data["hostname"]})
    names_node = _identity_node_ip(root, name)
    # pmxcfs refuses to start when the node name does not resolve to a non-loopback address.
    data["units"]["pve-cluster.service"]["active"] = names_node
    _debian.state_path(n.state, n.name).write_text(json.dumps(data))


def _identity_node_ip(root: Path, name: str) -> bool:
    for line in (root / "etc/hosts").read_text().splitlines():
        words = line.split()
        if len(words) > 1 and name in words[1:] and not words[0].startswith("127."):
            return True
    return False


def firstboot(n: FakeNode, step: str, **env: str):
    if step == "prepare":
        return n.run_script("install-pve", ["prepare"], {**CLONE, **FAST, **env})
    return n.run_script("node-firstboot", [step], {**CLONE, **FAST, **env})


def first_boot_all(n: FakeNode) -> list:
    results = []
    for step in ("identity", "prepare", "pve", "ready"):
        r = firstboot(n, step)
        results.append(r)
        assert r.returncode == 0, f"{step}: {r.output}"
    return results


@pytest.fixture(scope="module")
def installed_builder(tmp_path_factory) -> FakeNode:
    """Installed once per module (the full install-pve.sh run takes seconds); each test gets a copy."""
    n = FakeNode("pvelab-builder", tmp_path_factory.mktemp("builder") / "state")
    seed(n, BUILDER)
    install_builder(n)
    return n


@pytest.fixture
def builder(installed_builder, tmp_path) -> FakeNode:
    shutil.copytree(installed_builder.state, tmp_path / "state", symlinks=True)
    return FakeNode("pvelab-builder", tmp_path / "state")


@pytest.fixture(scope="module")
def booted_once(installed_builder, tmp_path_factory) -> FakeNode:
    """Sealed, cloned as pve2, booted and given its identity, once per module."""
    state = tmp_path_factory.mktemp("clone") / "state"
    shutil.copytree(installed_builder.state, state, symlinks=True)
    builder = FakeNode("pvelab-builder", state)
    assert seal(builder).returncode == 0
    node = clone(builder)
    boot_clone(node)
    first_boot_all(node)
    return node


@pytest.fixture
def booted(booted_once, tmp_path) -> FakeNode:
    shutil.copytree(booted_once.state, tmp_path / "state", symlinks=True)
    return FakeNode("pve2", tmp_path / "state")


def test_seal_removes_the_builders_identity_and_powers_off(builder):
    assert (builder.root / "etc/pve/nodes/pvelab-builder/pve-ssl.pem").exists()
    r = seal(builder)
    assert r.returncode == 0, r.output
    root = builder.root
    assert not (root / "var/lib/pve-cluster/config.db").exists()
    assert list((root / "etc/pve").iterdir()) == []
    assert list((root / "etc/ssh").glob("ssh_host_*")) == []
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/cloud").exists()
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert list((root / "var/cache/apt/archives").iterdir()) == []
    assert "pvelab-builder" not in (root / "etc/hosts").read_text()
    assert "pvelab-builder" not in (root / "etc/cloud/templates/hosts.debian.tmpl").read_text()
    assert (root / "etc/pve-lab/sealed").read_text() == "builder=pvelab-builder\nkey=tpl-abc123\n"
    state = _debian.load(builder.state, builder.name)
    assert state["units"]["pve-cluster.service"]["active"] is False
    assert state["units"]["pveproxy.service"]["active"] is False
    # services stay enabled: the clone starts them with its own name
    assert state["units"]["pve-cluster.service"]["enabled"] == "enabled"
    assert [s["command"] for s in state["scheduled"]] == [["systemctl", "poweroff"]]
    # without AccuracySec systemd fires the timer up to a minute late (seen in tests/test_container_template.py)
    assert [c for c in standin_log(builder.state) if re.search(
        r"systemd-run --on-active=1 --timer-property=AccuracySec=1s .*systemctl poweroff", c)]
    log = standin_log(builder.state)
    stop = max(i for i, c in enumerate(log) if "systemctl stop pve-cluster.service" in c)
    assert stop < max(i for i, c in enumerate(log) if "cloud-init clean --logs" in c)


def test_seal_twice_changes_nothing(builder):
    assert seal(builder).returncode == 0
    before = len(standin_log(builder.state))
    r = seal(builder)
    assert r.returncode == 0, r.output
    assert [c for c in standin_log(builder.state)[before:] if MUTATING.search(c)] == []
    assert "already scheduled" in r.stderr


def test_seal_refuses_another_machine_and_a_cluster_member(builder):
    r = seal(builder, NODE_HOSTNAME="pve1")
    assert r.returncode == 1
    assert "this machine is named 'pvelab-builder' but NODE_HOSTNAME is 'pve1'" in r.stderr
    (builder.root / "etc/corosync").mkdir(parents=True)
    (builder.root / "etc/corosync/corosync.conf").write_text("totem {}\n")
    r = seal(builder)
    assert r.returncode == 1
    assert "is a cluster member (/etc/corosync/corosync.conf exists): not sealing it" in r.stderr
    assert (builder.root / "var/lib/pve-cluster/config.db").exists()


def test_a_clone_gets_its_own_identity_without_apt(builder):
    assert seal(builder).returncode == 0
    node = clone(builder)
    boot_clone(node)
    assert _debian.load(node.state, node.name)["units"]["pve-cluster.service"]["active"] is False
    before = len(standin_log(node.state))
    results = first_boot_all(node)
    assert results[-1].stdout.startswith("pve-manager/9.")
    root = node.root
    cert = _identity.read_cert(root / "etc/pve/nodes/pve2/pve-ssl.pem")
    assert cert["cn"] == "pve2.lab.internal"
    assert "DNS:pve2" in cert["san"] and "IP:10.10.10.12" in cert["san"]
    assert not (root / "etc/pve/nodes/pvelab-builder").exists()
    assert "10.10.10.12 pve2.lab.internal pve2" in (root / "etc/hosts").read_text()
    assert (root / "etc/mailname").read_text() == "pve2.lab.internal\n"
    assert "myhostname = pve2.lab.internal" in (root / "etc/postfix/main.cf").read_text()
    assert (root / "etc/machine-id").read_text().strip() != "0123456789abcdef0123456789abcdef"
    calls = [c.split(": ", 1)[1] for c in standin_log(node.state)[before:] if c.startswith("pve2:")]
    assert not [c for c in calls if c.startswith("apt-get")], "the clone must not download packages"
    assert not [c for c in calls if c.startswith("curl") and ".gpg" in c]
    assert "pvecm updatecerts --force" in calls
    units = _debian.load(node.state, node.name)["units"]
    assert units["pve-ha-lrm.service"]["active"] and units["pve-ha-crm.service"]["active"]
    restart_proxy = calls.index("systemctl restart pveproxy.service")
    assert calls.index("pvecm updatecerts --force") < restart_proxy


def test_first_boot_twice_changes_nothing(booted):
    node = booted
    before = len(standin_log(node.state))
    first_boot_all(node)
    assert [c for c in standin_log(node.state)[before:] if MUTATING.search(c)] == []


def test_a_clone_of_an_unsealed_builder_fails_ready_clearly(builder):
    node = clone(builder)  # no seal: the builder's pmxcfs database and certificate come along
    boot_clone(node)
    r = firstboot(node, "ready", BUILDER_HOSTNAME="pvelab-builder")
    assert r.returncode == 1
    assert ("this clone kept the template builder's identity: /etc/pve/nodes/pvelab-builder "
            "(its node certificate) is still there") in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("pve-lab: The template was not sealed")


def test_a_clone_with_the_builders_certificate_fails_ready(booted):
    node = booted
    # a certificate made for the builder's name in this node's place (e.g. copied in by hand)
    _identity.write_cert(node.root / "etc/pve/nodes/pve2/pve-ssl.pem", "pvelab-builder.lab.internal",
                         ["DNS:localhost", "IP:10.10.10.14", "DNS:pvelab-builder"])
    r = firstboot(node, "ready")
    assert r.returncode == 1
    assert "this clone kept the template builder's identity: its node certificate is for pvelab-builder" in r.stderr


def test_a_clone_still_named_like_the_builder_fails_identity(builder):
    assert seal(builder).returncode == 0
    node = clone(builder)
    boot_clone(node, cloud_init_ran=False)
    r = firstboot(node, "identity")
    assert r.returncode == 1
    assert "this clone kept the template builder's identity: it is named 'pvelab-builder', not 'pve2'" in r.stderr


def test_ready_waits_for_the_api_then_names_it(booted):
    from standin_lib import arm_fault

    node = booted
    arm_fault(node.state, "api-slow")
    r = firstboot(node, "ready", DEADLINE_S="0.2")
    assert r.returncode == 1
    assert "pve2 is not ready within 0.2s; last error: API https://localhost:8006/" in r.stderr


def test_identity_does_not_wait_for_cloud_init_where_there_is_none(booted, tmp_path):
    # A Debian 13 without cloud-init (the container tests' image): `cloud-init status` is "command not found".
    bin_dir = tmp_path / "bin-without-cloud-init"
    bin_dir.mkdir()
    for tool in STANDIN_BIN.iterdir():
        if tool.name != "cloud-init":
            (bin_dir / tool.name).symlink_to(tool)
    booted.extra_env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    r = firstboot(booted, "identity", DEADLINE_S="30")
    assert r.returncode == 0, r.output
    assert "identity done" in r.stderr


def test_identity_makes_the_host_keys_sshd_gave_up_without(builder):
    assert seal(builder).returncode == 0
    node = clone(builder)
    boot_clone(node, host_keys=False)  # cloud-init made none (e.g. ssh_deletekeys off), sshd hit its start limit
    r = firstboot(node, "identity")
    assert r.returncode == 0, r.output
    assert "generated SSH host keys" in r.stderr
    assert _debian.load(node.state, node.name)["units"]["ssh.service"]["active"] is True
    assert list((node.root / "etc/ssh").glob("ssh_host_*_key"))

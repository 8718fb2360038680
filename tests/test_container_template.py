"""The golden-template path's seal and first boot on a real Debian 13 userland: a template builder installed in
a booted trixie container with the builder's own install steps, sealed with the program's `node-seal.sh`
step until it really powers off; then its root file system copied to new containers (what `qm clone` gives:
the same disk), booted, and given their identity with the program's first-boot steps.

Every command is the program's own (`nodes.source: template`, evaluated on the mock runtime). What stands in:
- **cloud-init** is not in the test image (a container has no NoCloud drive to give it): the test writes what
  cloud-init's first boot of a clone writes, the host name (`/etc/hostname`, and `systemd-nspawn --hostname`
  for the kernel's name), `/etc/hosts` as its Debian template renders it (127.0.1.1 for the name) and root's
  authorized key. The SSH host keys cloud-init would make are left missing, so the identity step's own
  `ssh-keygen -A` makes them and restarts the real sshd. Without cloud-init the seal has no instance state to
  clean, and node-firstboot.sh does not wait for it.
- **pmxcfs** is the dummy pve-cluster unit (its start-up check of /etc/hosts is pmxcfs's; no FUSE: /etc/pve is
  a plain folder), and `pvecm updatecerts` is the stand-in (tests/standins/bin/_identity.py) making a real CA
  and node certificate with the real openssl, as pve-cluster's Setup.pm does. pve-manager's postinst runs
  `pvecm updatecerts --silent` on the builder; the dummy package does not, so the test does.
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
from containers.lab import STANDINS, LabNode, PackageHosts, destroy_all
from containers.program import run_env
from harness import COMMAND, command_text, evaluate_lab
from pvelab.evaluate import unwrap
from standins.proxmox_repo import PVE_KERNEL, PVE_MANAGER_VERSION

STANDIN_MOUNT = "/opt/pve-lab-standins"
WRAPPERS = "/opt/pve-lab-test-bin"
BUILDER_STEPS = ("apt-proxy", "prepare", "reboot", "finish", "ready")
FIRST_BOOT_STEPS = ("identity", "apt-proxy", "prepare", "pve", "ready")
POWEROFF_DEADLINE_S = 120
LAB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPvelabLabStackKeyForTheClones lab-stack"
BUILDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPvelabBuilderStackKeyOnlyHere builder-stack"
# What a re-run must leave alone: every file under /etc (machine-id, SSH host keys, /etc/pve, /etc/hosts...),
# dpkg's database, and the services' processes (a restart is a new main PID).
TREE_DIGEST = r"""
find /etc /boot /root/.ssh -xdev \( -type f -o -type l \) -print0 | sort -z | xargs -0 stat -c '%n %a %F %N' | sha256sum
find /etc /boot /root/.ssh -xdev -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum
sha256sum < /var/lib/dpkg/status
systemctl show -p MainPID ssh.service pve-cluster.service pveproxy.service
"""
HOST_KEYS = "for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf \"$f\"; done"
# What sshd really serves (ssh-keyscan asks it), as fingerprints like those of the key files.
SERVED_KEYS = "ssh-keyscan -T 10 127.0.0.1 2>/dev/null | ssh-keygen -lf - | sort"
CERT = ("openssl x509 -noout -subject -ext subjectAltName -in /etc/pve/local/pve-ssl.pem && "
        "openssl verify -CAfile /etc/pve/pve-root-ca.pem /etc/pve/local/pve-ssl.pem")
BOOT_JOURNAL = ("systemctl status sshd-keygen.service --no-pager; "
                "journalctl -b -u ssh.service -u sshd-keygen.service -u pve-cluster.service --no-pager | tail -40")
UNITS = "systemctl is-active ssh.service pve-cluster.service pveproxy.service || true"


def prepare(hosts: PackageHosts, image: TrixieImage) -> tuple:
    """Main thread: the template path's commands (create line, stdin) by resource name."""
    ev = evaluate_lab({"nodes": {"source": "template"}, "repository": {"keyringSha256": hosts.keyring_sha256}})
    assert ev.error is None, ev.error
    commands = {r.name: (command_text(r), unwrap(r.inputs.get("stdin")) or "") for r in ev.records
                if r.type == COMMAND}
    builder = next(re.fullmatch(r"(lab-template-[0-9a-f]+)-seal", n).group(1) for n in commands
                   if re.fullmatch(r"lab-template-[0-9a-f]+-seal", n))
    return hosts, image, commands, builder


def node(folder: Path, hosts, image, state: Path, name: str, fqdn: str, scripts: tuple, files=None) -> LabNode:
    """A node with the stand-in pvecm first on its PATH (the dummy packages ship none)."""
    return LabNode(name, fqdn, folder / name, hosts, image,
                   binds=(f"--bind-ro={STANDINS}:{STANDIN_MOUNT}", f"--bind={state}:{state}"),
                   session_env={"PATH": f"{WRAPPERS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                "STANDIN_STATE": str(state), "STANDIN_NODE": name, "STANDIN_REAL_APT": "1"},
                   files={f"{WRAPPERS.lstrip('/')}/pvecm": f'#!/bin/sh\nexec {STANDIN_MOUNT}/bin/pvecm "$@"\n',
                          **(files or {})},
                   scripts=scripts)


# systemd 257 in a container of this kind of host (systemd-nspawn 252, legacy cgroup hierarchy) now and then
# fails to start a unit's process at all: "Failed to spawn executor: No such file or directory" (result
# 'resources'). No node script can cause or fix that; a step it hit is run once more, and counted.
EXECUTOR_FLAKE = "journalctl -b --no-pager -o cat | grep -c 'Failed to spawn executor: No such file or directory' || true"
executor_retries: list[str] = []


def run(n: LabNode, commands: dict, name: str):
    create, stdin = commands[name]
    flakes = n.run(EXECUTOR_FLAKE).stdout.strip()
    r = n.run(create, stdin=stdin, timeout=900)
    if r.returncode and n.run(EXECUTOR_FLAKE).stdout.strip() != flakes:
        executor_retries.append(f"{name}: {r.output.strip().splitlines()[0] if r.output.strip() else ''}")
        r = n.run(create, stdin=stdin, timeout=900)
    return r


def identity_facts(n: LabNode) -> dict:
    return {"machine_id": n.run("cat /etc/machine-id").stdout.strip(), "host_keys": n.run(HOST_KEYS).stdout,
            "ca": n.run("openssl x509 -noout -fingerprint -sha256 -in /etc/pve/pve-root-ca.pem").stdout.strip()}


def build_and_seal(builder: LabNode, commands: dict, prefix: str) -> dict:
    """The builder's install steps, pve-manager's postinst's updatecerts, then the seal until power-off."""
    seen = {}
    builder.create()
    for step in BUILDER_STEPS:
        r = run(builder, commands, f"{prefix}-{step}")
        assert r.returncode == 0, f"builder {step}: {r.output[-3000:]}"
        if step == "reboot":
            builder.wait_for_reboot()
    r = builder.run("pvecm updatecerts --silent")  # pve-manager debian/postinst
    assert r.returncode == 0, r.output
    seen["before"] = identity_facts(builder)
    seen["before_files"] = builder.run("ls /var/lib/pve-cluster/config.db /etc/pve/nodes; ls /var/lib/apt/lists "
                                       "| grep -c _; cat /etc/hosts").stdout
    seen["seal"] = run(builder, commands, f"{prefix}-seal")
    sealed_at = time.monotonic()
    # At once, before the delayed power-off: what runs now, and the timer the seal left.
    seen["after_seal_units"] = builder.run(
        "systemctl is-active pve-cluster.service pveproxy.service || true; "
        "systemctl show -p AccuracyUSec -p ActiveState pve-lab-poweroff.timer").stdout
    seen["poweroff_rc"] = builder.container.wait_exit(POWEROFF_DEADLINE_S)
    seen["poweroff_s"] = time.monotonic() - sealed_at
    builder._stop_server()
    return seen


def sealed_disk(root: Path, builder_name: str) -> dict:
    """The sealed builder's disk, read from the host while it is powered off."""
    ssh = sorted(p.name for p in (root / "etc/ssh").glob("ssh_host_*"))
    return {"config_db": (root / "var/lib/pve-cluster/config.db").exists(),
            "etc_pve": sorted(p.name for p in (root / "etc/pve").iterdir()),
            "host_keys": ssh, "machine_id": (root / "etc/machine-id").read_bytes(),
            "dbus_machine_id": (root / "var/lib/dbus/machine-id").exists(),
            "authorized_keys": (root / "root/.ssh/authorized_keys").exists(),
            "apt_lists": sorted(p.name for p in (root / "var/lib/apt/lists").glob("*_*")),
            "debs": sorted(p.name for p in (root / "var/cache/apt/archives").glob("*.deb")),
            "hosts": (root / "etc/hosts").read_text(), "marker": (root / "etc/pve-lab/sealed").read_text(),
            "cloud": (root / "var/lib/cloud").exists(), "hostname": (root / "etc/hostname").read_text().strip()}


def first_boot(clone: LabNode, commands: dict, disk: Path) -> dict:
    """Boot a copy of the sealed disk with cloud-init's part done by the test, then the first-boot steps twice."""
    seen = {}
    clone.create(disk=disk)
    seen["boot_units"] = clone.run(UNITS).stdout.split()
    seen["boot_machine_id"] = clone.run("cat /etc/machine-id; findmnt -n -o SOURCE,FSTYPE /etc/machine-id || true"
                                        ).stdout
    seen["boot_journal"] = clone.run(BOOT_JOURNAL).stdout
    seen["steps"] = {s: run(clone, commands, f"lab-{clone.hostname}-{s}") for s in FIRST_BOOT_STEPS}
    seen["steps_journal"] = clone.run(BOOT_JOURNAL).stdout
    seen["after"] = identity_facts(clone)
    seen["disk_machine_id"] = clone.file("etc/machine-id").read_text().strip()  # on the disk, seen from the host
    seen["served_keys"] = clone.run(SERVED_KEYS).stdout
    seen["units"] = clone.run(UNITS).stdout.split()
    seen["cert"] = clone.run(CERT)
    seen["hosts"] = clone.file("etc/hosts").read_text()
    before = clone.run(TREE_DIGEST).stdout
    seen["again"] = {s: run(clone, commands, f"lab-{clone.hostname}-{s}") for s in FIRST_BOOT_STEPS}
    seen["digest_changed"] = clone.run(TREE_DIGEST).stdout != before
    return seen


def unnamed_clone(clone: LabNode, commands: dict, disk: Path, builder_name: str) -> dict:
    """A copy of the sealed disk booted without cloud-init's part: it keeps the builder's name."""
    clone.container.hostname = builder_name
    clone.create(disk=disk, named=False)
    return {s: run(clone, commands, f"lab-{clone.hostname}-{s}") for s in ("identity", "ready")}


def run_template(prepared: tuple) -> dict:
    """Background thread: build and seal once, then a named and an unnamed clone at once."""
    hosts, image, commands, prefix = prepared
    folder = Path(tempfile.mkdtemp(prefix="pve-lab-template-"))
    state = folder / "standin-state"
    state.mkdir()
    seal_env = run_env(commands[f"{prefix}-seal"][0])
    builder_name = seal_env["NODE_HOSTNAME"]
    fqdn = lambda name: run_env(commands[f"{name}-prepare"][0])["NODE_FQDN"]  # noqa: E731
    builder = node(folder, hosts, image, state, builder_name, fqdn(prefix), commands[f"{prefix}-scripts"],
                   files={"root/.ssh/authorized_keys": BUILDER_KEY + "\n"})
    clones = {name: node(folder, hosts, image, state, name, fqdn(f"lab-{name}"), commands[f"lab-{name}-scripts"],
                         files={"root/.ssh/authorized_keys": LAB_KEY + "\n",
                                "etc/resolv.conf": "search lab.internal\nnameserver 10.10.10.1\n"})
              for name in ("pve1", "pve2")}
    clones["pve2"].files = {k: v for k, v in clones["pve2"].files.items() if not k.startswith(("root/", "etc/res"))}
    started = time.monotonic()
    try:
        seen = {"builder_name": builder_name, "seal_env": seal_env, **build_and_seal(builder, commands, prefix)}
        seen["build_s"] = time.monotonic() - started
        seen["disk"] = sealed_disk(builder.container.root, builder_name)
        clone_started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            named = pool.submit(first_boot, clones["pve1"], commands, builder.container.root)
            unnamed = pool.submit(unnamed_clone, clones["pve2"], commands, builder.container.root, builder_name)
            seen["clone"], seen["unnamed"] = named.result(), unnamed.result()
        seen["clone_s"] = time.monotonic() - clone_started
        seen["seconds"] = time.monotonic() - started
        seen["executor_retries"] = list(executor_retries)
        print(f"clone pve1 at boot: machine-id {seen['clone']['boot_machine_id']!r}; on its disk after the "
              f"steps {seen['clone']['disk_machine_id']!r}; units at boot {seen['clone']['boot_units']}")
        print(f"template scenario: {seen['seconds']:.1f}s (builder {seen['build_s']:.1f}s, power-off "
              f"{seen['poweroff_s']:.1f}s after the seal, clones {seen['clone_s']:.1f}s); steps run again after "
              f"systemd's executor failure: {seen['executor_retries']}")
        return seen
    finally:
        destroy_all([builder, *clones.values()])
        shutil.rmtree(folder, ignore_errors=True)


early.register(__name__, prepare, run_template)


@pytest.fixture(scope="module")
def seen(container_host):
    return early.result(__name__)


def test_the_seal_leaves_no_builder_identity_on_the_disk(seen):
    r = seen["seal"]
    assert r.returncode == 0, r.output[-3000:]
    builder = seen["builder_name"]
    assert "config.db" in seen["before_files"] and builder in seen["before_files"]
    assert f"{seen['seal_env']['NODE_IP']} " in seen["before_files"]
    disk = seen["disk"]
    assert not disk["config_db"] and disk["etc_pve"] == []
    assert disk["host_keys"] == [] and not disk["authorized_keys"]
    assert disk["machine_id"] == b"" and not disk["dbus_machine_id"]
    assert disk["apt_lists"] == [] and disk["debs"] == []
    assert builder not in disk["hosts"] and seen["seal_env"]["NODE_IP"] not in disk["hosts"]
    assert "127.0.0.1" in disk["hosts"] and "localhost" in disk["hosts"]
    assert disk["marker"] == f"builder={builder}\nkey={seen['seal_env']['TEMPLATE_KEY']}\n"
    assert not disk["cloud"]  # no cloud-init in the image: no instance state to clean
    assert disk["hostname"] == builder  # the clone's cloud-init renames it


def test_the_seal_stops_the_pve_services_and_really_powers_off(seen):
    assert "stopped pve-cluster.service" in seen["seal"].stderr and "stopped pveproxy.service" in seen["seal"].stderr
    units = seen["after_seal_units"].split()
    assert units[:2] == ["inactive", "inactive"], seen["after_seal_units"]
    # the timer asks for the delay as given (a default AccuracySec of 1 min would fire up to a minute late)
    assert "AccuracyUSec=1s" in seen["after_seal_units"] and "ActiveState=active" in seen["after_seal_units"]
    assert seen["poweroff_rc"] == 0  # systemd-nspawn's exit status after a power-off (a reboot is 133)
    assert seen["poweroff_s"] < POWEROFF_DEADLINE_S


def test_a_clone_gets_its_own_identity_on_real_debian(seen):
    clone = seen["clone"]
    for name, r in clone["steps"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}\n{clone['boot_journal']}\n{clone['steps_journal']}"
    before, after = seen["before"], clone["after"]
    # pmxcfs failed at boot (/etc/hosts named pve1 only on loopback); sshd (no host keys) failed or is being
    # restarted by systemd until its start limit
    assert clone["boot_units"][0] in ("failed", "activating") and clone["boot_units"][1] == "failed", \
        clone["boot_units"]
    assert "restarted pve-cluster (pmxcfs) with /etc/hosts in place" in clone["steps"]["pve"].stderr
    assert "generated SSH host keys" in clone["steps"]["identity"].stderr
    assert re.fullmatch(r"[0-9a-f]{32}", after["machine_id"]) and after["machine_id"] != before["machine_id"]
    assert after["host_keys"] and after["host_keys"] != before["host_keys"]
    assert not set(after["host_keys"].split()) & {w for w in before["host_keys"].split() if w.startswith("SHA256:")}
    served = {line.split()[1] for line in clone["served_keys"].splitlines()}
    assert served and served <= {line.split()[1] for line in after["host_keys"].splitlines()}
    assert clone["units"] == ["active", "active", "active"], clone["units"]
    cert = clone["cert"]
    assert cert.returncode == 0, cert.output
    assert "CN=pve1.lab.internal" in cert.stdout  # OpenSSL 3.5 prints no spaces around "="
    assert "DNS:pve1" in cert.stdout and "IP Address:10.10.10.11" in cert.stdout
    assert seen["builder_name"] not in cert.stdout and "/etc/pve/local/pve-ssl.pem: OK" in cert.stdout
    assert after["ca"] and after["ca"] != before["ca"]  # a new cluster CA, not the builder's
    assert "10.10.10.11 pve1.lab.internal pve1" in clone["hosts"]
    assert clone["steps"]["ready"].stdout.strip() == (
        f"pve-manager/{PVE_MANAGER_VERSION}/42db4a6cf33dac83 (running kernel: {PVE_KERNEL})")


def test_the_clones_machine_id_is_new_and_kept(seen):
    clone = seen["clone"]
    # systemd wrote a new one into the empty file at boot (no transient mount over it: findmnt prints nothing),
    # so the identity step had nothing to make, and the disk keeps it
    assert clone["boot_machine_id"].strip() == clone["disk_machine_id"] == clone["after"]["machine_id"]
    assert "generated a machine-id" not in clone["steps"]["identity"].stderr


def test_a_second_run_of_the_first_boot_steps_changes_nothing(seen):
    clone = seen["clone"]
    for name, r in clone["again"].items():
        assert r.returncode == 0, f"{name}: {r.output[-3000:]}"
    assert not clone["digest_changed"]


def test_a_clone_that_kept_the_builders_name_fails_clearly(seen):
    builder = seen["builder_name"]
    for step, r in seen["unnamed"].items():
        assert r.returncode == 1, f"{step}: {r.output[-2000:]}"
        assert (f"this clone kept the template builder's identity: it is named '{builder}', not 'pve2'"
                in r.stderr), r.stderr

"""Nested nodes as booted trixie containers, with the package hosts they reach (the pieces the tests use).

`PackageHosts` (one per test session): the stand-in Proxmox repository, the offline Debian mirror, and a
test CA whose certificate for enterprise.proxmox.com the nodes trust. `LabNode` (one per node): a copy of
the test image made to look like a fresh Debian 13 cloud VM on first boot (cloud-init's /etc/hosts with
127.0.1.1, the host name), booted, with `repo_server.py` listening on its 127.0.0.1:3142 and apt/curl
pointed at it for the package hosts only. What is a stand-in in there, and why, is in README.md
("What runs for real in the container tests").
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from containers.image import TrixieImage
from containers.nspawn import REBOOT_EXIT, Container, Result

STANDINS = Path(__file__).resolve().parent.parent / "standins"
PROXY_PORT = 3142
DEBIAN_KERNEL = "6.12.48+deb13-cloud-amd64"  # what a fresh genericcloud VM runs
# The package hosts go through the test's proxy; everything else has no route (the container has only lo).
APT_PROXY = f"""// pve-lab tests: the package hosts are the test's stand-ins on 127.0.0.1 (tests/standins/repo_server.py)
Acquire::http::Proxy::deb.debian.org "http://127.0.0.1:{PROXY_PORT}";
Acquire::http::Proxy::download.proxmox.com "http://127.0.0.1:{PROXY_PORT}";
Acquire::https::Proxy::enterprise.proxmox.com "http://127.0.0.1:{PROXY_PORT}";
"""
CURLRC = f"""# pve-lab tests: the keyring download goes through the test's proxy
proxy = "http://127.0.0.1:{PROXY_PORT}"
noproxy = "localhost,127.0.0.1"
"""
# A container shares the host's kernel: `uname -r` answers what the VM would run, picked at each boot.
UNAME = """#!/bin/sh
# pve-lab test stand-in: the kernel this node booted (a container shares the host's kernel)
if [ "$1" = "-r" ] && [ "$#" -eq 1 ]; then
    cat /etc/pve-lab-test/booted-kernel
else
    exec /usr/bin/uname "$@"
fi
"""
# No boot loader in a container: update-grub lists the kernels under /boot, as grub-mkconfig would.
UPDATE_GRUB = """#!/bin/sh
# pve-lab test stand-in: a container has no boot loader
mkdir -p /boot/grub
for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -rV); do echo "linux /$(basename "$k") root=/dev/sda1"; done > /boot/grub/grub.cfg
echo "Generating grub configuration file ... done" >&2
"""
# qemu-guest-agent's unit is BindsTo its virtio port, which only a VM has: the same unit without that.
GUEST_AGENT_UNIT = """[Unit]
Description=QEMU Guest Agent (pve-lab tests: a container has no virtio serial port)
[Service]
ExecStart=/usr/bin/sleep infinity
"""
CLOUD_HOSTS = """127.0.1.1 {fqdn} {hostname}
127.0.0.1 localhost

# The following lines are desirable for IPv6 capable hosts
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""


@dataclass
class PackageHosts:
    folder: Path
    proxmox: Path
    debian: Path
    keyring: Path
    ca_cert: bytes
    tls_cert: Path
    tls_key: Path

    @property
    def keyring_sha256(self) -> str:
        return hashlib.sha256(self.keyring.read_bytes()).hexdigest()


def make_package_hosts(folder: Path, image: TrixieImage) -> PackageHosts:
    sys.path.insert(0, str(STANDINS))
    from proxmox_repo import build_repository

    repo = build_repository(folder / "proxmox")
    ca_cert, cert, key = _test_tls(folder)
    return PackageHosts(folder, repo.folder, image.mirror, repo.keyring, ca_cert, cert, key)


def _test_tls(folder: Path) -> tuple[bytes, Path, Path]:
    """A throw-away CA and its certificate for enterprise.proxmox.com (what the nodes' curl and apt trust)."""
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "enterprise.key", folder / "enterprise.csr", folder / "enterprise.pem"
    ext = folder / "enterprise.ext"
    ext.write_text("subjectAltName=DNS:enterprise.proxmox.com\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=pve-lab test CA", "-keyout", str(ca_key), "-out", str(ca_cert))
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=enterprise.proxmox.com", "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return ca_cert.read_bytes(), cert, key


@dataclass
class LabNode:
    hostname: str
    fqdn: str
    workdir: Path
    hosts: PackageHosts
    image: TrixieImage
    binds: tuple = ()
    session_env: dict = field(default_factory=dict)  # e.g. the remaining stand-ins' STANDIN_* and PATH
    files: dict = field(default_factory=dict)  # extra files written into the image before the first boot
    # The program's scripts step for this node (create line, stdin): run once it first booted, as the
    # program's first step on a new VM ships the node scripts to $HOME/pve-lab (components/node_step.py).
    scripts: tuple = ()
    container: Container = field(init=False)
    server: Optional[subprocess.Popen] = field(default=None, init=False)
    requests_log: Path = field(init=False)

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = self.workdir / "root"
        # A machine name is a host name: mkdtemp's suffix may hold '_', which systemd-nspawn refuses (exit 1).
        suffix = re.sub(r"[^a-zA-Z0-9]", "x", self.workdir.parent.name[-6:])
        self.container = Container(f"pvelab-{self.hostname}-{suffix}", root, self.hostname, self.binds)
        self.requests_log = self.workdir / "requests.log"

    def create(self, apt_proxy: str = APT_PROXY, disk: Optional[Path] = None, named: bool = True) -> "LabNode":
        """The image made into a fresh cloud VM of this name, booted. With DISK (the root of a powered-off
        node), a copy of that disk instead of the image, as `qm clone` gives; NAMED=False leaves its host name
        and /etc/hosts as they are on the disk (cloud-init did not run)."""
        if disk is None:
            self.image.unpack(self.container.root)
        else:
            self.container.root.mkdir(parents=True)
            subprocess.run(["cp", "-a", "--reflink=auto", f"{disk}/.", str(self.container.root)], check=True)
        files = {
            **({"etc/hostname": f"{self.hostname}\n",
                "etc/hosts": CLOUD_HOSTS.format(fqdn=self.fqdn, hostname=self.hostname)} if named else {}),
            "etc/apt/apt.conf.d/00pve-lab-test-proxy": apt_proxy,
            "root/.curlrc": CURLRC,
            "usr/local/bin/uname": UNAME,
            "usr/local/sbin/update-grub": UPDATE_GRUB,
            "etc/systemd/system/qemu-guest-agent.service": GUEST_AGENT_UNIT,
        }
        for path, text in {**files, **self.files}.items():
            target = self.file(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            if text.startswith("#!"):
                target.chmod(0o755)
        if disk is None:
            with self.file("etc/ssl/certs/ca-certificates.crt").open("ab") as bundle:
                bundle.write(self.hosts.ca_cert)
        self.boot()
        if self.scripts:
            create, stdin = self.scripts
            r = self.run(create, stdin=stdin)
            assert r.returncode == 0, f"the scripts step failed on {self.hostname}: {r.output[-2000:]}"
        return self

    def file(self, path: str) -> Path:
        return self.container.file(path)

    def _pick_kernel(self) -> None:
        pve = sorted((p.name[len("vmlinuz-"):] for p in self.file("boot").glob("vmlinuz-*-pve")), reverse=True)
        target = self.file("etc/pve-lab-test/booted-kernel")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{pve[0] if pve else DEBIAN_KERNEL}\n")

    def boot(self) -> None:
        self._pick_kernel()
        self.container.boot()
        self._start_server()

    def _start_server(self) -> None:
        config = self.workdir / "server.json"
        ready = Path(str(self.requests_log) + ".ready")
        ready.unlink(missing_ok=True)
        config.write_text(json.dumps({
            "port": PROXY_PORT, "log": str(self.requests_log), "proxmox": str(self.hosts.proxmox),
            "debian": str(self.hosts.debian), "keyring": str(self.hosts.keyring),
            "tls_cert": str(self.hosts.tls_cert), "tls_key": str(self.hosts.tls_key)}))
        # The host's python3 in the container's network namespace only: it serves host folders on the
        # container's loopback, and is no process of the node.
        self.server = subprocess.Popen(
            [*self.container.nsenter("-n"), sys.executable, str(STANDINS / "repo_server.py"), str(config)],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "server.err").open("a"))
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"repo_server did not start; see {self.workdir / 'server.err'}")
            time.sleep(0.02)

    def _stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=10)
        self.server = None

    def run(self, command: str, stdin: str = "", timeout: float = 300) -> Result:
        return self.container.run(command, stdin=stdin, timeout=timeout, env=self.session_env)

    def wait_for_reboot(self, timeout: float = 60) -> None:
        """The node rebooted by itself (its scheduled timer): boot it again, as the VM's firmware would."""
        rc = self.container.wait_exit(timeout)
        assert rc == REBOOT_EXIT, f"{self.hostname} stopped with {rc}, not a reboot ({REBOOT_EXIT})"
        self._stop_server()
        self.boot()

    def requests(self) -> list[str]:
        return self.requests_log.read_text().splitlines() if self.requests_log.exists() else []

    def destroy(self) -> None:
        self._stop_server()
        self.container.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.container.root)], check=False)


def destroy_all(nodes) -> None:
    """Stop and remove nodes at once (each stop waits for its systemd to power off)."""
    with ThreadPoolExecutor(max(1, len(nodes))) as pool:
        list(pool.map(LabNode.destroy, nodes))

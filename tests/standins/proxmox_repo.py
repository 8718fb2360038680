"""A stand-in of the Proxmox VE package repository, for real apt in the container tests.

`build_repository(folder)` makes a test OpenPGP key (gpg, no passphrase), dummy packages (dpkg-deb) that drop
the files the real ones drop, and a signed `dists/trixie` index (InRelease, Release, Packages) laid out as on
download.proxmox.com/debian/pve. `tests/standins/repo_server.py` serves it. What each dummy package installs,
and where that was read, is in tests/standins/README.md ("Proxmox repository stand-in").
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

SUITE = "trixie"
COMPONENT = "pve-no-subscription"
# The Ceph repository `pveceph install --repository no-subscription --version squid` writes to ceph.sources
# (pve-manager PVE/CLI/pveceph.pm): http://download.proxmox.com/debian/ceph-squid, suite trixie.
CEPH_RELEASE = "squid"
CEPH_COMPONENT = "no-subscription"
CEPH_VERSION = "19.2.3-pve1"  # squid's 19.2.x, as Proxmox versions its builds (-pveN)
PVE_KERNEL = "6.17.2-1-pve"
PVE_MANAGER_VERSION = "9.1.1"
KEYRING_PATH = "usr/share/keyrings/proxmox-archive-keyring.gpg"
# pve-manager configs/pve-sources.sources, installed as etc/apt/sources.list.d/pve-enterprise.sources
# (configs/Makefile): the enterprise repository, enabled.
PVE_ENTERPRISE_SOURCES = """Types: deb
URIs: https://enterprise.proxmox.com/debian/pve
Suites: trixie
Components: pve-enterprise
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
"""

# pmxcfs refuses to start when the node name resolves only to loopback (pve-cluster src/pmxcfs/pmxcfs.c).
PMXCFS_HOSTS_CHECK = """#!/usr/bin/python3
# stand-in for pmxcfs's start-up check (pve-cluster src/pmxcfs/pmxcfs.c, lookup_node_ip): the node name
# (up to the first dot) must resolve, with AI_V4MAPPED | AI_ALL, to an address that is not loopback.
import socket, sys
node = socket.gethostname().split(".")[0]
try:
    infos = socket.getaddrinfo(node, None, 0, 0, 0, socket.AI_V4MAPPED | socket.AI_ALL)
except socket.gaierror:
    infos = []
for family, _, _, _, address in infos:
    ip = address[0]
    if (family == socket.AF_INET and not ip.startswith("127.")) or (family == socket.AF_INET6 and ip != "::1"):
        sys.exit(0)
print(f"[main] crit: Unable to resolve node name '{node}' to a non-loopback IP address - missing entry in"
      " '/etc/hosts' or DNS?", file=sys.stderr)
sys.exit(255)
"""
PVE_CLUSTER_UNIT = """[Unit]
Description=The Proxmox VE cluster filesystem (pve-lab stand-in)
[Service]
ExecStartPre=/usr/lib/pve-lab-standin/pmxcfs-hosts-check
ExecStart=/usr/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""
# pveproxy answers HTTPS on 8006 with a certificate made at start (pve-cluster makes pve-ssl.pem for real).
PVEPROXY = """#!/usr/bin/python3
import http.server, os, ssl, subprocess
cert = "/etc/pve-lab-standin/pve-ssl.pem"
if not os.path.exists(cert):
    os.makedirs(os.path.dirname(cert), exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
                    "/CN=" + os.uname().nodename, "-keyout", cert, "-out", cert], check=True,
                   capture_output=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"pve-lab stand-in pveproxy\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("", 8006), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
PVEPROXY_UNIT = """[Unit]
Description=PVE API Proxy Server (pve-lab stand-in)
After=pve-cluster.service
[Service]
ExecStart=/usr/lib/pve-lab-standin/pveproxy
[Install]
WantedBy=multi-user.target
"""
# bin/pveversion (pve-manager): "pve-manager/<version>/<repoid> (running kernel: <uname -r>)"
PVEVERSION = f"""#!/bin/sh
echo "pve-manager/{PVE_MANAGER_VERSION}/42db4a6cf33dac83 (running kernel: $(uname -r))"
"""
ENABLE_AND_START = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    systemctl enable {unit} >/dev/null 2>&1
    if [ -d /run/systemd/system ]; then
        systemctl start {unit}
    fi
fi
"""


@dataclass
class Package:
    name: str
    version: str
    arch: str = "all"
    depends: str = ""
    files: dict = None  # path (no leading /) -> (text or bytes, mode)
    conffiles: tuple = ()
    postinst: str = ""


def packages(keyring: bytes) -> list[Package]:
    return [
        Package("proxmox-archive-keyring", "4.0", files={KEYRING_PATH: (keyring, 0o644)}),
        Package(f"proxmox-kernel-{PVE_KERNEL}-signed", "6.17.2-1", "amd64",
                files={f"boot/vmlinuz-{PVE_KERNEL}": (b"pve-lab stand-in kernel image\n", 0o644),
                       f"lib/modules/{PVE_KERNEL}/modules.order": ("", 0o644)}),
        Package("proxmox-kernel-6.17", "6.17.2-1", depends=f"proxmox-kernel-{PVE_KERNEL}-signed"),
        Package("proxmox-default-kernel", "2.0.0", depends="proxmox-kernel-6.17"),
        Package("pve-cluster", "9.0.6", "amd64", files={
            "usr/lib/pve-lab-standin/pmxcfs-hosts-check": (PMXCFS_HOSTS_CHECK, 0o755),
            "usr/lib/systemd/system/pve-cluster.service": (PVE_CLUSTER_UNIT, 0o644)},
            postinst=ENABLE_AND_START.format(unit="pve-cluster.service")),
        Package("pve-manager", PVE_MANAGER_VERSION, "amd64",
                depends="perl, pve-cluster, postfix | mail-transport-agent, proxmox-archive-keyring",
                files={"usr/bin/pveversion": (PVEVERSION, 0o755),
                       "usr/lib/pve-lab-standin/pveproxy": (PVEPROXY, 0o755),
                       "usr/lib/systemd/system/pveproxy.service": (PVEPROXY_UNIT, 0o644),
                       "etc/apt/sources.list.d/pve-enterprise.sources": (PVE_ENTERPRISE_SOURCES, 0o644)},
                conffiles=("/etc/apt/sources.list.d/pve-enterprise.sources",),
                postinst=ENABLE_AND_START.format(unit="pveproxy.service")),
        Package("proxmox-ve", "9.1.0", depends="proxmox-default-kernel, pve-manager, pve-cluster, "
                                               "proxmox-archive-keyring"),
    ]


# What a dummy Ceph binary says when run: only the stand-ins on the test PATH (tests/standins/bin) answer.
CEPH_BINARY = """#!/bin/sh
echo "pve-lab stand-in package: $0 is not modelled (the test's stand-ins answer for Ceph)" >&2
exit 1
"""
# ceph-common ships /etc/ceph/rbdmap as a conffile (ceph debian/ceph-common.install, rbdmap).
RBDMAP = "# RbdDevice\t\tParameters\n#poolname/imagename\tid=client,keyring=/etc/ceph/ceph.client.keyring\n"


def ceph_packages() -> list[Package]:
    """The Ceph packages `pveceph install` asks apt for (ceph ceph-common ceph-fuse ceph-mds ceph-volume) and
    the daemons `ceph` depends on, each with the binary pve-manager checks for (PVE/Ceph/Tools.pm: ceph_bin
    /usr/bin/ceph, ceph_mon /usr/bin/ceph-mon, ceph_mgr /usr/bin/ceph-mgr, ceph_osd /usr/bin/ceph-osd,
    ceph_volume /usr/sbin/ceph-volume). The dependency graph is simplified (no python3 or library deps)."""
    v = CEPH_VERSION
    binary = lambda path: {path: (CEPH_BINARY, 0o755)}  # noqa: E731
    return [
        Package("librados2", v, "amd64"),
        Package("librbd1", v, "amd64", depends=f"librados2 (= {v})"),
        Package("python3-ceph-argparse", v),
        Package("ceph-common", v, "amd64", depends=f"librados2 (= {v}), librbd1 (= {v}), python3-ceph-argparse (= {v})",
                files={**binary("usr/bin/ceph"), "etc/ceph/rbdmap": (RBDMAP, 0o644)},
                conffiles=("/etc/ceph/rbdmap",)),
        Package("ceph-base", v, "amd64", depends=f"ceph-common (= {v})"),
        Package("ceph-mon", v, "amd64", depends=f"ceph-base (= {v})", files=binary("usr/bin/ceph-mon")),
        Package("ceph-mgr", v, "amd64", depends=f"ceph-base (= {v})", files=binary("usr/bin/ceph-mgr")),
        Package("ceph-osd", v, "amd64", depends=f"ceph-base (= {v})", files=binary("usr/bin/ceph-osd")),
        Package("ceph-mds", v, "amd64", depends=f"ceph-base (= {v})", files=binary("usr/bin/ceph-mds")),
        Package("ceph-fuse", v, "amd64", depends=f"ceph-common (= {v})", files=binary("usr/bin/ceph-fuse")),
        Package("ceph-volume", v, depends=f"ceph-osd (= {v})", files=binary("usr/sbin/ceph-volume")),
        Package("ceph", v, "amd64", depends=f"ceph-mgr (= {v}), ceph-mon (= {v}), ceph-osd (= {v})"),
    ]


def _build_deb(pkg: Package, work: Path, pool: Path) -> Path:
    tree = work / pkg.name
    (tree / "DEBIAN").mkdir(parents=True)
    for path, (content, mode) in (pkg.files or {}).items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.write_bytes if isinstance(content, bytes) else target.write_text)(content)
        target.chmod(mode)
    control = [f"Package: {pkg.name}", f"Version: {pkg.version}", f"Architecture: {pkg.arch}",
               "Maintainer: pve-lab tests <tests@pve-lab.invalid>", "Priority: optional", "Section: admin"]
    if pkg.depends:
        control.append(f"Depends: {pkg.depends}")
    control.append(f"Description: pve-lab stand-in of {pkg.name}")
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    if pkg.conffiles:
        (tree / "DEBIAN/conffiles").write_text("\n".join(pkg.conffiles) + "\n")
    if pkg.postinst:
        (tree / "DEBIAN/postinst").write_text(pkg.postinst)
        (tree / "DEBIAN/postinst").chmod(0o755)
    deb = pool / f"{pkg.name}_{pkg.version}_{pkg.arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


@dataclass
class Repository:
    folder: Path  # served as http://download.proxmox.com/debian/ (pve/dists/..., pve/pool/...)
    keyring: Path  # the test key, binary OpenPGP (what proxmox-archive-keyring ships)

    @property
    def keyring_sha256(self) -> str:
        return hashlib.sha256(self.keyring.read_bytes()).hexdigest()


def _gpg(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args], check=True,
                          capture_output=True, **kw)


def _build_suite(repo: Path, component: str, pkgs: list[Package], home: Path, work: Path) -> None:
    """pool/*.deb and a signed dists/trixie (InRelease, Release, <component>/binary-amd64/Packages) in `repo`."""
    pool = repo / "pool"
    pool.mkdir(parents=True)
    for pkg in pkgs:
        _build_deb(pkg, work, pool)
    shutil.rmtree(work)
    index_dir = repo / "dists" / SUITE / component / "binary-amd64"
    index_dir.mkdir(parents=True)
    scanned = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
    (index_dir / "Packages").write_text(scanned)
    dists = repo / "dists" / SUITE
    lines = []
    for f in sorted(p for p in dists.rglob("*") if p.is_file()):
        data = f.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {f.relative_to(dists)}")
    release = textwrap.dedent(f"""\
        Origin: Proxmox
        Label: Proxmox Debian Repository (pve-lab stand-in)
        Suite: stable
        Codename: {SUITE}
        Date: {formatdate(usegmt=True)}
        Architectures: amd64
        Components: {component}
        Description: pve-lab test repository
        SHA256:
        """) + "\n".join(lines) + "\n"
    (dists / "Release").write_text(release)
    _gpg(home, "--clearsign", "-o", str(dists / "InRelease"), str(dists / "Release"))


def build_repository(folder: Path) -> Repository:
    """download.proxmox.com/debian/: pve (the PVE packages) and ceph-squid (the Ceph packages), one test key."""
    folder.mkdir(parents=True, exist_ok=True)
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    _gpg(home, "--passphrase", "", "--quick-gen-key", "pve-lab test repository <tests@pve-lab.invalid>",
         "ed25519", "sign", "never")
    keyring = folder / "proxmox-archive-keyring-trixie.gpg"
    keyring.write_bytes(_gpg(home, "--export").stdout)
    _build_suite(folder / "pve", COMPONENT, packages(keyring.read_bytes()), home, folder / "build")
    _build_suite(folder / f"ceph-{CEPH_RELEASE}", CEPH_COMPONENT, ceph_packages(), home, folder / "build")
    return Repository(folder, keyring)

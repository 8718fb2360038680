"""Node identity for the template stand-ins: node certificates, machine-id, SSH host keys.

A stand-in certificate is a PEM-shaped file whose body is base64 JSON ({"cn", "san"}); only the stand-in
`openssl` reads it. `updatecerts` follows pve-cluster src/PVE/Cluster/Setup.pm updatecerts_and_ssh /
gen_pve_node_files / gen_pve_ssl_cert: it needs pmxcfs (pve-cluster.service active), makes the node
directory, the cluster CA when missing, and the node certificate (kept unless --force) with
CN = <nodename>[.<resolv.conf search>] and SAN "IP:127.0.0.1,IP:::1,DNS:localhost,IP:<node ip>,DNS:<nodename>[,DNS:<fqdn>]".
The node's IP comes from /etc/hosts (remote_node_ip resolves the node name), never a loopback address.

In the containers (`STANDIN_REAL_APT=1`) it runs on the real system instead: pmxcfs is the real
`pve-cluster.service` (the dummy package's unit), the node name is the kernel's host name, and the keys, the CA
and the node certificate are made by the real openssl with Setup.pm's arguments (gen_pveca_cert,
gen_pve_ssl_key, gen_pve_ssl_cert; without faketime, and a 2048-bit CA key instead of gen_pveca_key's 4096
to keep the tests fast), so the scripts read a real X.509 certificate.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _debian import die, hostname, load, root  # noqa: E402

BEGIN, END = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"


def write_cert(path: Path, cn: str, san: list[str]) -> None:
    body = base64.b64encode(json.dumps({"cn": cn, "san": san}).encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{BEGIN}\n{body}\n{END}\n")


def read_cert(path: Path) -> dict:
    text = path.read_text()
    body = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    return json.loads(base64.b64decode(body))


def node_ip(name: str) -> str | None:
    hosts = root() / "etc/hosts"
    if not hosts.exists():
        return None
    for line in hosts.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) > 1 and name in words[1:] and not words[0].startswith("127.") and words[0] != "::1":
            return words[0]
    return None


def search_domain() -> str | None:
    conf = root() / "etc/resolv.conf"
    if conf.exists():
        for line in conf.read_text().splitlines():
            if line.startswith("search "):
                return line.split()[1]
    return None


PMXCFS_DOWN = ("ipcc_send_rec[1] failed: Connection refused\nipcc_send_rec[2] failed: Connection refused\n"
               "Unable to load access control list: Connection refused")


def updatecerts(args: list[str]) -> None:
    if os.environ.get("STANDIN_REAL_APT") == "1":
        return updatecerts_real(args)
    data = load()
    if not data["units"].get("pve-cluster.service", {}).get("active"):
        die(PMXCFS_DOWN, 255)
    name = hostname(data)
    ip = node_ip(name)
    if ip is None:
        die(f"unable to get IP for node '{name}' - node offline?", 255)
    force, silent = _flags(args)
    pve = _node_tree(name)
    for key in ("priv/authkey.key", "priv/pve-root-ca.key", f"nodes/{name}/pve-ssl.key", "pve-www.key"):
        if not (pve / key).exists():
            (pve / key).write_text(f"stand-in key {key}\n")
    new_ca = not (pve / "pve-root-ca.pem").exists()
    if new_ca:
        write_cert(pve / "pve-root-ca.pem", "Proxmox Virtual Environment", [])
    _link_local(pve, name)
    cert = pve / f"nodes/{name}/pve-ssl.pem"
    if force or new_ca or not cert.exists():
        san = ["IP:127.0.0.1", "IP:::1", "DNS:localhost", f"IP:{ip}", f"DNS:{name}"]
        fqdn = name
        domain = search_domain()
        if domain:
            fqdn = f"{name}.{domain}"
            san.append(f"DNS:{fqdn}")
        write_cert(cert, fqdn, san)
    _report(silent, force)


def _flags(args: list[str]) -> tuple[bool, bool]:
    """(--force, --silent) as pvecm updatecerts reads them."""
    force = any(a.lstrip("-").startswith("force") and not a.endswith("=0") for a in args)
    silent = any(a.lstrip("-").startswith("silent") for a in args)
    return force, silent


def _node_tree(name: str) -> Path:
    """/etc/pve's node directories, and pmxcfs's database file (the stand-in keeps /etc/pve as plain files:
    no FUSE in a container)."""
    pve = root() / "etc/pve"
    for d in ("priv", f"nodes/{name}/lxc", f"nodes/{name}/qemu-server", f"nodes/{name}/priv"):
        (pve / d).mkdir(parents=True, exist_ok=True)
    (root() / "var/lib/pve-cluster").mkdir(parents=True, exist_ok=True)
    (root() / "var/lib/pve-cluster/config.db").touch()
    return pve


def _link_local(pve: Path, name: str) -> None:
    local = pve / "local"
    if local.is_symlink() or local.exists():
        local.unlink()
    local.symlink_to(f"nodes/{name}")


def _report(silent: bool, force: bool) -> None:
    if not silent:
        print("(re)generate node files")
        if force:
            print("generate new node certificate")
        print("merge authorized SSH keys")


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode:
        die(f"openssl {args[0]} failed: {r.stderr.strip()}", 255)


def updatecerts_real(args: list[str]) -> None:
    """updatecerts_and_ssh's node files on a real system (a container): Setup.pm gen_pve_node_files."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "pve-cluster.service"]).returncode:
        die(PMXCFS_DOWN, 255)
    name = socket.gethostname().split(".")[0]  # PVE::INotify::nodename
    ip = node_ip(name)
    if ip is None:
        die(f"unable to get IP for node '{name}' - node offline?", 255)
    force, silent = _flags(args)
    pve = _node_tree(name)
    for key in ("priv/authkey.key", "pve-www.key", f"nodes/{name}/pve-ssl.key"):
        if not (pve / key).exists():
            _openssl("genrsa", "-out", str(pve / key), "2048")
    ca_key, ca_cert, serial = pve / "priv/pve-root-ca.key", pve / "pve-root-ca.pem", pve / "priv/pve-root-ca.srl"
    new_ca = not (ca_key.exists() and ca_cert.exists())
    if new_ca:
        _openssl("genrsa", "-out", str(ca_key), "2048")
        _openssl("req", "-batch", "-days", "3650", "-new", "-x509", "-nodes", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign", "-key", str(ca_key), "-out", str(ca_cert),
                 "-subj", f"/CN=Proxmox Virtual Environment/OU={uuid.uuid4()}/O=PVE Cluster Manager CA/")
    _link_local(pve, name)
    cert = pve / f"nodes/{name}/pve-ssl.pem"
    if force or new_ca or not cert.exists():
        names = f"IP:127.0.0.1,IP:::1,DNS:localhost,IP:{ip},DNS:{name}"
        fqdn = name
        domain = search_domain()
        if domain:
            fqdn = f"{name}.{domain}"
            names += f",DNS:{fqdn}"
        request = Path(f"/run/pve-cluster/pvecertreq-{os.getpid()}.tmp")
        request.parent.mkdir(parents=True, exist_ok=True)
        _openssl("req", "-batch", "-new", "-key", str(pve / f"nodes/{name}/pve-ssl.key"), "-out", str(request),
                 "-subj", f"/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={fqdn}",
                 "-addext", "basicConstraints=CA:FALSE", "-addext", "extendedKeyUsage=serverAuth",
                 "-addext", f"subjectAltName={names}")
        if not serial.exists():
            serial.write_text("0000000000000000")
        _openssl("x509", "-req", "-in", str(request), "-days", "730", "-out", str(cert), "-CAkey", str(ca_key),
                 "-CA", str(ca_cert), "-CAserial", str(serial), "-copy_extensions", "copyall")
        request.unlink()
    _report(silent, force)

#!/usr/bin/env python3
"""The package hosts of a PVE node, on 127.0.0.1 inside a test container: an HTTP proxy that apt and curl
reach through per-host proxy settings (the scripts' sources stay as written). Standard library only: the
test starts it with the host's python3 inside the container's network namespace.

  download.proxmox.com   the stand-in Proxmox repository (tests/standins/proxmox_repo.py)
  deb.debian.org         the offline Debian mirror of the test image (tests/containers/image.py)
  enterprise.proxmox.com (HTTPS, through CONNECT, certificate from the test's CA) the archive keyring;
                         everything else 401, as without a subscription
  anything else          403, so nothing leaves the machine

Usage: repo_server.py CONFIG.json  ({"port", "log", "proxmox", "debian", "keyring", "tls_cert", "tls_key"}).
Every request is appended to "log" as "METHOD HOST/PATH STATUS".
"""
import hashlib
import http.server
import json
import re
import socketserver
import ssl
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONFIG = json.loads(Path(sys.argv[1]).read_text())
PROXMOX = Path(CONFIG["proxmox"])
DEBIAN = Path(CONFIG["debian"])
# pool files are stored by apt's archive name (epoch as %3a); Packages names them without the epoch.
POOL = {re.sub(r"_\d+%3a", "_", f.name): f for f in (DEBIAN / "pool").glob("*.deb")}
BY_HASH = {}
for f in (DEBIAN / "dists").rglob("*"):
    if f.is_file():
        BY_HASH[hashlib.sha256(f.read_bytes()).hexdigest()] = f
TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
TLS.load_cert_chain(CONFIG["tls_cert"], CONFIG["tls_key"])


def resolve(host: str, path: str):
    """(status, file or None) for a request."""
    if host == "download.proxmox.com" and path.startswith("/debian/"):
        f = (PROXMOX / path[len("/debian/"):]).resolve()
        return (200, f) if f.is_file() and PROXMOX.resolve() in f.parents else (404, None)
    if host == "deb.debian.org" and path.startswith("/debian/"):
        rest = path[len("/debian/"):]
        if "/by-hash/SHA256/" in rest:
            f = BY_HASH.get(rest.rsplit("/", 1)[1])
            return (200, f) if f else (404, None)
        if rest.startswith("pool/"):
            f = POOL.get(rest.rsplit("/", 1)[1])
            return (200, f) if f else (404, None)
        f = (DEBIAN / rest).resolve()
        return (200, f) if f.is_file() and DEBIAN.resolve() in f.parents else (404, None)
    if host == "enterprise.proxmox.com":
        if re.fullmatch(r"/debian/proxmox-archive-keyring-[a-z]+\.gpg", path):
            return 200, Path(CONFIG["keyring"])
        return 401, None
    return 403, None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tunnel_host = ""

    def log_message(self, *args):
        pass

    def _record(self, host, path, status):
        with open(CONFIG["log"], "a") as log:
            log.write(f"{self.command} {host}{path} {status}\n")

    def do_CONNECT(self):
        host, _, port = self.path.partition(":")
        if host != "enterprise.proxmox.com" or port != "443":
            self._record(host, ":" + port, 403)
            self.send_error(403, f"pve-lab test proxy: {self.path} is not served (tests stay offline)")
            return
        self._record(host, ":443", 200)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = TLS.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        self.wfile = socketserver._SocketWriter(self.connection)
        self.tunnel_host = host

    def _serve(self, body: bool):
        if self.tunnel_host:
            host, path = self.tunnel_host, urlsplit(self.path).path
        else:
            parts = urlsplit(self.path)
            host, path = parts.hostname or "", parts.path
        path = unquote(path)
        status, f = resolve(host, path)
        self._record(host, path, status)
        if status != 200:
            text = {401: "Unauthorized", 403: "pve-lab test proxy: host not served", 404: "Not Found"}[status]
            data = f"{status} {text}\n".encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="Proxmox Enterprise Repository"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(CONFIG["port"])), Handler)
    Path(CONFIG["log"] + ".ready").write_text("ready\n")
    server.serve_forever()

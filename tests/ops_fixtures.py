"""fakepve set-ups for the ops tests: an outer PVE host and a nested 3-node cluster on loopback.

fakepve answers every endpoint of the PVE 9 schema (and validates every parameter), but node status,
CPU capabilities, networks, SDN zones and the HA status are synthesised, stateless answers. The two
subclasses here add stateful answers for those, in the shapes PVE sends, through fakepve's own
`_routes_<area>` mechanism (so the schema's parameter and permission checks still run):

- OuterFake: the outer host. Its VM power actions notify a LabSim.
- NestedFake: the nested cluster, one loopback port per nested node; a node's port drops connections
  while its outer VM is off (a powered-off host does not answer). Members, quorum, and the HA service
  states follow the LabSim: started -> fence -> recovery -> started on another node, in "lab seconds"
  scaled to milliseconds of real time.

Everything listens on 127.0.0.1 with ports the system picks.
"""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from aiohttp import web
from fakepve import FakePve
from fakepve.model import PveError

from pvelab.ops.api import Retry

HOST = "127.0.0.1"
TOKEN = "lab@pve!pvelab=0123abcd-0000-4000-8000-00000000beef"
ROOT_PASSWORD = "nested-secret"
GiB = 1024 ** 3


def make_cert(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the client trusts it as its CA)."""
    try:
        from fakepve.certs import make_cert as fake_make_cert

        cert, key, _ = fake_make_cert(str(directory), hosts=(HOST,))
        return cert, key
    except ModuleNotFoundError:  # fakepve's crypto extra not installed: the openssl CLI does the same
        cert, key = directory / "fake.crt", directory / "fake.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=fakepve",
             "-addext", f"subjectAltName=IP:{HOST},DNS:localhost"],
            check=True, capture_output=True)
        return str(cert), str(key)


class Servers:
    """Fakes served on one private event loop in a daemon thread."""

    def __init__(self, cert: str, key: str):
        self.cert, self.key = cert, key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ops-fakes", daemon=True)
        self.thread.start()
        self.fakes: list[FakePve] = []

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def serve(self, fake: FakePve) -> FakePve:
        self.call(fake.start(self.cert, self.key))
        self.fakes.append(fake)
        return fake

    def close(self) -> None:
        for fake in self.fakes:
            try:
                self.call(fake.stop())
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# ------------------------------------------------------------------ the simulated lab


class LabSim:
    """Nested node power and HA behaviour, driven by the outer host's VM power actions.

    Times are lab seconds; `scale` real seconds per lab second. `stuck` keeps the HA service in that
    state for ever (e.g. 'recovery': no node can run it), for the timeout tests.
    """

    def __init__(self, nodes: dict[str, int], ha_vmid: int = 100, ha_node: str = "pve1", scale: float = 0.004,
                 fence_after: float = 60, recover_after: float = 120, start_after: float = 5,
                 boot_after: float = 40, stuck: Optional[str] = None):
        self.vmid_of = dict(nodes)
        self.node_of = {v: k for k, v in nodes.items()}
        self.scale, self.stuck = scale, stuck
        self.fence_after, self.recover_after, self.start_after, self.boot_after = (
            fence_after, recover_after, start_after, boot_after)
        self.origin = time.monotonic()
        self.powered = {n: True for n in nodes}
        self.since = {n: -1e9 for n in nodes}  # lab time of the last power change
        self.ha_sid, self.ha_vmid = f"vm:{ha_vmid}", ha_vmid
        self.ha_node, self.ha_state = ha_node, "started"
        self.nested: Optional[FakePve] = None
        self.lock = threading.Lock()

    def now(self) -> float:
        return (time.monotonic() - self.origin) / self.scale

    def power(self, vmid: int, on: bool) -> None:
        with self.lock:
            name = self.node_of.get(vmid)
            if name and self.powered[name] != on:
                self.powered[name], self.since[name] = on, self.now()

    def up(self, name: str) -> bool:
        """Powered and booted: the node is a cluster member again and its API answers."""
        return self.powered[name] and self.now() - self.since[name] >= self.boot_after

    def quorate(self) -> bool:
        return sum(self.up(n) for n in self.vmid_of) * 2 > len(self.vmid_of)

    def sync(self) -> None:
        """Bring the nested fake's state up to the current lab time."""
        with self.lock:
            fake = self.nested
            quorate = self.quorate()
            for name in self.vmid_of:
                fake.nodes.setdefault(name, {})["online"] = self.up(name)
            fake.quorate = quorate
            node = self.ha_node
            if quorate and not self.up(node) and not self.powered[node]:
                elapsed = self.now() - self.since[node]
                if self.ha_state == "started" and elapsed >= self.fence_after:
                    self.ha_state = "fence"
                if self.ha_state == "fence" and elapsed >= self.recover_after and self.stuck != "fence":
                    self.ha_state = "recovery"
                if (self.ha_state == "recovery" and elapsed >= self.recover_after + self.start_after
                        and self.stuck != "recovery"):
                    target = next((n for n in sorted(self.vmid_of) if self.up(n)), None)
                    if target:
                        self.ha_node, self.ha_state = target, "started"
            vm = fake.vm(self.ha_vmid)
            if vm is not None:
                vm.node = self.ha_node
                vm.ha_state = self.ha_state if self.ha_state in ("started", "stopped") else "fence"
                vm.status = vm.qmpstatus = "running" if self.ha_state == "started" and self.up(self.ha_node) \
                    else "stopped"

    def ha_status(self, local: str) -> list[dict]:
        """GET /cluster/ha/status/current as PVE 9 answers it."""
        with self.lock:
            quorate = self.quorate()
            up = [n for n in sorted(self.vmid_of) if self.up(n)]
            stamp = int(time.time())
            out = [{"id": "quorum", "type": "quorum", "node": local, "quorate": 1 if quorate else 0,
                    "status": "OK" if quorate else f"No quorum on node '{local}'!"}]
            if up:
                out.append({"id": "master", "type": "master", "node": up[0], "timestamp": stamp,
                            "status": f"{up[0]} (active, {time.ctime(stamp)})"})
            for n in sorted(self.vmid_of):
                alive = self.up(n)
                out.append({"id": f"lrm:{n}", "type": "lrm", "node": n, "timestamp": stamp,
                            "state": "active" if alive else "unknown",
                            "status": f"{n} ({'active' if alive else 'old timestamp - dead?'}, {time.ctime(stamp)})"})
            out.append({"id": f"service:{self.ha_sid}", "type": "service", "sid": self.ha_sid, "node": self.ha_node,
                        "state": self.ha_state, "request_state": "started", "crm_state": self.ha_state,
                        "max_restart": 1, "max_relocate": 1, "failback": 1,
                        "status": f"{self.ha_sid} ({self.ha_node}, {self.ha_state})"})
            return out


# ------------------------------------------------------------------ the fakes


class OuterFake(FakePve):
    """The outer PVE host: node 'pve' with everything a lab needs (tests break one thing at a time)."""

    def __init__(self, sim: Optional[LabSim] = None, **kwargs):
        super().__init__(host=HOST, port=0, **kwargs)
        self.sim = sim
        self.nodes = {"pve": {"online": True}}
        self.version, self.release_version = "9.1.2", "9.1"
        self.cpuinfo = {"cpus": 16, "cores": 8, "sockets": 1, "model": "Example CPU", "flags": "fpu vme vmx sse2",
                        "hvm": "1"}
        self.memory_available = 64 * GiB
        self.nested_on: Optional[list[str]] = ["pve"]  # nodes in nested-virt's supported-on; None: older PVE
        self.cpu_models = ["host", "kvm64", "x86-64-v2-AES", "qemu64"]
        self.bridges = ["vmbr0"]
        self.sdn_zones: dict[str, str] = {}  # zone -> type
        self.storages["local"]["content"] = "iso,vztmpl,backup,import"
        self.storages["local-lvm"]["avail"] = 900 * GiB

    def add_lab_vms(self, vmids=(9100, 9101, 9102)) -> None:
        for i, vmid in enumerate(vmids):
            self.add_vm(vmid, f"pve{i + 1}", node="pve", status="running",
                        config={"tags": "pve-lab;pve-lab-node", "cores": 4, "memory": 8192, "cpu": "host"})

    def _routes_lab(self):
        return [("GET", "/nodes/{node}/status", self._lab_node_status),
                ("GET", "/nodes/{node}/capabilities/qemu/cpu-flags", self._lab_cpu_flags),
                ("GET", "/nodes/{node}/capabilities/qemu/cpu", self._lab_cpu_models),
                ("GET", "/nodes/{node}/network", self._lab_network),
                ("GET", "/cluster/sdn/zones", self._lab_zones)]

    async def _lab_node_status(self, v, user):
        total = 128 * GiB
        return {"cpu": 0.05, "cpuinfo": dict(self.cpuinfo), "pveversion": f"pve-manager/{self.version}",
                "memory": {"total": total, "available": self.memory_available, "free": self.memory_available,
                           "used": total - self.memory_available},
                "rootfs": {"total": 100 * GiB, "used": 10 * GiB, "avail": 90 * GiB, "free": 90 * GiB},
                "loadavg": ["0.10", "0.20", "0.30"], "uptime": 3600}

    async def _lab_cpu_flags(self, v, user):
        if self.nested_on is None:
            raise PveError(501, "Method 'GET /nodes/{0}/capabilities/qemu/cpu-flags' not implemented".format(
                v["node"]))
        return [{"name": "nested-virt", "description": "Controls nested virtualization",
                 "supported-on": list(self.nested_on)},
                {"name": "md-clear", "supported-on": sorted(self.nodes)}]

    async def _lab_cpu_models(self, v, user):
        return [{"name": m, "custom": 0, "vendor": "default"} for m in self.cpu_models]

    async def _lab_network(self, v, user):
        out = [{"iface": "eno1", "type": "eth", "active": 1, "method": "manual", "families": ["inet"]}]
        out += [{"iface": b, "type": "bridge", "active": 1, "autostart": 1, "method": "manual",
                 "bridge_ports": "eno1", "families": ["inet"]} for b in self.bridges]
        if v.get("type") in ("bridge", "any_bridge"):
            out = [i for i in out if i["type"] == "bridge"]
        return out

    async def _lab_zones(self, v, user):
        return [{"zone": z, "type": t} for z, t in sorted(self.sdn_zones.items())]

    # power actions reach the simulated nested nodes
    async def _do_stop(self, vm, user, p):
        upid = await super()._do_stop(vm, user, p)
        if self.sim:
            self.sim.power(vm.vmid, False)
        return upid

    async def _do_start(self, vm, user, p):
        upid = await super()._do_start(vm, user, p)
        if self.sim and vm.status == "running":
            self.sim.power(vm.vmid, True)
        return upid

    async def _do_shutdown(self, vm, user, p):
        upid = await super()._do_shutdown(vm, user, p)
        if self.sim:  # the guest powers itself off: the node leaves the cluster as with a stop
            self.sim.power(vm.vmid, False)
        return upid


class NestedFake(FakePve):
    """The nested cluster: one API port per node; a stopped node's port drops every connection."""

    def __init__(self, sim: LabSim):
        super().__init__(user="root@pam", password=ROOT_PASSWORD, host=HOST, port=0)
        self.sim = sim
        sim.nested = self
        self.cluster_name = "pve-lab"
        self.nodes = {n: {"online": True} for n in sorted(sim.vmid_of)}
        self.add_ceph_storage("vmpool", "vmpool")
        self.add_vm(sim.ha_vmid, f"ha-test-{sim.ha_vmid}", node=sim.ha_node, status="running",
                    config={"scsi0": "vmpool:vm-100-disk-0,size=4G", "memory": 512, "tags": "ha-test;pve-lab"})
        self.node_config = {n: {} for n in self.nodes}
        self.port_node: dict[int, str] = {}
        self.node_url: dict[str, str] = {}

    async def start(self, certfile, keyfile):
        await super().start(certfile, keyfile)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        names = sorted(self.sim.vmid_of)
        self.port_node[self.port] = names[0]
        for name in names[1:]:
            before = set(self.runner.addresses)
            await web.TCPSite(self.runner, self.host, 0, ssl_context=ctx).start()
            (added,) = set(self.runner.addresses) - before
            self.port_node[added[1]] = name
        self.node_url = {n: f"https://{self.host}:{p}" for p, n in self.port_node.items()}

    @web.middleware
    async def _middleware(self, request, handler):
        self.sim.sync()
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        node = self.port_node.get(sock[1]) if sock else None
        if node and not self.sim.up(node):
            request.transport.close()  # a powered-off host: the connection just dies
            raise ConnectionResetError(f"{node} is powered off")
        return await FakePve._middleware(self, request, handler)

    def _routes_lab(self):
        return [("GET", "/cluster/ha/status/current", self._lab_ha_status),
                ("GET", "/nodes/{node}/config", self._lab_node_config_get),
                ("PUT", "/nodes/{node}/config", self._lab_node_config_put)]

    async def _lab_ha_status(self, v, user):
        local = next((n for n in sorted(self.sim.vmid_of) if self.sim.up(n)), sorted(self.sim.vmid_of)[0])
        return self.sim.ha_status(local)

    async def _lab_node_config_get(self, v, user):
        return dict(self.node_config.get(v["node"], {}))

    async def _lab_node_config_put(self, v, user):
        self.need_quorum()  # /etc/pve/nodes/<node>/config: pmxcfs refuses writes without quorum
        cfg = self.node_config.setdefault(v["node"], {})
        for key in str(v.get("delete") or "").split(","):
            cfg.pop(key, None)
        if "description" in v:
            cfg["description"] = v["description"]
        return None


# Fast retries: the tests' fakes answer in milliseconds.
FAST = Retry(attempts=2, backoff_s=0.01, request_timeout_s=5)


def token_parts() -> tuple[str, str]:
    tokenid, secret = TOKEN.split("=", 1)
    return tokenid, secret


def outer_fake(sim: Optional[LabSim] = None, lab_vms: bool = False) -> OuterFake:
    fake = OuterFake(sim)
    tokenid, secret = token_parts()
    fake.apitokens[tokenid] = secret
    if lab_vms:
        fake.add_lab_vms()
    return fake


def nested_urls(fake: "NestedFake") -> list[str]:
    return [f"{name}={url}" for name, url in sorted(fake.node_url.items())]


def closed_port_url() -> str:
    """https://127.0.0.1:<a port nobody listens on> (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    return f"https://{HOST}:{port}"


def lab_raw(**outer) -> dict:
    """The `pve-lab:lab` object of a default 3-node lab (addresses are never dialled: tests override URLs)."""
    return {
        "outer": {"endpoint": "https://pve.example.internal:8006/", "insecure": False, "node": "pve",
                  "storage": "local-lvm", "imageStorage": "local", "bridge": "vmbr0", **outer},
        "network": {"cidr": "10.10.10.0/24", "gateway": "10.10.10.1", "dns": ["10.10.10.1"],
                    "firstAddress": "10.10.10.11"},
        "vmidBase": 9100,
    }


def lab_sim(**kwargs) -> LabSim:
    return LabSim({"pve1": 9100, "pve2": 9101, "pve3": 9102}, **kwargs)


# ------------------------------------------------------------------ pytest fixtures (import them by name)

import pytest  # noqa: E402 - fixtures below, helpers above


@pytest.fixture(scope="session")
def ops_servers(tmp_path_factory):
    cert, key = make_cert(tmp_path_factory.mktemp("ops-pki"))
    servers = Servers(cert, key)
    yield servers
    servers.close()


@pytest.fixture
def serve(ops_servers):
    """serve(fake) starts a fake on 127.0.0.1 for this test; it is stopped afterwards."""
    started = []

    def _serve(fake):
        ops_servers.serve(fake)
        started.append(fake)
        return fake

    yield _serve
    for fake in started:
        ops_servers.call(fake.stop())


@pytest.fixture
def ca(ops_servers) -> str:
    """The certificate every fake serves; the clients verify against it."""
    return ops_servers.cert

"""fakepve set-ups for the ops tests: an outer PVE host and a nested 3-node cluster on loopback.

fakepve answers every endpoint of the PVE 9 schema (and validates every parameter), but node status,
CPU capabilities, networks, SDN zones and the HA status are synthesised, stateless answers. The two
subclasses here add stateful answers for those, in the shapes PVE sends, through fakepve's own
`_routes_<area>` mechanism (so the schema's parameter and permission checks still run):

- OuterFake: the outer host. Its VM power actions notify a LabSim.
- NestedFake: the nested cluster, one loopback port per nested node; a node's port drops connections
  while its outer VM is off (a powered-off host does not answer). Members, quorum, and the HA service
  states follow the LabSim: started -> fence -> recovery -> started on another node, in "lab seconds"
  scaled to milliseconds of a SimClock.

Time in these tests is simulated (SimClock): it stands still until the code under test sleeps, and a sleep
only moves it on. A drill, a watch or a retry waits by sleeping on its clock, so handing it the LabSim's
clock makes every run see the same sequence of states, however slowly the machine answers.

Everything listens on 127.0.0.1 with ports the system picks.
"""
from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from aiohttp import web
from fakepve import FakePve
from fakepve.model import PveError

from pvelab.ops.api import Clock, Retry

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
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

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


# ------------------------------------------------------------------ simulated time


class SimClock(Clock):
    """A Clock for tests: now() stands still until someone sleeps; sleep() moves it on at once, without a
    real wait. wall() is a fixed whole UNIX second taken at creation plus the simulated time."""

    def __init__(self):
        self.t = 0.0
        self.wall0 = float(int(time.time()))
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            if seconds > 0:
                self.t += seconds

    def wall(self) -> float:
        return self.wall0 + self.t


def use_sim_clock(monkeypatch, clock: Clock) -> None:
    """Make `clock` the one every ops module creates when it is given none (the CLI builds its own)."""
    import pvelab.ops.api
    import pvelab.ops.cli
    import pvelab.ops.drill
    import pvelab.ops.watch

    for module in (pvelab.ops.api, pvelab.ops.cli, pvelab.ops.drill, pvelab.ops.watch):
        if hasattr(module, "Clock"):
            monkeypatch.setattr(module, "Clock", lambda: clock)


# ------------------------------------------------------------------ the simulated lab


class LabSim:
    """Nested node power, links and HA behaviour, driven by the outer host's VM power and NIC actions.

    Times are lab seconds; `scale` clock seconds per lab second, on `clock` (a SimClock unless given). The HA sequence follows pve-ha-manager
    (src/PVE/HA/Manager.pm, NodeStatus.pm, LRM.pm, Env/PVE2.pm; tests/standins/README.md):

    - a node that leaves the quorate partition is fenced `fence_delay` (60) s after the master last saw it
      online ('fence'); fencing succeeds once its HA agent lock expired (`lock_lifetime`, 120 s after its
      last renewal); in the same manager round the service goes 'recovery' and straight on to 'started'
      on the new node, shown as 'starting' until the LRM there runs it: started -> fence ->
      starting@new -> started@new. 'recovery' stays visible only when no node can take the service.
    - a new master (the old one was lost) takes over after the manager lock expired (120 s); it has never
      seen the lost node online, so it waits its own 60 s and then fences and recovers in one round:
      'fence' is never visible then.
    - failback (default on): when the preferred node is a member again, the service migrates back:
      started@new -> migrate@new -> started@preferred.
    - an LRM is 'active' (holding its node's watchdog) while the node runs a service and for `idle_after`
      (600) s after its last service left; such a node without quorum cannot renew its agent lock and is
      reset by its watchdog `watchdog_s` (60) s later (it reboots, and its LRM comes back idle).
    - without quorum no manager acts; lrm and master entries age to 'old timestamp - dead?' after 30 s.

    `stuck` keeps the HA service in that state for ever ('fence': fencing never completes, 'recovery':
    no node can take it), for the timeout tests.
    """

    def __init__(self, nodes: dict[str, int], ha_vmid: int = 100, ha_node: str = "pve1", master: Optional[str] = None,
                 scale: float = 0.004, fence_delay: float = 60, lock_lifetime: float = 120, start_after: float = 5,
                 boot_after: float = 40, migrate_after: float = 15, round_s: float = 10, watchdog_s: float = 60,
                 idle_after: float = 600, failback: bool = True, stuck: Optional[str] = None, qdevice: bool = False,
                 clock: Optional[Clock] = None):
        self.vmid_of = dict(nodes)
        self.node_of = {v: k for k, v in nodes.items()}
        self.scale, self.stuck, self.failback, self.qdevice = scale, stuck, failback, qdevice
        self.fence_delay, self.lock_lifetime, self.start_after, self.boot_after = (
            fence_delay, lock_lifetime, start_after, boot_after)
        self.migrate_after, self.round_s, self.watchdog_s, self.idle_after = (
            migrate_after, round_s, watchdog_s, idle_after)
        self.clock = clock or SimClock()
        self.origin = self.clock.now()
        self.powered = {n: True for n in nodes}
        self.linked = {n: True for n in nodes}
        self.since = {n: -1e9 for n in nodes}  # lab time of the last boot or power change
        self.gone_since: dict[str, Optional[float]] = {n: None for n in nodes}  # left the quorate partition
        self.member_since = {n: -1e9 for n in nodes}
        self.ha_sid, self.ha_vmid = f"vm:{ha_vmid}", ha_vmid
        self.preferred = ha_node
        self.ha_node, self.ha_state, self.ha_running = ha_node, "started", True
        self.vm_on: tuple = (ha_node, -1e9)  # (node, its boot time) the VM was started on
        self.runs_history: list[tuple[float, bool]] = []  # (lab time, the HA VM runs) at every change
        self.pings: dict[int, dict] = {}  # agent pid -> {"node", "address", "start", "stop"} (lab times)
        self.guest_answers = True  # the HA VM's OS answers ping while it runs (False: e.g. cloud-init failed)
        self.start_at = -1e9  # when the LRM of ha_node was asked to start the service
        self.migrate_at: Optional[float] = None
        self.migrated_at: Optional[float] = None
        self.migrate_target: Optional[str] = None
        self.requested_target: Optional[str] = None  # queued by POST /cluster/ha/resources/{sid}/migrate
        self.downtime_ms = 37
        self.service_left: dict[str, Optional[float]] = {n: None for n in nodes}  # last service left (LRM idle timer)
        self.master, self.master_since = master or ha_node, -1e9
        self.quorum_lost_at: Optional[float] = None
        self.armed: set[str] = set()  # nodes whose active LRM holds the watchdog while quorum is lost
        self.resets: list[tuple[str, float]] = []  # watchdog resets (node, lab time)
        self.log: list[tuple[float, str, str, str]] = [  # journal lines: (lab time, node, unit, text)
            (-1e4, n, u, text) for n in sorted(nodes) for u, text in (
                ("corosync", f"[QUORUM] Members[{len(nodes)}]: {' '.join(str(i + 1) for i in range(len(nodes)))}"),
                ("corosync", "[MAIN  ] Completed service synchronization, ready to provide service."),
                ("pve-cluster", "[status] notice: node has quorum"))]
        self.nested: Optional[FakePve] = None
        self.lock = threading.RLock()

    def now(self) -> float:
        return (self.clock.now() - self.origin) / self.scale

    # ---- what the tests and the outer fake change
    def power(self, vmid: int, on: bool) -> None:
        with self.lock:
            name = self.node_of.get(vmid)
            if name and self.powered[name] != on:
                self.powered[name], self.since[name] = on, self.now()
                self._leave(name)
                self._note_runs(self.now())

    def _note_runs(self, t: float) -> None:
        """Keep the HA VM's running history at the moment it changed (for the ping)."""
        runs = self.vm_runs()
        if not self.runs_history or self.runs_history[-1][1] != runs:
            self.runs_history.append((t, runs))

    def link(self, vmid: int, up: bool) -> None:
        """The node's NICs on the outer host (link_down): a cut node keeps running, alone."""
        with self.lock:
            name = self.node_of.get(vmid)
            if name and self.linked[name] != up:
                self.linked[name] = up
                self._leave(name)

    def _leave(self, name: str) -> None:
        if not self.member(name) and self.gone_since[name] is None:
            self.gone_since[name] = self.now()
            nodeid = sorted(self.vmid_of).index(name) + 1
            for other in self.vmid_of:
                if other != name and self.member(other):
                    self.say(other, "corosync", f"[KNET  ] link: host: {nodeid} link: 0 is down")
                    self.say(other, "corosync", f"[KNET  ] host: host: {nodeid} has no active links")

    # ---- state
    def up(self, name: str) -> bool:
        """Powered and booted (its API answers when it is also linked)."""
        return self.powered[name] and self.now() - self.since[name] >= self.boot_after

    def member(self, name: str) -> bool:
        """In the cluster's membership: booted and linked."""
        return self.up(name) and self.linked[name]

    def reachable(self, name: str) -> bool:
        return self.member(name)

    def quorate(self) -> bool:
        """More than half the votes; a QDevice (ffsplit, 1 vote) votes for the members while any is up."""
        members = sum(self.member(n) for n in self.vmid_of)
        qdevice = 1 if self.qdevice and members else 0
        return (members + qdevice) * 2 > len(self.vmid_of) + (1 if self.qdevice else 0)

    def node_quorate(self, name: str) -> bool:
        """What `name` itself sees: an isolated node is alone, so without quorum."""
        if not self.up(name):
            return False
        if not self.linked[name]:
            return 2 > len(self.vmid_of)
        return self.quorate()

    def lrm_active(self, name: str) -> bool:
        if not self.up(name):
            return False
        gone = self.gone_since[name]
        if gone is not None and self.since[name] >= gone and not self.node_quorate(name):
            return False  # rebooted without quorum: the LRM waits for its agent lock (idle)
        if self.ha_node == name:
            return True
        left = self.service_left[name]
        return left is not None and self.now() - left < self.idle_after

    def guest_command(self, node: str, argv: list) -> dict:
        """What a command run through the guest agent answers on the nested node (exec-status)."""
        with self.lock:
            if list(argv[:2]) == ["pvecm", "status"]:
                quorate = "Yes" if self.node_quorate(node) else "No"
                return {"exited": 1, "exitcode": 0 if quorate == "Yes" else 2,
                        "out-data": f"Cluster information\n-------------------\nName:             pve-lab\n\n"
                                    f"Quorum information\n------------------\nQuorate:          {quorate}\n"}
            # `status`: one ping of the HA test VM; iputils ping(8): exit 1 when no reply came, 0 when one did
            if list(argv[:3]) == ["ping", "-c", "1"]:
                if self.vm_runs() and self.guest_answers:
                    return {"exited": 1, "exitcode": 0,
                            "out-data": f"64 bytes from {argv[-1]}: icmp_seq=1 ttl=64 time=0.41 ms\n"
                                        f"1 packets transmitted, 1 received, 0% packet loss, time 0ms\n"}
                return {"exited": 1, "exitcode": 1, "out-data": "1 packets transmitted, 0 received, 100% packet loss\n"}
            if list(argv[:2]) == ["sh", "-c"] and str(argv[2]).startswith("touch /etc/pve/"):
                path = str(argv[2]).split()[1]
                if not self.node_quorate(node):
                    return {"exited": 1, "exitcode": 1, "err-data": f"touch: cannot touch '{path}': Permission denied\n"}
                return {"exited": 1, "exitcode": 0}
            return {"exited": 1, "exitcode": 127, "err-data": f"{argv[0]}: command not found\n"}

    def ping_output(self, run: dict) -> str:
        """`ping -D -O -i 0.5` lines from run["start"] to run["stop"]: a reply while the HA VM ran and the
        pinging node was up, "no answer yet" otherwise (the VM answers at its address wherever it runs)."""
        self.sync()
        end = run["stop"] if run["stop"] is not None else self.now()
        wall_now, lab_now = self.clock.wall(), self.now()
        lines, seq, t = [], 1, run["start"]
        while t <= end:
            runs = next((r for at, r in reversed(self.runs_history) if at <= t), True)
            stamp = wall_now - (lab_now - t) * self.scale
            if runs:
                lines.append(f"[{stamp:.6f}] 64 bytes from {run['address']}: icmp_seq={seq} ttl=64 time=0.41 ms")
            else:
                lines.append(f"[{stamp:.6f}] no answer yet for icmp_seq={seq}")
            seq, t = seq + 1, t + 0.5
        return "\n".join(lines) + "\n"

    def say(self, node: str, unit: str, text: str) -> None:
        self.log.append((self.now(), node, unit, text))

    def sync(self) -> None:
        """Bring the nested fake's state up to the current lab time."""
        with self.lock:
            t = self.now()
            for n in self.vmid_of:
                if self.member(n) and self.gone_since[n] is not None:
                    self.gone_since[n] = None
                    self.member_since[n] = t
                    ids = " ".join(str(i + 1) for i, m in enumerate(sorted(self.vmid_of)) if self.member(m))
                    for m in self.vmid_of:
                        if self.member(m):
                            self.say(m, "corosync", f"[QUORUM] Members[{ids.count(' ') + 1}]: {ids}")
                elif not self.member(n) and self.gone_since[n] is None:
                    self.gone_since[n] = t
            self._watchdogs(t)
            if self.quorate():
                self._manager(t)
            self._start_vm(t)
            self._publish()
            self._note_runs(t)

    def _watchdogs(self, t: float) -> None:
        quorate = self.quorate()
        if not quorate and self.quorum_lost_at is None:
            self.quorum_lost_at = t
            self.armed = {n for n in self.vmid_of if self.lrm_active(n)}
            for n in self.vmid_of:
                if self.up(n):
                    self.say(n, "corosync", "[QUORUM] This node is within the non-primary component and will NOT "
                                            "provide any services.")
                    self.say(n, "pve-cluster", "[status] notice: node lost quorum")
        elif quorate and self.quorum_lost_at is not None:
            self.quorum_lost_at, self.armed = None, set()
            for n in self.vmid_of:
                if self.member(n):
                    self.say(n, "corosync", "[QUORUM] This node is within the primary component and will provide "
                                            "service.")
                    self.say(n, "pve-cluster", "[status] notice: node has quorum")
        # an isolated node with an active LRM: no quorum there, whatever the majority has
        for n in self.vmid_of:
            if self.up(n) and not self.linked[n] and self.lrm_active(n) and n not in self.armed:
                self.armed.add(n)
                self.gone_since[n] = self.gone_since[n] if self.gone_since[n] is not None else t
        for n in sorted(self.armed):
            lost_at = self.gone_since[n] if not self.linked[n] else self.quorum_lost_at
            if lost_at is not None and self.up(n) and t - lost_at >= self.watchdog_s and not self.node_quorate(n):
                self.since[n] = t  # softdog resets the node: it reboots
                self.armed.discard(n)
                self.resets.append((n, t))
                self.service_left[n] = None

    def _manager(self, t: float) -> None:
        if not self.member(self.master):
            gone = self.gone_since[self.master]
            if gone is not None and t >= gone + self.lock_lifetime:
                self.master = next(n for n in sorted(self.vmid_of) if self.member(n))
                self.master_since = gone + self.lock_lifetime
            else:
                return  # no master yet: nothing moves
        node = self.ha_node
        if not self.member(node):
            gone = self.gone_since[node]
            fence_at = max(gone, self.master_since) + self.fence_delay
            fenced_at = max(fence_at, gone + self.lock_lifetime)
            if self.ha_state in ("started", "migrate") and t >= fence_at:
                self.say(self.master, "pve-ha-crm", f"node '{node}': state changed from 'unknown' => 'fence'")
                self.say(self.master, "pve-ha-crm",
                         f"service '{self.ha_sid}': state changed from '{self.ha_state}' to 'fence'")
                self.ha_state = "fence"
            if self.ha_state == "fence" and t >= fenced_at and self.stuck != "fence":
                self.ha_state = "recovery"
                self.say(self.master, "pve-ha-crm", f"fencing: acknowledged - got agent lock for node '{node}'")
                self.say(self.master, "pve-ha-crm",
                         f"service '{self.ha_sid}': state changed from 'fence' to 'recovery'")
            if self.ha_state == "recovery" and self.stuck != "recovery":
                target = self._best_node()
                if target:
                    self.say(self.master, "pve-ha-crm",
                             f"recover service '{self.ha_sid}' from fenced node '{node}' to node '{target}'")
                    self.say(self.master, "pve-ha-crm", f"service '{self.ha_sid}': state changed from 'recovery' "
                                                        f"to 'started'  (node = {target})")
                    self.service_left[node] = t
                    self.ha_node, self.ha_state, self.ha_running, self.start_at = target, "started", False, fenced_at
            return
        if self.ha_state == "started" and not self.ha_running and self.vm_runs():
            self.ha_running = True
        if self.ha_state == "started" and self.ha_running and self.requested_target:
            # a queued `ha-manager migrate` command, taken at the next manager round
            target, self.requested_target = self.requested_target, None
            if target != node and self.member(target):
                self.ha_state, self.migrate_at, self.migrate_target = "migrate", t, target
                self.say(self.master, "pve-ha-crm", f"migrate service '{self.ha_sid}' to node '{target}'")
        if (self.failback and self.ha_state == "started" and self.ha_running and node != self.preferred
                and self.member(self.preferred)
                and t >= max(self.member_since[self.preferred], self.migrated_at or -1e9) + self.round_s):
            self.ha_state, self.migrate_target = "migrate", self.preferred
            self.migrate_at = max(t, self.member_since[self.preferred] + self.round_s)
            self.say(self.master, "pve-ha-crm", f"migrate service '{self.ha_sid}' to node '{self.preferred}' (running)")
        if self.ha_state == "migrate" and t >= self.migrate_at + self.migrate_after:
            self.service_left[node] = t
            self.ha_node, self.ha_state, self.ha_running = self.migrate_target, "started", True
            self.migrated_at = t
            self.vm_on = (self.ha_node, self.since[self.ha_node])  # moved there running
            if self.nested is not None:
                self.nested.add_migration_task(node, self.ha_vmid, self.migrate_target, self.downtime_ms)

    def _best_node(self) -> Optional[str]:
        if self.member(self.preferred):
            return self.preferred
        return next((n for n in sorted(self.vmid_of) if self.member(n)), None)

    def _publish(self) -> None:
        fake = self.nested
        if fake is None:
            return
        for name in self.vmid_of:
            fake.nodes.setdefault(name, {})["online"] = self.member(name)
        fake.quorate = self.quorate()
        vm = fake.vm(self.ha_vmid)
        if vm is not None:
            vm.node = self.ha_node
            vm.ha_state = self.ha_state if self.ha_state in ("started", "stopped") else "fence"
            vm.status = vm.qmpstatus = "running" if self.vm_runs() else "stopped"

    def vm_runs(self) -> bool:
        """The HA VM runs: it was started (or migrated) on its node since that node last booted."""
        node = self.ha_node
        return self.up(node) and self.vm_on == (node, self.since[node]) and self.ha_state in ("started", "migrate")

    def _start_vm(self, t: float) -> None:
        """The LRM of the service's node starts the VM `start_after` s after it was asked to or after the node
        booted, and only with quorum (LRM.pm: no agent lock without it): a frozen service waits for quorum."""
        node = self.ha_node
        if self.vm_on == (node, self.since[node]) or self.ha_state != "started" or not self.up(node):
            return
        started = max(self.since[node] + self.boot_after, self.start_at) + self.start_after
        if self.node_quorate(node) and t >= started:
            self.vm_on = (node, self.since[node])
            self._note_runs(started if not self.runs_history or self.runs_history[-1][0] <= started else t)

    def service_state(self) -> str:
        """The verbose state `ha-manager status` shows (pve-ha-manager Tools.pm get_verbose_service_state)."""
        if self.ha_state == "started" and not self.ha_running:
            return "starting"
        return self.ha_state

    def ha_status(self, local: str) -> list[dict]:
        """GET /cluster/ha/status/current as PVE 9 answers it on node `local` (API2/HA/Status.pm)."""
        with self.lock:
            t = self.now()
            quorate = self.node_quorate(local)
            stamp_now = int(self.clock.wall())

            def stamp(fresh: bool, since: Optional[float]) -> tuple[int, str]:
                if fresh:
                    return stamp_now, "active"
                age = 0 if since is None else (t - since) * self.scale
                old = age > 30 * self.scale or since is None
                return int(stamp_now - age), "old timestamp - dead?" if old else "active"

            out = [{"id": "quorum", "type": "quorum", "node": local, "quorate": 1 if quorate else 0,
                    "status": "OK" if quorate else f"No quorum on node '{local}'!"}]
            m_fresh = quorate and self.member(self.master)
            m_ts, m_word = stamp(m_fresh, self.gone_since[self.master] if not m_fresh else None)
            if not m_fresh and self.quorum_lost_at is not None and self.member(self.master):
                m_ts, m_word = stamp(False, self.quorum_lost_at)
            out.append({"id": "master", "type": "master", "node": self.master, "timestamp": m_ts,
                        "status": f"{self.master} ({m_word}, {time.ctime(m_ts)})"})
            for n in sorted(self.vmid_of):
                fresh = quorate and self.member(n)
                ts, word = stamp(fresh, self.gone_since[n] if self.gone_since[n] is not None else self.quorum_lost_at)
                if word == "active":
                    word = "active" if self.lrm_active(n) else "idle"
                wd = "watchdog active" if word == "active" else "watchdog standby"
                out.append({"id": f"lrm:{n}", "type": "lrm", "node": n, "timestamp": ts,
                            "status": f"{n} ({word}, {wd}, {time.ctime(ts)})"})
            state = self.service_state()
            out.append({"id": f"service:{self.ha_sid}", "type": "service", "sid": self.ha_sid, "node": self.ha_node,
                        "state": state, "request_state": "started", "crm_state": self.ha_state,
                        "max_restart": 1, "max_relocate": 1, "failback": 1 if self.failback else 0,
                        "status": f"{self.ha_sid} ({self.ha_node}, {state})"})
            return out


# ------------------------------------------------------------------ the fakes

NIC_KEY = re.compile(r"^net\d+$")


def _only_link_changed(old: str, new: str) -> bool:
    def rest(value):
        return sorted(p for p in str(value).split(",") if p and not p.startswith("link_down="))
    return rest(old) == rest(new)



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
                             config={"tags": "pve-lab;pve-lab-node", "cores": 4, "memory": 8192, "cpu": "host",
                                     "net0": f"virtio=BC:24:11:00:00:{i + 1:02X},bridge=vmbr0,firewall=0",
                                     "agent": "enabled=1"})
            self.vm(vmid).agent = {}  # qemu-guest-agent runs on the nested nodes (install-pve.sh)

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

    # NIC link_down changes apply at once on a running VM (QemuServer.pm vmconfig_update_net ->
    # qemu_set_link_status, `hotplug` default 'network,disk,usb'), where fakepve would leave them pending
    async def _apply_config(self, vm, user, p):
        if "revert" in p:  # qemu-server API2/Qemu.pm: `revert` drops pending changes (fakepve would store it)
            p = dict(p)
            for key in str(p.pop("revert")).split(","):
                vm.pending.pop(key, None)
            if not p:
                return
        await super()._apply_config(vm, user, p)
        hotplug = str(vm.config.get("hotplug", "network,disk,usb"))
        if vm.status == "running" and "network" in hotplug.split(","):
            for key in [k for k in p if NIC_KEY.match(k)]:
                if key in vm.pending and vm.pending[key] is not None and _only_link_changed(
                        vm.config.get(key, ""), vm.pending[key]):
                    vm.config[key] = vm.pending.pop(key)
        if self.sim:
            cut = any("link_down=1" in str(v) for k, v in vm.config.items() if NIC_KEY.match(k))
            self.sim.link(vm.vmid, not cut)

    # the nested node answers through the guest agent while it runs (its network may be cut)
    async def _agent_call(self, match, values):
        command = match.template.rsplit("/", 1)[1]
        name = self.sim.node_of.get(int(values["vmid"])) if self.sim else None
        if name and not self.sim.up(name):
            raise PveError(500, "QEMU guest agent is not running")
        if name and command == "exec-status":
            vm = self.find(values["node"], values["vmid"])
            pid = int(values["pid"])
            if pid in self.sim.pings:
                run = self.sim.pings[pid]
                if run["stop"] is None:
                    return {"exited": 0}
                return {"exited": 1, "exitcode": 0, "out-data": self.sim.ping_output(run)}
            return self.sim.guest_command(name, vm.agent_execs.get(pid, []))
        answer = await super()._agent_call(match, values)
        if name and command == "exec":
            argv = list(values["command"])
            if argv[:2] == ["sh", "-c"] and "exec ping " in argv[2]:
                self.sim.pings[answer["pid"]] = {"node": name, "address": argv[2].split()[-1],
                                                 "start": self.sim.now(), "stop": None}
            elif argv[:2] == ["sh", "-c"] and argv[2].startswith("kill -INT"):
                for run in self.sim.pings.values():
                    if run["node"] == name and run["stop"] is None:
                        run["stop"] = self.sim.now()
        return answer

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
        self.answer_delay_s = 0.0

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
        if self.answer_delay_s:  # a slow API (a loaded machine), in real time: the lab's time must not move
            await asyncio.sleep(self.answer_delay_s)
        self.sim.sync()
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        node = self.port_node.get(sock[1]) if sock else None
        if node and not self.sim.reachable(node):
            request.transport.close()  # a powered-off or cut-off host: the connection just dies
            raise ConnectionResetError(f"{node} is powered off or cut off")
        return await FakePve._middleware(self, request, handler)

    def add_migration_task(self, source: str, vmid: int, target: str, downtime_ms: int) -> None:
        """The finished qmigrate task the source node's LRM ran (qemu-server QemuMigrate.pm wording)."""
        upid, pid, start = self._upid(source, "qmigrate", vmid, "root@pam")
        log = [f"starting migration of VM {vmid} to node '{target}' (10.10.10.12)",
               "migration active, transferred 256.0 MiB of 512.0 MiB VM-state, 512.0 MiB/s",
               f"average migration speed: 512.0 MiB/s - downtime {downtime_ms} ms",
               "migration status: completed", "migration finished successfully (duration 00:00:02)", "TASK OK"]
        record = {"upid": upid, "node": source, "pid": pid, "pstart": pid * 7, "starttime": start, "type": "qmigrate",
                  "id": str(vmid), "user": "root@pam", "status": "stopped", "exitstatus": "OK", "endtime": start,
                  "log": log}
        self.tasks[upid] = record
        self.tasklog.append(record)

    def _routes_lab(self):
        return [("GET", "/cluster/ha/status/current", self._lab_ha_status),
                ("POST", "/cluster/ha/resources/{sid}/migrate", self._lab_ha_migrate),
                ("GET", "/nodes/{node}/config", self._lab_node_config_get),
                ("PUT", "/nodes/{node}/config", self._lab_node_config_put),
                ("GET", "/nodes/{node}/status", self._lab_node_status),
                ("GET", "/nodes/{node}/journal", self._lab_journal)]

    async def _lab_ha_status(self, v, user):
        local = next((n for n in sorted(self.sim.vmid_of) if self.sim.reachable(n)), sorted(self.sim.vmid_of)[0])
        return self.sim.ha_status(local)

    async def _lab_ha_migrate(self, v, user):
        """pve-ha-manager API2/HA/Resources.pm migrate: queue the CRM command, answer sid and requested-node."""
        self.need_quorum()
        sid = v["sid"] if ":" in str(v["sid"]) else f"vm:{v['sid']}"
        if sid != self.sim.ha_sid:
            raise PveError(500, f"service '{sid}' is not HA managed\n")
        self.sim.requested_target = v["node"]
        return {"sid": sid, "requested-node": v["node"]}

    async def _lab_node_config_get(self, v, user):
        return dict(self.node_config.get(v["node"], {}))

    async def _lab_node_config_put(self, v, user):
        node = v["node"]
        if not self.sim.node_quorate(node):
            # PVE::NodeConfig::write_config -> file_set_contents on /etc/pve, which pmxcfs makes read-only
            # without quorum (cfs-plug-memdb.c: mode 0444) -> EACCES (pve-common PVE/File.pm wording)
            raise PveError(500, f"unable to open file '/etc/pve/nodes/{node}/config.tmp.4242' - Permission denied")
        cfg = self.node_config.setdefault(node, {})
        for key in str(v.get("delete") or "").split(","):
            cfg.pop(key, None)
        if "description" in v:
            cfg["description"] = v["description"]
        return None

    async def _lab_node_status(self, v, user):
        sim = self.sim
        boot = sim.since[v["node"]]
        return {"uptime": int(sim.now() - boot) if boot > -1e8 else 10 ** 6 + int(sim.now()),
                "pveversion": "pve-manager/9.1.2", "cpu": 0.05,
                "memory": {"total": 8 * GiB, "used": 3 * GiB, "free": 5 * GiB, "available": 5 * GiB}}

    async def _lab_journal(self, v, user):
        """GET /nodes/{node}/journal (pve-manager PVE/API2/Nodes.pm -> mini-journalreader -j): text lines
        between a start and an end cursor line; `unit` filters one systemd unit, `lastentries` the tail."""
        unit, last, since = v.get("unit"), int(v.get("lastentries") or 0), v.get("since")
        now_wall, now_lab = self.sim.clock.wall(), self.sim.now()

        def wall(t):
            return now_wall - (now_lab - t) * self.sim.scale

        lines = [(t, text) for t, node, u, text in list(self.sim.log)
                 if node == v["node"] and (not unit or u == unit) and (since is None or wall(t) >= int(since))]
        if last:
            lines = lines[-last:]
        body = [time.strftime("%b %d %H:%M:%S", time.localtime(wall(t))) + f" {v['node']} {u_name(unit, text)}: {text}"
                for t, text in lines]
        cursor = "s=0123456789abcdef0123456789abcdef;i=1a2b;b=00112233445566778899aabbccddeeff;m=1f;t=5f;x=9e"
        return [cursor] + body + [cursor]

    async def _ceph_status(self, request):
        # PVE 9: `ceph status` has no mon list, so PVE puts `mon dump` in monmap (PVE/Ceph/Tools.pm); OSDs of
        # nodes that are not members are down (after the OSD heartbeat grace, immediate here)
        if self.ceph["down"]:
            raise PveError(500, "rados_connect failed - Connection timed out")
        from fakepve import shapes

        names = sorted(self.sim.vmid_of)
        st = shapes.ceph_status(self.ceph["health"], names[0])
        up = [n for n in names if self.sim.member(n)]
        st["monmap"] = {"epoch": 3, "fsid": st["fsid"], "min_mon_release_name": "squid",
                        "mons": [{"rank": i, "name": n, "addr": f"10.10.10.{11 + i}:6789/0"}
                                 for i, n in enumerate(names)]}
        st["quorum_names"] = up if len(up) * 2 > len(names) else []
        st["osdmap"] = {"epoch": 20, "num_osds": len(names), "num_up_osds": len(up), "num_in_osds": len(names)}
        if len(up) < len(names) and self.ceph["health"] == "HEALTH_OK":
            st["health"] = {"status": "HEALTH_WARN", "mutes": [],
                            "checks": {"OSD_DOWN": {"severity": "HEALTH_WARN", "summary": {
                                "message": f"{len(names) - len(up)} osds down"}}}}
        return web.json_response({"data": st})


def u_name(unit: Optional[str], text: str) -> str:
    """The syslog identifier a line carries (corosync[1234], pmxcfs[567], pve-ha-crm[89])."""
    if text.startswith("[status]") or text.startswith("[dcdb]"):
        return "pmxcfs[1040]"
    return {"corosync": "corosync[1101]", "pve-ha-crm": "pve-ha-crm[1230]"}.get(unit or "", f"{unit}[1000]")


# Fast retries (the tests' fakes answer in milliseconds), but a generous request timeout: on a loaded
# machine an answer may take seconds, and a timeout would turn into a different report.
FAST = Retry(attempts=2, backoff_s=0.01, request_timeout_s=60)
# The same for the CLI's own client (its default is 10 s).
CLI_TIMEOUT = ["--request-timeout", "60"]


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

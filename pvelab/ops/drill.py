"""`drill ha` and `drill quorum`: pull the plug on nested nodes and watch the cluster react.

A nested node is stopped through the OUTER host's API (a hard stop of its VM: a power failure, no clean
shutdown), while the nested cluster is watched through the API of a node that stays up.

- ha: stop the node running the HA test VM; time until HA runs the VM on another node, with the
  timeline of its HA states as pve-ha-manager goes through them (Manager.pm): started -> fence ->
  starting on the new node -> started there ('recovery' lasts less than one manager round; 'fence' is
  not seen at all when the lost node was the HA master, because the new master fences and recovers in
  one round); start the node again, wait for all members and quorum, and for the failback the
  node-affinity rule asks for (the VM migrates back to its preferred node).
- quorum: stop a majority (2 of 3), keeping a survivor whose HA agent (LRM) is idle: an active LRM holds
  its node's watchdog, and without quorum the watchdog resets that node (LRM.pm). The survivor loses
  quorum: /etc/pve turns read-only (pmxcfs refuses a harmless write with "Permission denied") and HA
  recovers nothing; start the nodes again and wait for quorum and for the HA VM to run again.

Whatever happens after a node was stopped (an error, a timeout, Ctrl-C), the drill starts it again and,
if that fails, prints which node may still be stopped and the exact command to start it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..spec import LabSpec, NodePlan
from . import ping
from .api import ApiError, Clock, PveClient, WaitTimeout, poll
from .logs import DRILL_UNITS, is_key_line, journal
from .status import LRM_HOLDS_WATCHDOG, cluster_facts, ha_facts, ha_service


class DrillError(Exception):
    """The drill cannot start or did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class DrillTiming:
    """Seconds. Real failovers take 2-3 minutes: fence delay 60 s, HA agent lock expiry 120 s, more when the
    HA master was lost too (its manager lock expires after 120 s, then the new master waits its own 60 s)."""

    poll_s: float = 5.0
    task_deadline_s: float = 120.0  # the outer host's stop/start task
    recovery_deadline_s: float = 600.0  # HA runs the VM elsewhere
    rejoin_deadline_s: float = 900.0  # stopped nodes boot, rejoin, quorum returns
    # quorum drill: how long to watch the survivor not recover anything; recovery would need 60 s fence delay
    # + 120 s agent-lock lifetime (+ 120 s more when the master was stopped): 300 s covers it with a margin
    observe_s: float = 300.0
    settle_deadline_s: float = 600.0  # failback migration / the HA VM running again after the nodes rejoined


@dataclass
class Event:
    t: float  # seconds since the first stop
    what: str


@dataclass
class DrillReport:
    kind: str
    ok: bool = False
    stopped: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    recovery_s: Optional[float] = None
    rejoin_s: Optional[float] = None
    failback_s: Optional[float] = None  # since the power failure: the VM runs on its preferred node again
    downtime_ms: Optional[int] = None  # migrate drill: QEMU's switch-over pause
    findings: list[str] = field(default_factory=list)
    still_stopped: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # partition drill: nodes cut off the network
    still_cut: list[str] = field(default_factory=list)  # partition drill: links not restored
    error: Optional[str] = None
    started_at: Optional[float] = None  # UNIX time of the first stop (the timeline's +0)
    log_lines: list[dict] = field(default_factory=list)  # key journal lines since then: {"node", "line"}
    ping: Optional[dict] = None  # --ping ADDRESS: the test VM's downtime as a client saw it (ping.PingReport)


@dataclass(frozen=True)
class OuterVm:
    plan: NodePlan
    outer_node: str

    def start_command(self, endpoint: str) -> str:
        host = endpoint.split("//")[-1].split(":")[0].split("/")[0]
        return (f"ssh root@{host} qm start {self.plan.vmid}   (qm runs on node {self.outer_node}; from any node: "
                f"pvesh create /nodes/{self.outer_node}/qemu/{self.plan.vmid}/status/start, or Start in the web UI)")


def describe_quorum(facts: dict) -> str:
    return f"quorate {facts['quorate']}, {facts['online']} of {facts['members']} online"


class Drill:
    def __init__(self, spec: LabSpec, outer: PveClient, nested: PveClient, timing: DrillTiming = DrillTiming(),
                 clock: Optional[Clock] = None, out: Callable[[str], None] = print, ping: Optional[str] = None):
        self.spec, self.outer, self.nested, self.timing = spec, outer, nested, timing
        self.ping_address = ping
        self.pinger: Optional[tuple[OuterVm, int]] = None  # (node VM, agent pid) of the running ping
        self.clock = clock or Clock()
        self.out = out
        self.stopped: list[OuterVm] = []  # stopped by us and not yet started again
        self.stop_tasks: dict[int, str] = {}  # vmid -> UPID of a stop task not yet seen finished
        self.t0: Optional[float] = None
        self.ha_seen: Optional[tuple] = None  # (state, node) of the HA service last put on the timeline
        self.loss_word = "the power failure"
        self.report = DrillReport("")

    # ---------------------------------------------------------------- helpers
    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else self.clock.now() - self.t0

    def event(self, what: str) -> None:
        ev = Event(round(self.elapsed(), 1), what)
        self.report.events.append(ev)
        self.out(f"  +{ev.t:7.1f} s  {what}")

    def event_at(self, t: float, what: str) -> None:
        """An event found afterwards (the ping's lines): placed on the timeline where it happened."""
        ev = Event(round(t, 1), what)
        self.report.events.append(ev)
        self.report.events.sort(key=lambda e: e.t)
        self.out(f"  +{ev.t:7.1f} s  {what}")

    # ---------------------------------------------------------------- the client's view (--ping)
    def start_ping(self, avoid: set[str]) -> None:
        """Ping the test VM from a node the drill leaves alone, through the outer host's guest agent."""
        if not self.ping_address or self.outer is None:
            return
        node = next((p for p in self.spec.node_plans if p.hostname not in avoid), None)
        if node is None:
            return
        vm = self.outer_vm(node)
        budget = int(self.timing.recovery_deadline_s + self.timing.rejoin_deadline_s + self.timing.settle_deadline_s
                     + 2 * self.timing.task_deadline_s + self.timing.observe_s)
        try:
            answer = self.outer.post(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/agent/exec",
                                     command=ping.start_argv(self.ping_address, budget))
        except ApiError as exc:
            self.report.findings.append(f"could not start the ping from {node.hostname}: {exc.message}")
            return
        self.pinger = (vm, int(answer["pid"]))
        if self.t0 is None:
            self.t0, self.report.started_at = self.clock.now(), self.clock.wall()
        self.out(f"pinging {self.ping_address} from {node.hostname} every {ping.INTERVAL_S:g} s (ping -D -O, "
                 f"through the guest agent)")

    def finish_ping(self) -> None:
        if self.pinger is None:
            return
        vm, pid = self.pinger
        self.pinger = None
        path = f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/agent"
        try:
            self.outer.post(f"{path}/exec", command=ping.STOP_ARGV)
            status = poll(self.clock, self.timing.task_deadline_s, min(self.timing.poll_s, 1.0),
                          lambda: (lambda st: st if st.get("exited") else None)(
                              self.outer.get(f"{path}/exec-status", pid=pid)),
                          f"the ping on {vm.plan.hostname} to end")
        except (ApiError, WaitTimeout) as exc:
            msg = exc.message if isinstance(exc, ApiError) else str(exc)
            self.report.findings.append(f"the ping's results could not be read from {vm.plan.hostname}: {msg}")
            return
        rep = ping.parse(str(status.get("out-data") or ""), self.ping_address, vm.plan.hostname,
                         self.report.started_at or self.clock.wall())
        self.report.ping = asdict(rep)
        for lost, back in rep.outages:
            self.event_at(lost, f"ping {self.ping_address}: no answer (from {vm.plan.hostname})")
            if back >= 0:
                self.event_at(back, f"ping {self.ping_address}: answers again after {back - lost:.1f} s")
        if rep.downtime_s is not None:
            self.report.findings.append(f"a client saw {self.ping_address} down for {rep.downtime_s:.1f} s "
                                        f"({rep.answered} of {rep.sent} pings answered, from {vm.plan.hostname})")
        elif rep.outages:
            self.report.findings.append(f"{self.ping_address} did not answer again before the drill ended "
                                        f"(from {vm.plan.hostname})")
        else:
            self.report.findings.append(f"{self.ping_address} answered every ping ({rep.answered} of {rep.sent}, "
                                        f"from {vm.plan.hostname}): no downtime a client could see")

    def plan_of(self, hostname: str) -> NodePlan:
        for p in self.spec.node_plans:
            if p.hostname == hostname:
                return p
        raise DrillError(f"nested node '{hostname}' is not one of this lab's nodes "
                         f"({', '.join(p.hostname for p in self.spec.node_plans)})")

    def healthy_cluster(self) -> dict:
        facts = cluster_facts(self.nested)
        offline = [n["name"] for n in facts["nodes"] if not n["online"]]
        if not facts["quorate"] or offline:
            raise DrillError(
                f"the nested cluster is not healthy before the drill (quorate: {facts['quorate']}, offline: "
                f"{', '.join(offline) or 'none'}); start with a healthy cluster (python -m pvelab status)")
        least = 2 if self.spec.nodes.qdevice else 3  # two nodes and a QDevice make a quorum of 2 of 3 votes
        if facts["members"] < least:
            raise DrillError(f"the cluster has {facts['members']} member(s); the drill needs {least} or more")
        return facts

    def outer_vm(self, plan: NodePlan) -> OuterVm:
        for r in self.outer.get("cluster/resources", type="vm"):
            if int(r.get("vmid", -1)) == plan.vmid:
                if r.get("status") != "running":
                    raise DrillError(f"outer VM {plan.vmid} ({plan.hostname}) is {r.get('status')}, not running")
                return OuterVm(plan, r["node"])
        raise DrillError(f"outer VM {plan.vmid} ({plan.hostname}) not found on the outer host")

    def ha_sid(self) -> str:
        ha = self.spec.ha
        if not ha.enabled or ha.test_vms < 1:
            raise DrillError("pve-lab:lab.ha.enabled is false (or ha.testVms is 0): there is no HA test VM to fail over")
        return f"vm:{ha.test_vmid_base}"

    # ---------------------------------------------------------------- power
    def stop(self, vm: OuterVm) -> None:
        """Hard stop (power failure). Counted as stopped before the call: its answer may be lost."""
        self.stopped.append(vm)
        if self.t0 is None:
            self.t0 = self.clock.now()
            self.report.started_at = self.clock.wall()
        upid = self.outer.post(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/status/stop")
        self.stop_tasks[vm.plan.vmid] = upid
        self.outer.wait_task(vm.outer_node, upid, self.timing.task_deadline_s, self.timing.poll_s,
                             f"the outer host's stop of {vm.plan.hostname} (VM {vm.plan.vmid})")
        del self.stop_tasks[vm.plan.vmid]
        self.report.stopped.append(vm.plan.hostname)
        self.event(f"{vm.plan.hostname} powered off (outer VM {vm.plan.vmid} stopped hard)")

    def start(self, vm: OuterVm) -> None:
        try:
            upid = self.outer.post(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/status/start")
            self.outer.wait_task(vm.outer_node, upid, self.timing.task_deadline_s, self.timing.poll_s,
                                 f"the outer host's start of {vm.plan.hostname} (VM {vm.plan.vmid})")
        except ApiError:
            # a retried start whose first answer was lost fails with "already running": that is fine
            st = self.outer.get(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/status/current")
            if st.get("status") != "running":
                raise
        self.stopped.remove(vm)
        self.event(f"{vm.plan.hostname} powered on (outer VM {vm.plan.vmid} started)")

    def restore_links(self) -> None:
        """Heal what a drill cut (the partition drill); nothing for the power drills."""

    def restore_after_failure(self) -> None:
        """Best effort: start every node we stopped; say loudly which may still be down."""
        for vm in list(self.stopped):
            try:
                upid = self.stop_tasks.get(vm.plan.vmid)
                if upid:  # our stop task did not report its end: it may still power the VM off later
                    task = self.outer.get(f"nodes/{vm.outer_node}/tasks/{upid}/status")
                    if task.get("status") == "running":
                        raise DrillError(f"its stop task is still running ({upid}); it will be off when that ends")
                st = self.outer.get(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/status/current")
                if st.get("status") == "running":
                    self.stopped.remove(vm)  # the stop never happened, or someone started it already
                    continue
                self.start(vm)
            except (ApiError, WaitTimeout, DrillError, KeyboardInterrupt) as exc:
                msg = exc.message if isinstance(exc, ApiError) else (str(exc) or "interrupted")
                self.report.still_stopped.append(vm.plan.hostname)
                self.out(f"!! node {vm.plan.hostname} (outer VM {vm.plan.vmid} on {vm.outer_node}) may still be "
                         f"STOPPED or stop soon: {msg}")
                self.out(f"!! start it with: {vm.start_command(self.outer.endpoints[0].url)}")

    def wait_rejoined(self) -> None:
        """All members online and quorate again."""
        self.nested.endpoints += [ep for ep in self.all_endpoints if ep not in self.nested.endpoints]
        start = self.clock.now()
        last = {"facts": "nothing read yet"}

        def rejoined():
            try:
                facts = cluster_facts(self.nested)
            except ApiError as exc:
                last["facts"] = exc.message
                return None
            last["facts"] = describe_quorum(facts)
            return facts if facts["quorate"] and facts["online"] == facts["members"] else None

        try:
            poll(self.clock, self.timing.rejoin_deadline_s, self.timing.poll_s, rejoined,
                 "the stopped node(s) to rejoin and quorum to return", lambda: last["facts"])
        except WaitTimeout as exc:
            raise DrillError(f"{exc}. The node VMs are running on the outer host; check the nested nodes' "
                             f"consoles and `pvecm status` / `ha-manager status` on them") from None
        self.report.rejoin_s = self.clock.now() - start  # rounded only when shown
        self.event(f"all {len(self.spec.node_plans)} members online and quorate again")

    def vm_status(self, sid: str) -> dict:
        """The HA VM as /cluster/resources lists it: HA's 'started' alone does not mean it runs."""
        return next((r for r in self.nested.get("cluster/resources", type="vm") if f"vm:{r.get('vmid')}" == sid), {})

    def wait_settled(self, sid: str, failback_to: Optional[str]) -> None:
        """The HA service started and its VM running, on `failback_to` when a failback is due.

        While nodes rejoin the HA status may fail to read (pmxcfs syncing, a proxy error): ridden out."""
        state: dict = {"seen": "nothing read yet", "last": self.ha_seen}

        def settled():
            try:
                svc = ha_service(self.nested, sid)
                vm = self.vm_status(sid) if svc and svc["state"] == "started" else {}
            except ApiError as exc:
                state["seen"] = exc.message
                return None
            if svc is None:
                raise DrillError(f"HA service {sid} disappeared during the drill")
            now = (svc["state"], svc["node"])
            if now != state["last"]:
                state["last"] = self.ha_seen = now
                self.event(f"{sid} {svc['state']} on {svc['node']}")
            state["seen"] = f"{svc['state']} on {svc['node']}, VM {vm.get('status', '-')} on {vm.get('node', '-')}"
            if svc["state"] != "started" or vm.get("status") != "running" or vm.get("node") != svc["node"]:
                return None
            if failback_to and svc["node"] != failback_to:
                return None
            return svc

        try:
            svc = poll(self.clock, self.timing.settle_deadline_s, self.timing.poll_s, settled,
                       f"{sid} to run again" + (f" on {failback_to} (failback)" if failback_to else ""),
                       lambda: state["seen"])
        except WaitTimeout as exc:
            raise DrillError(f"{exc}. Check `ha-manager status` and the VM on a node") from None
        self.event(f"VM {sid.split(':')[1]} running on {svc['node']}")
        if failback_to:
            self.report.failback_s = self.elapsed()
            self.out(f"failback to {failback_to} at +{self.report.failback_s:.1f} s (the node-affinity rule "
                     f"prefers it; HA migrated the VM back once the node was online)")

    # ---------------------------------------------------------------- drills
    def run(self, kind: str) -> DrillReport:
        self.report = DrillReport(kind)
        self.all_endpoints = list(self.nested.endpoints)
        try:
            getattr(self, f"drill_{kind}")()
            self.report.ok = True
        except (DrillError, ApiError, WaitTimeout, KeyboardInterrupt) as exc:
            msg = exc.message if isinstance(exc, ApiError) else (str(exc) or "interrupted (Ctrl-C)")
            self.report.error = msg
            self.out(f"drill {kind} failed: {msg}")
        except Exception as exc:  # a bug or an unforeseen library error must not leave a node off either
            self.report.error = f"unexpected error: {type(exc).__name__}: {exc}"
            self.out(f"drill {kind} failed: {self.report.error}")
            raise
        finally:
            self.restore_links()
            if self.stopped:
                self.out("starting the stopped node(s) again ...")
                self.restore_after_failure()
        if not (self.report.error or "").startswith("interrupted"):
            self.finish_ping()
        self.collect_key_lines()
        return self.report

    def collect_key_lines(self, per_node: int = 40) -> None:
        """corosync, pmxcfs and HA lines since the first stop that tell the story (link down, quorum lost and
        regained, fence, recovery), from every node that answers; best effort."""
        if self.report.started_at is None or (self.report.error or "").startswith("interrupted"):
            return
        since = int(self.report.started_at) - 5
        errors = []
        try:  # an offline node's journal cannot be read (the proxy would only time out): skip it
            offline = {n["name"] for n in cluster_facts(self.nested)["nodes"] if not n["online"]}
        except ApiError:
            offline = set()
        for node in sorted(self.node_names() - offline):
            try:
                lines = journal(self.nested, node, DRILL_UNITS, None, since)
            except (ApiError, WaitTimeout) as exc:
                errors.append(f"{node}: {exc.message if isinstance(exc, ApiError) else exc}")
                continue
            key = [line for line in lines if is_key_line(line)][-per_node:]
            self.report.log_lines += [{"node": node, "line": line} for line in key]
        if errors:
            self.report.findings.append("some nodes' logs could not be read: " + "; ".join(errors))

    def drill_ha(self) -> None:
        sid = self.ha_sid()
        self.healthy_cluster()
        ha = ha_facts(self.nested)
        svc = next((x for x in ha["services"] if x["sid"] == sid), None)
        if svc is None or svc["state"] != "started" or not svc["node"]:
            raise DrillError(f"HA service {sid} is {svc['state'] + ' on ' + str(svc['node']) if svc else 'not defined'}"
                             f"; it must be started before the drill (ha-manager status)")
        master = (ha.get("master") or {}).get("node")
        victim = self.outer_vm(self.plan_of(svc["node"]))
        self.nested.prefer_not(victim.plan.hostname)
        self.out(f"drill ha: {sid} runs on {victim.plan.hostname}; stopping that node hard (outer VM "
                 f"{victim.plan.vmid} on {victim.outer_node}) and watching HA through the other nodes")
        self.event(f"{sid} {svc['state']} on {svc['node']}")
        self.start_ping({victim.plan.hostname})
        self.stop(victim)
        moved, seen = self.watch_recovery(sid, svc, victim.plan.hostname)
        self.note_fence_skipped(sid, seen, master, victim.plan.hostname)
        self.start(victim)
        self.wait_rejoined()
        self.settle_with_failback(sid, svc, moved)

    def note_fence_skipped(self, sid: str, seen: set[str], master: Optional[str], lost: str) -> None:
        if "fence" not in seen:
            why = (f"{lost} was also the HA master: the new master took over when the manager lock expired "
                   f"(120 s), waited its own fence delay (60 s) and fenced and recovered in one round"
                   if master == lost else "it lasted less than one poll interval")
            self.report.findings.append(f"HA never showed 'fence' for {sid}: {why}")

    def settle_with_failback(self, sid: str, before: dict, moved: dict) -> None:
        """Wait for the VM to run again, back on its preferred node when the rule's failback (default on) is due."""
        preferred = self.spec.ha_preferred_node
        failback = before.get("failback") is None or bool(int(before.get("failback") or 0))
        due = preferred if failback and moved["node"] != preferred and preferred in self.node_names() else None
        self.wait_settled(sid, due)

    def watch_recovery(self, sid: str, svc: dict, lost: str) -> tuple[dict, set[str]]:
        """Follow the HA service from the loss of node `lost` until its VM runs on another node; the service
        entry there and the HA states seen."""
        state = (svc["node"], svc["state"])
        seen = {svc["state"]}
        last = {"seen": f"{state[1]} on {state[0]}"}

        def recovered():
            nonlocal state
            try:
                now = ha_service(self.nested, sid)
            except ApiError as exc:
                if not exc.transient:
                    raise
                last["seen"] = exc.message  # a node's API may blink while corosync re-forms
                return None
            if now is None:
                raise DrillError(f"HA service {sid} disappeared during the drill")
            if (now["node"], now["state"]) != state:
                state = (now["node"], now["state"])
                self.ha_seen = (now["state"], now["node"])
                seen.add(now["state"])
                self.event(f"{sid} {now['state']} on {now['node']}")
            last["seen"] = f"{now['state']} on {now['node']}"
            if now["state"] == "started" and now["node"] != lost:
                # HA has placed it; recovered once the VM really runs there
                vm = self.vm_status(sid)
                last["seen"] += f", VM {vm.get('status', 'not listed')} on {vm.get('node', '?')}"
                if vm.get("status") == "running" and vm.get("node") == now["node"]:
                    self.event(f"VM {sid.split(':')[1]} running on {now['node']}")
                    return now
            self.on_poll()
            return None

        try:
            moved = poll(self.clock, self.timing.recovery_deadline_s, self.timing.poll_s, recovered,
                         f"HA to start {sid} on another node", lambda: last["seen"])
        except WaitTimeout as exc:
            raise DrillError(f"HA did not recover {sid}: {exc}. Check `ha-manager status` on a running node "
                             f"(a service stuck in fence/recovery: no node may run it, or fencing did not "
                             f"complete)") from None
        self.report.recovery_s = self.elapsed()  # rounded only when shown
        self.out(f"recovered: {sid} runs on {moved['node']} {self.report.recovery_s:.1f} s after {self.loss_word}")
        return moved, seen

    def on_poll(self) -> None:
        """Called on every poll while HA recovers: a drill may watch more (the partition drill: Ceph)."""

    def node_names(self) -> set[str]:
        return {p.hostname for p in self.spec.node_plans}

    def uptime(self, node: str) -> Optional[tuple[float, float]]:
        """(the node's uptime, our clock) or None when it cannot be read."""
        try:
            return float(self.nested.get(f"nodes/{node}/status").get("uptime") or 0), self.clock.now()
        except ApiError:
            return None

    def pick_quorum_victims(self, names: list[str], first: Optional[str], lrm: dict[str, Optional[str]]):
        """Stop the HA VM's node first, and keep survivors whose LRM is idle (it holds no watchdog)."""
        # the rest is a minority: no quorum; with a QDevice stop half: its vote keeps the other half quorate
        stop_count = len(names) // 2 if self.spec.nodes.qdevice else len(names) - len(names) // 2
        keep = len(names) - stop_count
        others = [n for n in names if n != first]
        idle = [n for n in others if lrm.get(n) not in LRM_HOLDS_WATCHDOG]
        survivors = (idle + [n for n in others if n not in idle])[:keep]
        victims = ([first] if first else []) + [n for n in reversed(names) if n != first and n not in survivors]
        return victims[:stop_count], survivors

    def drill_quorum(self) -> None:
        facts = self.healthy_cluster()
        names = [n["name"] for n in facts["nodes"]]
        sid, first, lrm = None, None, {}
        if self.spec.ha.enabled and self.spec.ha.test_vms > 0:
            sid = self.ha_sid()
            ha = ha_facts(self.nested)
            lrm = {x["node"]: x["state"] for x in ha["lrm"]}
            svc = next((x for x in ha["services"] if x["sid"] == sid), None)
            first = svc["node"] if svc and svc["node"] in names else None
        victim_names, survivors = self.pick_quorum_victims(names, first, lrm)
        victims = [self.outer_vm(self.plan_of(n)) for n in victim_names]
        armed = [n for n in survivors if lrm.get(n) in LRM_HOLDS_WATCHDOG]
        if armed:
            warning = (f"{', '.join(armed)} keep(s) an active HA agent (LRM 'active': it ran an HA service in the "
                       f"last 10 minutes and holds the node's watchdog); without quorum it loses its agent lock "
                       f"and the watchdog resets the node about 60 s later (a self-fence). Run the drill again "
                       f"after `ha-manager status` shows the LRM idle to avoid it")
            self.out(f"warning: {warning}")
            self.report.findings.append(f"warning: {warning}")
        uptimes = {n: self.uptime(n) for n in survivors}
        self.nested.only(set(survivors))
        self.out(f"drill quorum: stopping {', '.join(v.plan.hostname for v in victims)} hard; "
                 f"{', '.join(survivors)} stay(s) up without a majority")
        for vm in victims:
            self.stop(vm)
        if self.spec.nodes.qdevice:
            self.qdevice_keeps_quorum(survivors, {v.plan.hostname for v in victims})
            for vm in list(victims):
                self.start(vm)
            self.wait_rejoined()
            if sid:
                self.wait_settled(sid, None)
            return
        try:
            after = self.poll_cluster(f"{', '.join(survivors)} to lose quorum", describe_quorum,
                                      lambda f, seen: f["quorate"] is False)
        except WaitTimeout as exc:
            raise DrillError(f"quorum was not lost: {exc}") from None
        self.event(f"quorum lost: {after['online']} of {after['members']} members online")
        self.report.findings.append(f"{', '.join(survivors)}: quorate no, {after['online']} of {after['members']} "
                                    f"online (pvecm status: 'Quorate: No', activity blocked)")
        self.probe_read_only(survivors[0])
        if sid:
            self.observe_no_recovery(sid, {v.plan.hostname for v in victims})
        self.report.findings.append(
            "what it means: without quorum the survivor keeps its running guests, but /etc/pve is read-only (no "
            "config change, no VM start or migration) and HA neither fences nor recovers, so that two halves "
            "can never run the same VM; it all resumes when a majority is back (`pvecm expected 1` on a lone "
            "survivor forces quorum: an emergency measure only)")
        for vm in list(victims):
            self.start(vm)
        self.wait_rejoined()
        if sid:
            self.wait_settled(sid, None)
        self.check_resets(uptimes)

    def qdevice_keeps_quorum(self, survivors: list[str], down: set[str]) -> None:
        """Half the nodes are off: the QDevice's vote (ffsplit) keeps the other half quorate."""
        def kept(f: dict, seen: str) -> bool:
            offline = {n["name"] for n in f["nodes"] if not n["online"]}
            if f["quorate"] is False:
                raise DrillError(f"{', '.join(survivors)} lost quorum although a QDevice is configured ({seen}): "
                                 f"check `pvecm status` (Flags: Qdevice) and corosync-qnetd on the QDevice VM")
            return down <= offline

        try:
            f = self.poll_cluster(f"the cluster to see {', '.join(sorted(down))} offline", describe_quorum, kept)
        except WaitTimeout as exc:
            raise DrillError(f"the stopped node(s) did not go offline: {exc}") from None
        self.event(f"quorum kept: {f['online']} of {f['members']} members online, plus the QDevice's vote")
        self.report.findings.append(
            f"{', '.join(survivors)}: still quorate with {f['online']} of {f['members']} nodes: the QDevice casts the "
            f"tie-breaking vote (pvecm status: 'Flags: Quorate Qdevice'), so an even cluster survives losing half "
            f"its nodes")

    def poll_cluster(self, what: str, describe: Callable[[dict], str],
                     ready: Callable[[dict, str], bool]) -> dict:
        """Poll cluster_facts until ready(facts, describe(facts)) holds, within the recovery deadline.

        A transient ApiError counts as not yet (a node's API may blink while corosync re-forms); the timeout
        message names the last thing seen."""
        last = {"seen": "nothing read yet"}

        def check():
            try:
                f = cluster_facts(self.nested)
            except ApiError as exc:
                if not exc.transient:
                    raise
                last["seen"] = exc.message
                return None
            last["seen"] = describe(f)
            return f if ready(f, last["seen"]) else None

        return poll(self.clock, self.timing.recovery_deadline_s, self.timing.poll_s, check, what,
                    lambda: last["seen"])

    def check_resets(self, before: dict[str, Optional[tuple[float, float]]]) -> None:
        """A node whose uptime grew less than our clock did was reset (its watchdog fired) meanwhile."""
        for node, then in before.items():
            now = self.uptime(node)
            if then is None or now is None:
                continue
            if now[0] + 5 < then[0] + (now[1] - then[1]):
                self.event(f"{node} was reset during the drill (uptime now {now[0]:.0f} s): its watchdog fired")
                self.report.findings.append(
                    f"{node} rebooted during the drill: its HA agent held the watchdog and lost its lock without "
                    f"quorum, so the watchdog reset it (self-fencing, as designed)")

    def probe_read_only(self, node: str) -> None:
        """A write that changes nothing (the node's own description, as it is) must be refused by pmxcfs."""
        cfg = self.nested.get(f"nodes/{node}/config")
        args = {"description": cfg["description"]} if cfg.get("description") else {"delete": "description"}
        try:
            self.nested.put(f"nodes/{node}/config", **args)
        except ApiError as exc:
            if exc.transient:
                raise
            self.event(f"write on {node} refused: {exc.message}")
            if "Permission denied" in exc.message:
                self.report.findings.append(f"/etc/pve is read-only on {node}: pmxcfs refuses writes "
                                            f"({exc.message})")
            else:
                self.report.findings.append(f"a write on {node} failed, but not with pmxcfs' 'Permission denied', "
                                            f"so this does not prove /etc/pve read-only: {exc.message}")
            return
        self.report.findings.append(f"unexpected: a write on {node} succeeded without quorum")
        self.event(f"unexpected: a write on {node} succeeded without quorum")

    def observe_no_recovery(self, sid: str, down: set[str]) -> None:
        """Watch HA for observe_s: without quorum it must not move the service anywhere; note HA's own evidence
        (its quorum entry, the master's stale timestamp)."""
        seen: list[str] = []
        evidence: dict[str, str] = {}
        end = self.clock.now() + self.timing.observe_s
        self.out(f"watching {sid} for {self.timing.observe_s:g} s: without quorum HA must not recover it")
        while True:
            try:
                ha = ha_facts(self.nested)
                svc = next((x for x in ha["services"] if x["sid"] == sid), None)
                text = f"{svc['state']} on {svc['node']}" if svc else "not listed"
                if ha.get("quorate") is False and "quorum" not in evidence:
                    evidence["quorum"] = f"quorum entry '{ha.get('quorum')}'"
                    self.event(f"HA: {ha.get('quorum')}")
                master = ha.get("master") or {}
                if master.get("state") == "old timestamp - dead?" and "master" not in evidence:
                    evidence["master"] = f"master {master.get('node')} 'old timestamp - dead?'"
                    self.event(f"HA master {master.get('node')}: old timestamp - dead?")
            except ApiError as exc:
                if not exc.transient:
                    raise
                svc, text = None, exc.message
            if not seen or seen[-1] != text:
                seen.append(text)
                self.event(f"{sid} {text}")
            if svc and svc["state"] in ("started", "starting") and svc["node"] not in down:
                self.report.findings.append(f"unexpected: HA started {sid} on {svc['node']} without quorum")
                return
            if self.clock.now() >= end:
                break
            self.clock.sleep(min(self.timing.poll_s, max(0.0, end - self.clock.now())))
        proof = "; HA's own view: " + ", ".join(evidence[k] for k in sorted(evidence)) if evidence else ""
        self.report.findings.append(f"no HA recovery in {self.timing.observe_s:g} s: {sid} stayed "
                                    f"{' -> '.join(seen)} (HA needs quorum to fence and recover){proof}")


def render_text(report: DrillReport) -> str:
    lines = [f"drill {report.kind}: {'completed' if report.ok else 'FAILED'}"]
    if report.recovery_s is not None and report.kind == "migrate":
        lines.append(f"  migration: {report.recovery_s:.1f} s (request -> the VM runs on the target node)")
    elif report.recovery_s is not None:
        cause = "cut" if report.kind == "partition" else "power failure"
        lines.append(f"  time to recovery: {report.recovery_s:.1f} s ({cause} -> the VM runs on another node)")
    if report.downtime_ms is not None:
        lines.append(f"  downtime: {report.downtime_ms} ms (QEMU's switch-over pause, from the qmigrate task log)")
    if report.rejoin_s is not None:
        lines.append(f"  rejoin after power-on: {report.rejoin_s:.1f} s")
    if report.failback_s is not None:
        lines.append(f"  failback to the preferred node at +{report.failback_s:.1f} s")
    if report.events:
        lines.append("  timeline:")
        lines += [f"    +{e.t:7.1f} s  {e.what}" for e in report.events]
    if report.log_lines:
        started = time.strftime("%H:%M:%S", time.localtime(report.started_at)) if report.started_at else "?"
        lines.append(f"  key log lines since the first stop (+0 = {started} here; journalctl -u corosync "
                     f"-u pve-cluster -u pve-ha-crm -u pve-ha-lrm):")
        lines += [f"    {x['node']}: {x['line']}" for x in report.log_lines]
    lines += [f"  - {f}" for f in report.findings]
    if report.error:
        lines.append(f"  error: {report.error}")
    if report.still_stopped:
        lines.append(f"  STILL STOPPED (start them, see above): {', '.join(report.still_stopped)}")
    if report.still_cut:
        lines.append(f"  STILL CUT OFF (restore their links, see above): {', '.join(report.still_cut)}")
    return "\n".join(lines)


def render_json(report: DrillReport) -> str:
    data = asdict(report)
    for key in ("recovery_s", "rejoin_s", "failback_s"):
        if data[key] is not None:
            data[key] = round(data[key], 1)
    return json.dumps(data, indent=2)


def run_drill(kind: str, spec: LabSpec, outer: PveClient, nested: PveClient, timing: DrillTiming = DrillTiming(),
              clock: Optional[Clock] = None, out: Callable[[str], None] = print,
              ping: Optional[str] = None) -> DrillReport:
    return Drill(spec, outer, nested, timing, clock, out, ping=ping).run(kind)


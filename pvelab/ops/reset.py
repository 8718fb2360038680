"""`baseline` and `reset`: a consistent snapshot of every nested node's VM, and the way back to it.

How the baseline is consistent: it is a *cold* snapshot of all nodes at the same point. Every nested node
is shut down cleanly first (all at once, through the outer API), and only when all of them are off is each
VM snapshotted (disks only, no RAM). So no node's snapshot holds a Ceph monitor, OSD or pmxcfs state that
another node's snapshot has already moved past: a rollback brings back one cluster that was switched off
as a whole, which Ceph and corosync start from as after a power cut of the whole rack. The nodes are then
started again and the lab must prove itself healthy (quorum, every member online, Ceph HEALTH_OK, every HA
service started) before the baseline counts as taken.

`reset` hard-stops every node (its state is thrown away anyway), rolls each VM back to the baseline, starts
them all, and waits for the same proof of health (pvelab/ops/status.py). Whatever fails, the nodes that
were stopped are started again, and any that cannot be is named with the command to start it.

Snapshots need a storage that has them (LVM-thin, ZFS, Ceph RBD, qcow2 on a file storage: qemu-server's
`snapshot` feature check); on others PVE answers "snapshot feature is not available" and the baseline
stops before anything is snapshotted. A VM with snapshots cannot become a template, and PVE refuses to
resize a disk while it has snapshots on some storages: `baseline --remove` deletes the baseline.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..spec import LabSpec, NodePlan
from .api import ApiError, Clock, PveClient, WaitTimeout, poll
from .status import gather

DEFAULT_SNAPSHOT = "baseline"


class ResetError(Exception):
    pass


@dataclass
class ResetTiming:
    poll_s: float = 5.0
    task_deadline_s: float = 300.0  # one outer task (stop, snapshot, rollback, start)
    shutdown_s: float = 240.0  # a clean shutdown of the nested nodes
    healthy_deadline_s: float = 900.0  # from the start of the nodes to a healthy lab


@dataclass
class ResetReport:
    action: str  # baseline | reset | remove
    stack: str
    snapshot: str
    ok: bool = False
    phases: list[dict] = field(default_factory=list)  # {"phase", "seconds"}
    error: Optional[str] = None
    still_stopped: list[str] = field(default_factory=list)
    status: Optional[dict] = None  # the last `status` report

    @property
    def total_s(self) -> float:
        return sum(p["seconds"] for p in self.phases)


@dataclass
class NodeVm:
    plan: NodePlan
    outer_node: str

    @property
    def path(self) -> str:
        return f"nodes/{self.outer_node}/qemu/{self.plan.vmid}"

    def start_command(self, endpoint: str) -> str:
        return (f"qm start {self.plan.vmid}  (on {self.outer_node}), or: curl -k -X POST -H 'Authorization: "
                f"PVEAPIToken=...' {endpoint.rstrip('/')}/api2/json/{self.path}/status/start")


class LabSnapshots:
    """One lab's node VMs on the outer host, and what can be done to all of them at once."""

    def __init__(self, spec: LabSpec, stack: str, outer: PveClient, nested: Optional[PveClient],
                 timing: ResetTiming = ResetTiming(), clock: Optional[Clock] = None,
                 out: Callable[[str], None] = print, snapshot: str = DEFAULT_SNAPSHOT):
        self.spec, self.outer, self.nested, self.timing = spec, outer, nested, timing
        self.clock = clock or Clock()
        self.out = out
        self.snapshot = snapshot
        self.report = ResetReport(action="", stack=stack, snapshot=snapshot)
        self.stopped: list[NodeVm] = []

    # ---------------------------------------------------------------- helpers
    def phase(self, name: str, action: Callable[[], None]) -> None:
        start = self.clock.now()
        action()
        seconds = self.clock.now() - start
        self.report.phases.append({"phase": name, "seconds": seconds})
        self.out(f"{name}: {seconds:.1f} s")

    def node_vms(self) -> list[NodeVm]:
        where = {int(r.get("vmid", -1)): r for r in self.outer.get("cluster/resources", type="vm")}
        vms = []
        for plan in self.spec.node_plans:
            r = where.get(plan.vmid)
            if r is None:
                raise ResetError(f"outer VM {plan.vmid} ({plan.hostname}) not found on the outer host: is the lab up?")
            if r.get("template"):
                raise ResetError(f"outer VM {plan.vmid} ({plan.hostname}) is a template, not a lab node")
            vms.append(NodeVm(plan, r["node"]))
        return vms

    def snapshots_of(self, vm: NodeVm) -> list[str]:
        return [s["name"] for s in self.outer.get(f"{vm.path}/snapshot") if s.get("name") != "current"]

    def task(self, vm: NodeVm, upid: str, what: str, deadline: Optional[float] = None) -> None:
        self.outer.wait_task(vm.outer_node, upid, deadline or self.timing.task_deadline_s, self.timing.poll_s,
                             f"{what} of {vm.plan.hostname} (VM {vm.plan.vmid})")

    def all_at_once(self, vms: list[NodeVm], what: str, post: Callable[[NodeVm], str],
                    deadline: Optional[float] = None) -> None:
        """Start one outer task per VM, then wait for all of them: the nodes change state together."""
        upids = [(vm, post(vm)) for vm in vms]
        for vm, upid in upids:
            self.task(vm, upid, what, deadline)

    def status_of(self, vm: NodeVm) -> str:
        return str(self.outer.get(f"{vm.path}/status/current").get("status"))

    # ---------------------------------------------------------------- power
    def shutdown_all(self, vms: list[NodeVm]) -> None:
        running = [vm for vm in vms if self.status_of(vm) == "running"]
        self.stopped += running
        timeout = int(self.timing.shutdown_s)
        self.all_at_once(running, "the clean shutdown", lambda vm: self.outer.post(
            f"{vm.path}/status/shutdown", timeout=timeout), deadline=self.timing.shutdown_s + self.timing.task_deadline_s)

    def stop_all(self, vms: list[NodeVm]) -> None:
        running = [vm for vm in vms if self.status_of(vm) == "running"]
        self.stopped += running
        self.all_at_once(running, "the hard stop", lambda vm: self.outer.post(f"{vm.path}/status/stop"))

    def start_all(self, vms: list[NodeVm]) -> None:
        for vm in vms:
            if self.status_of(vm) != "running":
                upid = self.outer.post(f"{vm.path}/status/start")
                self.task(vm, upid, "the start")
            if vm in self.stopped:
                self.stopped.remove(vm)

    def restart_after_failure(self) -> None:
        for vm in list(self.stopped):
            try:
                self.start_all([vm])
            except (ApiError, WaitTimeout, KeyboardInterrupt) as exc:
                msg = exc.message if isinstance(exc, ApiError) else (str(exc) or "interrupted")
                self.report.still_stopped.append(vm.plan.hostname)
                self.out(f"!! node {vm.plan.hostname} (outer VM {vm.plan.vmid}) may still be STOPPED: {msg}")
                self.out(f"!! start it with: {vm.start_command(self.outer.endpoints[0].url)}")

    # ---------------------------------------------------------------- health
    def wait_healthy(self) -> None:
        if self.nested is None:
            return
        last: dict = {"report": None}

        def healthy():
            report = gather(self.nested)
            last["report"] = report
            ceph = report.get("ceph", {})
            if self.spec.ceph.enabled and ceph.get("health") != "HEALTH_OK":
                return None
            return report if report["healthy"] else None

        def seen() -> str:
            report = last["report"]
            if report is None:
                return "nothing read yet"
            problems = list(report["problems"])
            health = report.get("ceph", {}).get("health")
            if self.spec.ceph.enabled and health and health != "HEALTH_OK":
                problems.append(f"Ceph {health}")
            return "; ".join(problems) or "healthy"

        try:
            self.report.status = poll(self.clock, self.timing.healthy_deadline_s, self.timing.poll_s, healthy,
                                      "quorum, every member online, Ceph HEALTH_OK and every HA service started",
                                      seen)
        except WaitTimeout as exc:
            self.report.status = last["report"]
            raise ResetError(f"{exc}. The node VMs are running; look at `python -m pvelab status -s "
                             f"{self.report.stack}` and the nodes' consoles") from None

    # ---------------------------------------------------------------- the actions
    def run(self, action: str, body: Callable[[], None]) -> ResetReport:
        self.report.action = action
        try:
            body()
            self.report.ok = True
        except (ApiError, WaitTimeout, ResetError, KeyboardInterrupt) as exc:
            self.report.error = (exc.message if isinstance(exc, ApiError) else str(exc)) or "interrupted"
            self.out(f"{action} failed: {self.report.error}")
        finally:
            if self.stopped:
                self.restart_after_failure()
        return self.report

    def take_baseline(self, replace: bool = False) -> ResetReport:
        def body():
            vms = self.node_vms()
            if self.nested is not None:
                report = gather(self.nested)
                if not report["healthy"]:
                    raise ResetError("the lab is not healthy; a baseline must be a good state to return to: "
                                     + "; ".join(report["problems"]))
            existing = [vm for vm in vms if self.snapshot in self.snapshots_of(vm)]
            if existing and not replace:
                raise ResetError(f"snapshot '{self.snapshot}' already exists on "
                                 f"{', '.join(vm.plan.hostname for vm in existing)}; pass --replace to take it again")
            self.phase("shut down every node cleanly (all at once)", lambda: self.shutdown_all(vms))
            if existing:
                self.phase("remove the old baseline", lambda: self.all_at_once(
                    existing, "removing the old snapshot",
                    lambda vm: self.outer.call("delete", f"{vm.path}/snapshot/{self.snapshot}", {})))
            self.phase(f"snapshot '{self.snapshot}' of every node (disks, all nodes off)",
                       lambda: self.all_at_once(vms, "the snapshot", lambda vm: self.outer.post(
                           f"{vm.path}/snapshot", snapname=self.snapshot,
                           description="pve-lab baseline: all nodes shut down cleanly, then snapshotted")))
            self.phase("start every node", lambda: self.start_all(vms))
            self.phase("prove the lab healthy", self.wait_healthy)

        return self.run("baseline", body)

    def reset(self) -> ResetReport:
        def body():
            vms = self.node_vms()
            missing = [vm.plan.hostname for vm in vms if self.snapshot not in self.snapshots_of(vm)]
            if missing:
                raise ResetError(f"no snapshot '{self.snapshot}' on {', '.join(missing)}; take one first with "
                                 f"`python -m pvelab baseline -s {self.report.stack}` on a healthy lab")
            self.phase("stop every node (hard: its state is thrown away)", lambda: self.stop_all(vms))
            self.phase(f"roll every node back to '{self.snapshot}'", lambda: self.all_at_once(
                vms, "the rollback", lambda vm: self.outer.post(f"{vm.path}/snapshot/{self.snapshot}/rollback")))
            self.phase("start every node", lambda: self.start_all(vms))
            self.phase("prove the lab healthy", self.wait_healthy)

        return self.run("reset", body)


def render_text(report: ResetReport) -> str:
    lines = [f"{report.action} of stack '{report.stack}' (snapshot '{report.snapshot}'): "
             + ("done" if report.ok else "FAILED")]
    for p in report.phases:
        lines.append(f"  {p['seconds']:7.1f} s  {p['phase']}")
    lines.append(f"  {report.total_s:7.1f} s  in all")
    if report.status:
        cl, ceph = report.status.get("cluster", {}), report.status.get("ceph", {})
        lines.append(f"  cluster quorate {cl.get('quorate')}, {cl.get('online')} of {cl.get('members')} online; "
                     f"Ceph {ceph.get('health')}; problems: {'; '.join(report.status.get('problems') or []) or 'none'}")
    if report.error:
        lines.append(f"  error: {report.error}")
    for name in report.still_stopped:
        lines.append(f"  !! {name} may still be stopped")
    return "\n".join(lines)


def render_json(report: ResetReport) -> str:
    return json.dumps(asdict(report) | {"total_s": report.total_s}, indent=2, sort_keys=True)

"""`drill migrate`: live-migrate the HA test VM the way `ha-manager migrate` does, and report its downtime.

POST /cluster/ha/resources/{sid}/migrate (pve-ha-manager src/PVE/API2/HA/Resources.pm) queues the CRM
command "migrate <sid> <node>"; the manager moves the service to 'migrate' on its node, that node's LRM
runs an online `qm migrate` (a 'qmigrate' task: Resources/PVEVM.pm), and the service is 'started' on the
target once it succeeded. With the disk on Ceph only the memory moves, and QEMU pauses the VM just for
the final switch-over: its task log says "average migration speed: ... - downtime N ms"
(qemu-server src/PVE/QemuMigrate.pm). Nothing is powered off, so there is nothing to restore; when the
node-affinity rule prefers the source node and `failback` is on (the default), HA migrates the VM back
at once, and the drill reports that too.
"""
from __future__ import annotations

import re
from typing import Optional

from .api import ApiError, WaitTimeout, poll
from .drill import Drill, DrillError, DrillTiming
from .status import ha_facts, ha_service

DOWNTIME_RE = re.compile(r"average migration speed: .* - downtime (\d+) ms")


class MigrateDrill(Drill):
    def __init__(self, *args, target: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.target = target

    def pick_target(self, source: str, names: list[str]) -> str:
        if self.target:
            if self.target not in names:
                raise DrillError(f"--to {self.target}: not a member of the cluster ({', '.join(names)})")
            if self.target == source:
                raise DrillError(f"--to {self.target}: the HA test VM already runs there")
            return self.target
        return next(n for n in names if n != source)

    def migration_downtime(self, source: str, vmid: int, since: int) -> Optional[tuple[int, str]]:
        """(downtime in ms, UPID) from the newest qmigrate task of the VM on the source node since `since`."""
        tasks = [t for t in self.nested.get(f"nodes/{source}/tasks", vmid=vmid, typefilter="qmigrate", since=since)
                 if t.get("type") == "qmigrate" and int(t.get("starttime") or 0) >= since]
        for task in sorted(tasks, key=lambda t: -int(t.get("starttime") or 0)):
            log = self.nested.get(f"nodes/{source}/tasks/{task['upid']}/log", limit=5000)
            for entry in log:
                m = DOWNTIME_RE.search(str(entry.get("t", "")))
                if m:
                    return int(m.group(1)), task["upid"]
        return None

    def drill_migrate(self) -> None:
        sid = self.ha_sid()
        facts = self.healthy_cluster()
        names = [n["name"] for n in facts["nodes"]]
        svc = next((x for x in ha_facts(self.nested)["services"] if x["sid"] == sid), None)
        if svc is None or svc["state"] != "started" or not svc["node"]:
            raise DrillError(f"HA service {sid} is {svc['state'] + ' on ' + str(svc['node']) if svc else 'not defined'}"
                             f"; it must be started before the drill (ha-manager status)")
        source = svc["node"]
        target = self.pick_target(source, names)
        vmid = int(sid.split(":")[1])
        self.out(f"drill migrate: live-migrating {sid} from {source} to {target} (ha-manager migrate {sid} {target})")
        self.t0, self.report.started_at = self.clock.now(), self.clock.wall()
        self.start_ping(set())
        self.event(f"{sid} started on {source}")
        answer = self.nested.post(f"cluster/ha/resources/{sid}/migrate", node=target) or {}
        if answer.get("blocking-resources"):
            blocking = ", ".join(f"{b.get('sid')} ({b.get('cause')})" for b in answer["blocking-resources"])
            raise DrillError(f"HA refuses to migrate {sid} to {target}: blocked by {blocking}")
        self.event(f"migration of {sid} to {target} requested")
        self.ha_seen = ("started", source)
        stopped_seen = []
        last = {"seen": f"started on {source}"}

        def arrived():
            try:
                now = ha_service(self.nested, sid)
                vm = self.vm_status(sid)
            except ApiError as exc:
                if not exc.transient:
                    raise
                last["seen"] = exc.message
                return None
            if now is None:
                raise DrillError(f"HA service {sid} disappeared during the drill")
            if (now["state"], now["node"]) != self.ha_seen:
                self.ha_seen = (now["state"], now["node"])
                self.event(f"{sid} {now['state']} on {now['node']}")
            if vm and vm.get("status") != "running":
                stopped_seen.append(self.elapsed())
            last["seen"] = f"{now['state']} on {now['node']}, VM {vm.get('status', '-')} on {vm.get('node', '-')}"
            if now["state"] == "started" and now["node"] == target and vm.get("status") == "running" \
                    and vm.get("node") == target:
                return now
            return None

        try:
            poll(self.clock, self.timing.recovery_deadline_s, self.timing.poll_s, arrived,
                 f"{sid} to run on {target}", lambda: last["seen"])
        except WaitTimeout as exc:
            raise DrillError(f"the migration did not complete: {exc}. See the qmigrate task on {source} "
                             f"(ha-manager status, the node's task log)") from None
        self.report.recovery_s = self.elapsed()
        self.event(f"VM {vmid} running on {target}")
        found = self.migration_downtime(source, vmid, int(self.report.started_at) - 5)
        if found:
            self.report.downtime_ms = found[0]
            self.event(f"QEMU paused the VM for {found[0]} ms for the switch-over (task {found[1]})")
            self.report.findings.append(
                f"live migration {source} -> {target} in {self.report.recovery_s:.1f} s; the VM kept running "
                f"except for {found[0]} ms (its disk is on shared Ceph storage, so only its memory moved)")
        else:
            self.report.findings.append(f"the qmigrate task's downtime line was not found on {source}")
        if stopped_seen:
            self.report.findings.append(f"unexpected: the VM was seen not running during the migration "
                                        f"({len(stopped_seen)} poll(s))")
        self.settle_with_failback(sid, svc, {"node": target})


def run_migrate(spec, outer, nested, timing: DrillTiming = DrillTiming(), clock=None, out=print,
                target: Optional[str] = None, ping: Optional[str] = None):
    """`drill migrate` (the same arguments as drill.run_drill, and the target node)."""
    return MigrateDrill(spec, outer, nested, timing, clock, out, target=target, ping=ping).run("migrate")

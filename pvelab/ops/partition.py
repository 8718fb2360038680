"""`drill partition`: cut one nested node off the cluster network without powering it off.

The node's NICs get `link_down=1` through the OUTER host's API (PUT /nodes/{node}/qemu/{vmid}/config): on a
running VM qemu-server applies a link_down change at once (QemuServer.pm vmconfig_update_net ->
qemu_set_link_status), so the node keeps running, alone. Then the drill shows what the chapter describes:

- the majority keeps quorum and sees the node offline;
- the isolated node itself (asked through the outer host's guest agent, since its network is cut) has no
  quorum, and pmxcfs refuses a write to /etc/pve with "Permission denied";
- the HA VM on the isolated node is fenced and restarted on the majority (the timeline of `drill ha`), and
  the isolated node, whose HA agent held the watchdog, is reset by it about 60 s after it lost quorum;
- Ceph marks the isolated node's OSDs down;
- then the links are restored and the node rejoins (and the VM fails back to its preferred node).

Whatever happens, the drill restores the NICs' original settings; if it cannot, it prints the exact
`qm set` command per NIC.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .api import ApiError, WaitTimeout, poll
from .drill import Drill, DrillError, DrillTiming, OuterVm
from .status import ceph_facts, ha_facts

NIC_KEY_RE = re.compile(r"^net\d+$")
PROBE_FILE = ".pvelab-partition-probe"


def with_link_down(value: str, down: bool) -> str:
    """A netN value with link_down set (down) or removed (up), the other options as they were."""
    parts = [p for p in str(value).split(",") if p and not p.startswith("link_down=")]
    return ",".join(parts + (["link_down=1"] if down else []))


@dataclass
class CutNode:
    vm: OuterVm
    original: dict[str, str]  # netN -> the value before the drill

    def restore_commands(self, endpoint: str) -> list[str]:
        host = endpoint.split("//")[-1].split(":")[0].split("/")[0]
        opts = " ".join(f"--{k} '{v}'" for k, v in sorted(self.original.items()))
        return [f"ssh root@{host} qm set {self.vm.plan.vmid} {opts}   (qm runs on node {self.vm.outer_node})",
                f"or from any node: pvesh set /nodes/{self.vm.outer_node}/qemu/{self.vm.plan.vmid}/config {opts}"]


class PartitionDrill(Drill):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cut: list[CutNode] = []
        self.loss_word = "the cut"
        self.ceph_seen: Optional[str] = None

    # ---------------------------------------------------------------- links
    def nic_config(self, vm: OuterVm) -> dict[str, str]:
        cfg = self.outer.get(f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/config")
        nics = {k: str(v) for k, v in cfg.items() if NIC_KEY_RE.match(k)}
        if not nics:
            raise DrillError(f"outer VM {vm.plan.vmid} ({vm.plan.hostname}) has no network device to cut")
        return nics

    def set_links(self, cut: CutNode, down: bool) -> None:
        vm = cut.vm
        path = f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}"
        values = {k: (with_link_down(v, True) if down else v) for k, v in cut.original.items()}
        self.outer.put(f"{path}/config", **values)
        pending = [p.get("key") for p in self.outer.get(f"{path}/pending")
                   if p.get("key") in values and ("pending" in p or p.get("delete"))]
        if pending:
            self.outer.put(f"{path}/config", revert=",".join(sorted(pending)))
            raise DrillError(f"the outer host did not apply link_down on {', '.join(sorted(pending))} of VM "
                             f"{vm.plan.vmid} live (its `hotplug` option lacks 'network'?); nothing was cut")

    def cut_links(self, vm: OuterVm, original: dict[str, str]) -> None:
        cut = CutNode(vm, original)
        self.cut.append(cut)  # counted before the call: its answer may be lost
        if self.t0 is None:
            self.t0 = self.clock.now()
            self.report.started_at = self.clock.wall()
        try:
            self.set_links(cut, True)
        except DrillError:
            self.cut.remove(cut)
            raise
        self.report.cut.append(vm.plan.hostname)
        self.event(f"{vm.plan.hostname} cut off: link_down on {', '.join(sorted(original))} of outer VM "
                   f"{vm.plan.vmid} (the node keeps running)")

    def heal(self, cut: CutNode) -> None:
        self.set_links(cut, False)
        self.cut.remove(cut)
        self.event(f"{cut.vm.plan.hostname} reconnected: links of outer VM {cut.vm.plan.vmid} restored")

    def restore_links(self) -> None:
        if not self.cut:
            return
        self.out("restoring the cut network link(s) ...")
        for cut in list(self.cut):
            try:
                self.heal(cut)
            except (ApiError, DrillError, KeyboardInterrupt) as exc:
                msg = exc.message if isinstance(exc, ApiError) else (str(exc) or "interrupted")
                self.report.still_cut.append(cut.vm.plan.hostname)
                self.out(f"!! node {cut.vm.plan.hostname} (outer VM {cut.vm.plan.vmid} on {cut.vm.outer_node}) may "
                         f"still be CUT OFF: {msg}")
                for line in cut.restore_commands(self.outer.endpoints[0].url):
                    self.out(f"!! restore its links with: {line}")

    # ---------------------------------------------------------------- the isolated node's own view
    def guest_exec(self, vm: OuterVm, argv: list[str]) -> dict:
        """Run a command on a nested node through the outer host's guest agent (its own network is cut)."""
        path = f"nodes/{vm.outer_node}/qemu/{vm.plan.vmid}/agent"
        pid = self.outer.post(f"{path}/exec", command=argv)["pid"]

        def exited():
            st = self.outer.get(f"{path}/exec-status", pid=pid)
            return st if st.get("exited") else None

        return poll(self.clock, self.timing.task_deadline_s, self.timing.poll_s, exited,
                    f"`{' '.join(argv)}` on {vm.plan.hostname} (guest agent)")

    def isolated_view(self, vm: OuterVm) -> None:
        node = vm.plan.hostname
        last = {"seen": "nothing read yet"}

        def no_quorum():
            try:
                st = self.guest_exec(vm, ["pvecm", "status"])
            except ApiError as exc:
                if not exc.transient and "guest agent" not in exc.message:
                    raise
                last["seen"] = exc.message
                return None
            m = re.search(r"^Quorate:\s*(\S+)", str(st.get("out-data") or ""), re.M)
            last["seen"] = f"Quorate: {m.group(1)}" if m else (str(st.get("err-data") or "").strip() or "no answer")
            return m.group(1) if m and m.group(1) == "No" else None

        try:
            poll(self.clock, self.timing.recovery_deadline_s, self.timing.poll_s, no_quorum,
                 f"{node} to see itself without quorum", lambda: last["seen"])
            self.event(f"{node} (isolated, asked through the guest agent): pvecm status says Quorate: No")
            self.report.findings.append(f"{node} (isolated): no quorum (pvecm status 'Quorate: No')")
            probe = f"/etc/pve/nodes/{node}/{PROBE_FILE}"
            st = self.guest_exec(vm, ["sh", "-c", f"touch {probe} && rm -f {probe}"])
        except (ApiError, WaitTimeout) as exc:
            msg = exc.message if isinstance(exc, ApiError) else str(exc)
            self.report.findings.append(f"{node}'s own view could not be read through the guest agent: {msg}")
            return
        err = str(st.get("err-data") or "").strip()
        if st.get("exitcode") and "Permission denied" in err:
            self.event(f"write on {node} (isolated) refused: {err}")
            self.report.findings.append(f"/etc/pve is read-only on {node} (isolated): pmxcfs refuses writes ({err})")
        else:
            self.report.findings.append(f"unexpected: a write to /etc/pve on the isolated {node} was not refused "
                                        f"with 'Permission denied' (exit {st.get('exitcode')}: {err or 'no error'})")

    # ---------------------------------------------------------------- majority, Ceph
    def majority_keeps_quorum(self, lost: str) -> None:
        def offline(f: dict) -> list[str]:
            return [n["name"] for n in f["nodes"] if not n["online"]]

        try:
            f = self.poll_cluster(f"the majority to see {lost} offline",
                                  lambda f: f"quorate {f['quorate']}, offline: {', '.join(offline(f)) or 'none'}",
                                  lambda f, seen: bool(f["quorate"]) and lost in offline(f))
        except WaitTimeout as exc:
            raise DrillError(f"the majority did not see {lost} go: {exc}") from None
        self.event(f"majority keeps quorum: {f['online']} of {f['members']} online, {lost} offline")
        self.report.findings.append(f"the majority ({', '.join(n['name'] for n in f['nodes'] if n['online'])}) "
                                    f"keeps quorum: {f['online']} of {f['members']} online")

    def on_poll(self) -> None:
        self.check_ceph()

    def check_ceph(self) -> Optional[dict]:
        try:
            ceph = ceph_facts(self.nested)
        except ApiError:
            return None
        osds = ceph["osds"]
        text = f"{osds['up']} of {osds['total']} OSDs up" + (f" ({'; '.join(ceph['checks'])})" if ceph["checks"] else "")
        if text != self.ceph_seen:
            self.ceph_seen = text
            self.event(f"Ceph: {text}")
        return ceph

    def wait_osds_down(self) -> None:
        def down():
            ceph = self.check_ceph()
            osds = (ceph or {}).get("osds") or {}
            return ceph if osds.get("up") is not None and osds.get("total") and osds["up"] < osds["total"] else None

        try:
            ceph = poll(self.clock, self.timing.recovery_deadline_s, self.timing.poll_s, down,
                        "Ceph to mark the isolated node's OSDs down", lambda: self.ceph_seen or "Ceph not read")
        except WaitTimeout as exc:
            self.report.findings.append(f"Ceph did not mark any OSD down: {exc}")
            return
        self.report.findings.append(f"Ceph marked the isolated node's OSDs down: {ceph['osds']['up']} of "
                                    f"{ceph['osds']['total']} up")

    # ---------------------------------------------------------------- the drill
    def drill_partition(self) -> None:
        facts = self.healthy_cluster()
        names = [n["name"] for n in facts["nodes"]]
        sid, svc, master = None, None, None
        if self.spec.ha.enabled and self.spec.ha.test_vms > 0:
            sid = self.ha_sid()
            ha = ha_facts(self.nested)
            svc = next((x for x in ha["services"] if x["sid"] == sid), None)
            master = (ha.get("master") or {}).get("node")
        target = svc["node"] if svc and svc.get("state") == "started" and svc["node"] in names else names[-1]
        vm = self.outer_vm(self.plan_of(target))
        original = self.nic_config(vm)
        uptimes = {target: self.uptime(target)}
        self.nested.only(set(names) - {target})
        self.out(f"drill partition: cutting {target} off the network (link_down on {', '.join(sorted(original))} of "
                 f"outer VM {vm.plan.vmid} on {vm.outer_node}); it keeps running, alone, and the others keep "
                 f"a majority")
        if svc:
            self.event(f"{sid} {svc['state']} on {svc['node']}")
        self.start_ping({target})
        self.cut_links(vm, original)
        self.majority_keeps_quorum(target)
        self.isolated_view(vm)
        if svc and svc["node"] == target and svc["state"] == "started":
            moved, seen = self.watch_recovery(sid, svc, target)
            self.note_fence_skipped(sid, seen, master, target)
            self.report.findings.append(
                f"HA fenced {target} and restarted {sid} on {moved['node']} {self.report.recovery_s:.1f} s after "
                f"the cut; the isolated {target} could not keep it: without quorum its HA agent loses its lock "
                f"and the watchdog resets the node, so the VM never runs twice")
        self.wait_osds_down()
        self.heal(self.cut[0])
        self.wait_rejoined()
        if svc and sid:
            if svc["node"] == target:
                self.settle_with_failback(sid, svc, {"node": self.ha_seen[1] if self.ha_seen else svc["node"]})
            else:
                self.wait_settled(sid, None)
        self.check_resets(uptimes)


def run_partition(spec, outer, nested, timing=None, clock=None, out=print, ping=None):
    """`drill partition` (the same arguments as drill.run_drill)."""
    return PartitionDrill(spec, outer, nested, timing or DrillTiming(), clock, out, ping=ping).run("partition")

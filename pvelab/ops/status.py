"""`status`: the nested cluster's health as `pvecm status`, `ceph -s` and `ha-manager status` show it.

Read through the API of the first nested node that answers (GET /cluster/status, /cluster/ceph/status,
/cluster/ha/status/current), as a table or as JSON. Exit code 0 when the cluster is quorate, every member
online, Ceph reachable and not HEALTH_ERR, and every HA service started; 1 otherwise.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from . import ping
from .api import ApiError, Clock, PveClient
from .logs import CHAPTER_UNITS, gather_logs, render_logs

SERVICE_STATUS_RE = re.compile(r"^\s*(?P<sid>\S+)\s+\((?P<node>[^,()]+),\s*(?P<state>[^,()]+)")
# lrm and master entries carry their state only in `status`: "pve1 (active, watchdog active, Mon ...)" on PVE 9
# ("pve1 (idle, Mon ...)" before), "pve1 (old timestamp - dead?, ...)", "pve1 (unable to read lrm status)"
# (pve-ha-manager src/PVE/API2/HA/Status.pm).
AGENT_STATUS_RE = re.compile(r"^\s*(?P<node>\S+)\s+\((?P<state>[^,()]+)")
LRM_HOLDS_WATCHDOG = ("active", "maintenance mode", "maintenance")


def cluster_facts(client: PveClient) -> dict[str, Any]:
    """Members and quorum from GET /cluster/status (the facts of `pvecm status` / `pvecm nodes`)."""
    entries = client.get("cluster/status")
    cluster = next((e for e in entries if e.get("type") == "cluster"), None)
    nodes = sorted(
        ({"name": e.get("name"), "nodeid": e.get("nodeid"), "online": bool(e.get("online")), "ip": e.get("ip"),
          "local": bool(e.get("local"))} for e in entries if e.get("type") == "node"),
        key=lambda n: (n["nodeid"] is None, n["nodeid"] or 0, n["name"] or ""))
    return {
        "name": cluster.get("name") if cluster else None,
        "clustered": cluster is not None,
        "quorate": bool(cluster.get("quorate")) if cluster else None,
        "members": len(nodes),
        "online": sum(1 for n in nodes if n["online"]),
        "nodes": nodes,
    }


def parse_service(entry: dict) -> dict[str, Any]:
    """One HA service entry: sid, node, state (the `state` field, or parsed from `status` on older PVE)."""
    sid = entry.get("sid") or str(entry.get("id", "")).removeprefix("service:")
    node, state = entry.get("node"), entry.get("state")
    m = SERVICE_STATUS_RE.match(str(entry.get("status") or ""))
    if m:
        node = node or m.group("node").strip()
        state = state or m.group("state").strip()
    return {"sid": sid, "node": node, "state": state, "request_state": entry.get("request_state"),
            "crm_state": entry.get("crm_state"), "failback": entry.get("failback"), "status": entry.get("status")}


def agent_state(entry: dict) -> Optional[str]:
    """The state word of a master or lrm entry: 'active', 'idle', 'wait_for_agent_lock', 'lost_agent_lock',
    'maintenance mode', 'old timestamp - dead?', 'unable to read lrm status' ..."""
    m = AGENT_STATUS_RE.match(str(entry.get("status") or ""))
    return m.group("state").strip() if m else None


def ha_facts(client: PveClient) -> dict[str, Any]:
    """GET /cluster/ha/status/current, grouped as `ha-manager status` prints it."""
    entries = client.get("cluster/ha/status/current")
    quorum = next((e for e in entries if e.get("type") == "quorum"), {})
    master = next((e for e in entries if e.get("type") == "master"), None)
    return {
        "quorum": quorum.get("status"),
        "quorate": bool(quorum.get("quorate", str(quorum.get("status", "")).upper() == "OK")) if quorum else None,
        "master": ({"node": master.get("node"), "status": master.get("status"), "state": agent_state(master)}
                   if master else None),
        # the LRM holds its node's watchdog while 'active' (LRM.pm): without quorum such a node resets itself
        "lrm": [{"node": e.get("node"), "state": agent_state(e), "status": e.get("status")}
                for e in entries if e.get("type") == "lrm"],
        "services": [parse_service(e) for e in entries if e.get("type") == "service"],
    }


def ha_service(client: PveClient, sid: str) -> Optional[dict[str, Any]]:
    return next((s for s in ha_facts(client)["services"] if s["sid"] == sid), None)


def monitor_count(monmap: dict) -> Optional[int]:
    """PVE puts `ceph mon dump` in monmap when `ceph status` has no mon list (Octopus and later, so always on
    PVE 9: pve-manager PVE/Ceph/Tools.pm ceph_cluster_status): count its `mons`; older status had num_mons."""
    if isinstance(monmap.get("mons"), list):
        return len(monmap["mons"])
    return monmap.get("num_mons")


def ceph_facts(client: PveClient) -> dict[str, Any]:
    """GET /cluster/ceph/status, reduced to what `ceph -s` shows first."""
    st = client.get("cluster/ceph/status")
    health = st.get("health") or {}
    checks = health.get("checks") or {}
    osd = st.get("osdmap") or {}
    osd = osd.get("osdmap", osd)  # older Ceph nests it once more
    pgmap = st.get("pgmap") or {}
    return {
        "health": health.get("status"),
        "checks": sorted(f"{name}: {((c or {}).get('summary') or {}).get('message', '')}".rstrip(": ")
                         for name, c in checks.items()),
        "mons": monitor_count(st.get("monmap") or {}),
        "quorum": st.get("quorum_names") or [],
        "osds": {k: osd.get(f"num_{k}_osds" if k != "total" else "num_osds") for k in ("total", "up", "in")},
        "pgs": pgmap.get("num_pgs"),
        "pgs_by_state": {p.get("state_name"): p.get("count") for p in pgmap.get("pgs_by_state") or []},
    }


def guest_facts(client: PveClient, sids: list[str]) -> dict[str, Any]:
    """What /cluster/resources says of each HA guest: HA's 'started' is the request, this is whether it runs."""
    wanted = {sid for sid in sids if sid.startswith(("vm:", "ct:"))}
    out: dict[str, Any] = {sid: {"status": "not listed", "node": None} for sid in sorted(wanted)}
    for r in client.get("cluster/resources", type="vm"):
        sid = f"{'ct' if r.get('type') == 'lxc' else 'vm'}:{r.get('vmid')}"
        if sid in wanted:
            out[sid] = {"status": r.get("status"), "node": r.get("node")}
    return out


PROBE_DEADLINE_S = 4.0  # one `ping -c 1 -W 1` through the guest agent: about a second, a few API round trips


def ping_test_vm(outer: PveClient, outer_node: str, vmids: dict[str, int], address: str, report: dict[str, Any],
                 clock: Optional[Clock] = None, deadline_s: float = PROBE_DEADLINE_S) -> dict[str, Any]:
    """Whether the HA test VM answers one ping, sent from the first online member through the OUTER host's guest
    agent (the nested API has no ping). `vmids`: node name -> its outer VMID."""
    clock = clock or Clock()
    online = [n["name"] for n in (report.get("cluster") or {}).get("nodes", []) if n.get("online")]
    node = next((n for n in online if n in vmids), None)
    if node is None:
        return {"address": address, "from_node": None, "answers": None, "error": "no online node to ping from"}
    path = f"nodes/{outer_node}/qemu/{vmids[node]}/agent"
    try:
        pid = int(outer.post(f"{path}/exec", command=ping.once_argv(address))["pid"])
        until = clock.now() + deadline_s
        while True:
            st = outer.get(f"{path}/exec-status", pid=pid)
            if st.get("exited"):
                return {"address": address, "from_node": node, "answers": st.get("exitcode") == 0}
            if clock.now() >= until:
                return {"address": address, "from_node": node, "answers": None,
                        "error": f"the ping did not end within {deadline_s:g} s"}
            clock.sleep(0.2)
    except (ApiError, KeyError, TypeError, ValueError) as exc:
        return {"address": address, "from_node": node, "answers": None,
                "error": exc.message if isinstance(exc, ApiError) else f"unexpected answer ({type(exc).__name__})"}


def gather(client: PveClient, log_lines: Optional[int] = None,
           probe: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None) -> dict[str, Any]:
    """Everything `status` shows; a part that cannot be read carries its error instead.

    log_lines: also each member's last N corosync and pve-cluster journal lines (`logs`).
    probe: pings the HA test VM (ping_test_vm) given what was read so far: `test_vm`."""
    report: dict[str, Any] = {}
    for key, read in (("cluster", cluster_facts), ("ceph", ceph_facts), ("ha", ha_facts)):
        try:
            report[key] = read(client)
        except ApiError as exc:
            report[key] = {"error": exc.message}
    if "error" not in report["ha"] and report["ha"].get("services"):
        try:
            report["guests"] = guest_facts(client, [x["sid"] for x in report["ha"]["services"]])
        except ApiError as exc:
            report["guests"] = {"error": exc.message}
    if log_lines:
        members = [(n["name"], n["online"]) for n in report["cluster"].get("nodes", [])]
        report["logs"] = gather_logs(client, members, log_lines)
        report["log_lines"] = log_lines
    if probe is not None:
        report["test_vm"] = probe(report)
    report["endpoint"] = client.last_endpoint.name if client.last_endpoint else None
    report["problems"] = problems(report)
    report["healthy"] = not report["problems"]
    return report


def problems(report: dict[str, Any]) -> list[str]:
    out = []
    cl, ceph, ha = report.get("cluster", {}), report.get("ceph", {}), report.get("ha", {})
    if "error" in cl:
        out.append(f"cluster status unreadable: {cl['error']}")
    else:
        if not cl.get("clustered"):
            out.append("this node is not in a cluster")
        elif not cl.get("quorate"):
            out.append(f"no quorum: {cl['online']} of {cl['members']} members online; /etc/pve is read-only and HA "
                       f"cannot recover services")
        for n in cl.get("nodes", []):
            if not n["online"]:
                out.append(f"node {n['name']} is offline")
    if "error" in ceph:
        out.append(f"Ceph unreachable: {ceph['error']}")
    elif ceph.get("health") == "HEALTH_ERR":
        out.append("Ceph HEALTH_ERR: " + "; ".join(ceph.get("checks") or []))
    guests = report.get("guests") or {}
    if "error" in ha:
        out.append(f"HA status unreadable: {ha['error']}")
    else:
        for s in ha.get("services", []):
            if s["state"] not in ("started", "stopped", "ignored", "disabled") or (
                    s["state"] == "stopped" and s.get("request_state") == "started"):
                out.append(f"HA service {s['sid']} is {s['state']} on {s['node']}")
            elif s["state"] == "started" and isinstance(guests.get(s["sid"]), dict) and \
                    guests[s["sid"]].get("status") != "running":
                g = guests[s["sid"]]
                out.append(f"HA service {s['sid']} is started on {s['node']} but its guest is {g.get('status')} "
                           f"(not running yet, or frozen while quorum was lost)")
    probe = report.get("test_vm") or {}
    running = any(isinstance(g, dict) and g.get("status") == "running" for g in guests.values())
    if probe.get("answers") is False and running:  # a stopped guest is already reported above
        out.append(f"the HA test VM runs but {probe['address']} does not answer ping (from {probe['from_node']}): "
                   f"check its console (cloud-init, network)")
    return out


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def render_text(report: dict[str, Any]) -> str:
    lines = []
    cl = report.get("cluster", {})
    if "error" in cl:
        lines.append(f"Cluster: unreadable ({cl['error']})")
    else:
        quorate = {True: "yes", False: "NO", None: "-"}[cl.get("quorate")]
        lines.append(f"Cluster {cl.get('name') or '(none)'}: quorate {quorate}, {cl['online']} of {cl['members']} "
                     f"members online  [pvecm status]")
        if cl.get("nodes"):
            rows = [["NODE", "ID", "ONLINE", "IP"]] + [
                [n["name"] or "?", str(n["nodeid"] or "-"), "yes" if n["online"] else "NO", n["ip"] or "-"]
                for n in cl["nodes"]]
            lines += _table(rows)
    ceph = report.get("ceph", {})
    if "error" in ceph:
        lines.append(f"Ceph: unreachable ({ceph['error']})  [ceph -s]")
    else:
        osds = ceph["osds"]
        pgs = ", ".join(f"{c} {s}" for s, c in sorted(ceph["pgs_by_state"].items())) or "-"
        lines.append(f"Ceph: {ceph['health']}, mons {ceph['mons']} (quorum {','.join(ceph['quorum']) or '-'}), "
                     f"osds {osds['up']} up / {osds['in']} in of {osds['total']}, pgs {ceph['pgs']} ({pgs})  [ceph -s]")
        lines += [f"  - {c}" for c in ceph["checks"]]
    ha = report.get("ha", {})
    if "error" in ha:
        lines.append(f"HA: unreadable ({ha['error']})  [ha-manager status]")
    else:
        master = ha.get("master") or {}
        lines.append(f"HA: quorum {ha.get('quorum') or '-'}, master {master.get('status') or master.get('node') or '-'}"
                     f"  [ha-manager status]")
        for lrm in ha.get("lrm", []):
            lines.append(f"  lrm {lrm['status'] or lrm['node']}")
        if ha.get("services"):
            guests = report.get("guests") or {}

            def runs(sid):
                g = guests.get(sid)
                return f"{g.get('status')} on {g.get('node') or '-'}" if isinstance(g, dict) and "status" in g else "-"

            rows = [["SERVICE", "NODE", "STATE", "REQUESTED", "GUEST"]] + [
                [s["sid"], s["node"] or "-", s["state"] or "-", s["request_state"] or "-", runs(s["sid"])]
                for s in ha["services"]]
            lines += _table(rows)
        else:
            lines.append("  no HA services")
    probe = report.get("test_vm")
    if probe:
        if probe.get("answers") is None:
            lines.append(f"Test VM {probe['address']}: not pinged ({probe.get('error')})  [ping]")
        else:
            lines.append(f"Test VM {probe['address']}: {'answers' if probe['answers'] else 'does NOT answer'} "
                         f"ping from {probe['from_node']}  [ping]")
    if report.get("logs") is not None:
        lines += render_logs(report["logs"], report.get("log_lines") or 0, CHAPTER_UNITS)
    if report.get("endpoint"):
        lines.append(f"(read through {report['endpoint']})")
    if report["problems"]:
        lines.append("Problems:")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("Healthy.")
    return "\n".join(lines)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)

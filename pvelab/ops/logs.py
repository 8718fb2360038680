"""Recent log lines of the nested nodes, through the API: the chapter's `journalctl -u corosync -u pve-cluster`.

GET /nodes/{node}/journal (pve-manager PVE/API2/Nodes.pm) runs `mini-journalreader -j` on that node
(pveproxy forwards the call): `unit` keeps one systemd unit (one call per unit), `lastentries` the last N
entries, `since` entries from a UNIX time on. The answer is text lines framed by a start and an end
journal cursor line ("s=...;i=...;b=...;m=...;t=...;x=..."), which are dropped here.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .api import ApiError, PveClient

CHAPTER_UNITS = ("corosync", "pve-cluster")  # journalctl -u corosync -u pve-cluster
DRILL_UNITS = CHAPTER_UNITS + ("pve-ha-crm", "pve-ha-lrm")
CURSOR_RE = re.compile(r"^s=[0-9a-f]+;i=[0-9a-f]+;")
STAMP_RE = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)")

# The lines the chapter's story is told by (wording from corosync/knet, pmxcfs and pve-ha-manager).
KEY_PATTERNS = tuple(re.compile(p) for p in (
    r"link: host: \d+ link: \d+ is down", r"host: host: \d+ has no active links",
    r"link: Resetting MTU|rx: host: \d+ link: \d+ is up",
    r"\[QUORUM\] (Sync members|Members\[|This node is within)", r"\[TOTEM \] A new membership",
    r"node lost quorum", r"node has quorum", r"members: ",
    r"[Ff]ence|fencing", r"recover service", r"got agent lock|lost agent.lock|agent_lock",
    r"migrate service", r"watchdog", r"status change", r"service '[^']+': state changed",
))


def is_key_line(line: str) -> bool:
    return any(p.search(line) for p in KEY_PATTERNS)


def _order_key(line: str) -> tuple:
    """Journal short format stamps ('Nov 30 15:04:05') sort within a year: good enough to merge two units."""
    m = STAMP_RE.match(line)
    if not m:
        return (1, "")
    try:
        parsed = time.strptime(m.group("stamp"), "%b %d %H:%M:%S")
    except ValueError:
        return (1, "")
    return (0, (parsed.tm_mon, parsed.tm_mday, parsed.tm_hour, parsed.tm_min, parsed.tm_sec))


def journal(client: PveClient, node: str, units: Iterable[str], lines: Optional[int] = None,
            since: Optional[int] = None) -> list[str]:
    """The node's journal lines of these units, oldest first (the last `lines` of them)."""
    merged: list[str] = []
    for unit in units:
        params: dict[str, Any] = {"unit": unit}
        if lines:
            params["lastentries"] = lines
        if since is not None:
            params["since"] = max(0, int(since))
        got = client.get(f"nodes/{node}/journal", **params) or []
        merged += [str(x) for x in got if not CURSOR_RE.match(str(x)) and str(x).strip()]
    merged.sort(key=_order_key)  # stable: a unit's own order is kept within one second
    return merged[-lines:] if lines else merged


@dataclass
class NodeLog:
    node: str
    lines: list[str] = field(default_factory=list)
    error: Optional[str] = None

    def as_dict(self) -> dict:
        return {"lines": self.lines} if self.error is None else {"error": self.error, "lines": self.lines}


def gather_logs(client: PveClient, nodes: Iterable[tuple[str, bool]], lines: int,
                units: Iterable[str] = CHAPTER_UNITS) -> dict[str, dict]:
    """{node: {"lines": [...]}} for every (node, online) given; an offline or unreadable node carries its error."""
    units = tuple(units)
    out: dict[str, dict] = {}
    for node, online in nodes:
        if not online:
            out[node] = NodeLog(node, error="offline: its journal cannot be read through the API").as_dict()
            continue
        try:
            out[node] = NodeLog(node, journal(client, node, units, lines)).as_dict()
        except ApiError as exc:
            out[node] = NodeLog(node, error=exc.message).as_dict()
    return out


def render_logs(logs: dict[str, dict], lines: int, units: Iterable[str] = CHAPTER_UNITS) -> list[str]:
    head = f"Logs (journalctl {' '.join('-u ' + u for u in units)} -n {lines}, through the API):"
    out = [head]
    for node in sorted(logs):
        entry = logs[node]
        if entry.get("error"):
            out.append(f"  {node}: {entry['error']}")
            continue
        out.append(f"  {node}:" + ("" if entry["lines"] else " (no lines)"))
        out += [f"    {line}" for line in entry["lines"]]
    return out

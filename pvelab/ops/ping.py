"""Service downtime as a client sees it: ping the HA test VM from a nested node that stays up.

The ping runs on that node itself (iputils `ping -D -O`: a UNIX time stamp on every line, and "no answer
yet for icmp_seq=N" for every lost one), started and stopped through the OUTER host's guest agent
(POST /nodes/{node}/qemu/{vmid}/agent/exec, GET .../exec-status: qemu-server API2/Qemu/Agent.pm; the nested
nodes run qemu-guest-agent), so it keeps going while the drill's own API calls wait, and its lines are read
once at the end. From them: when the first reply was missed and when the VM answered again.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional

PID_FILE = "/run/pvelab-ping.pid"
INTERVAL_S = 0.5
REPLY_RE = re.compile(r"^\[(?P<t>\d+(?:\.\d+)?)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+)")
LOST_RE = re.compile(r"^\[(?P<t>\d+(?:\.\d+)?)\] no answer yet for icmp_seq=(?P<seq>\d+)")


def start_argv(address: str, max_s: int) -> list[str]:
    """Ping every 0.5 s for at most max_s; the shell leaves its pid (= ping's, after exec) for the stop.
    The address goes into a shell command on the node: only an IP address is accepted."""
    address = str(ipaddress.ip_address(address))
    return ["sh", "-c", f"echo $$ > {PID_FILE}; exec ping -D -O -n -i {INTERVAL_S:g} -W 1 -w {max_s} {address}"]


def once_argv(address: str) -> list[str]:
    """One ping, one second at most (`status`): no shell, the address as its own argument. iputils ping exits 0
    when a reply came, 1 when none did."""
    return ["ping", "-c", "1", "-W", "1", "-n", str(ipaddress.ip_address(address))]


STOP_ARGV = ["sh", "-c", f"kill -INT \"$(cat {PID_FILE})\" 2>/dev/null; rm -f {PID_FILE}"]


@dataclass
class PingReport:
    address: str
    from_node: str
    sent: int = 0
    answered: int = 0
    first_lost_s: Optional[float] = None  # seconds after the drill's +0
    answered_again_s: Optional[float] = None
    downtime_s: Optional[float] = None  # answered again - first lost
    outages: list[list[float]] = field(default_factory=list)  # [lost_s, back_s] per outage, back_s -1 if never


def parse(text: str, address: str, node: str, t0: float) -> PingReport:
    """The outages in `ping -D -O` output, in seconds relative to t0 (a UNIX time)."""
    rep = PingReport(address, node)
    lost_since: Optional[float] = None
    for line in text.splitlines():
        if m := REPLY_RE.match(line):
            rep.sent += 1
            rep.answered += 1
            t = float(m.group("t")) - t0
            if lost_since is not None:
                rep.outages.append([round(lost_since, 1), round(t, 1)])
                lost_since = None
        elif m := LOST_RE.match(line):
            rep.sent += 1
            t = float(m.group("t")) - t0
            if lost_since is None:
                lost_since = t
    if lost_since is not None:
        rep.outages.append([round(lost_since, 1), -1])
    if rep.outages:
        rep.first_lost_s = rep.outages[0][0]
        back = rep.outages[0][1]
        if back >= 0:
            rep.answered_again_s = back
            rep.downtime_s = round(back - rep.first_lost_s, 1)
    return rep

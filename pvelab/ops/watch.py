"""`status --watch`: redraw the cluster, Ceph and HA state every few seconds, as the chapter asks the reader
to watch the VM move.

On a terminal each frame replaces the last (ANSI "cursor home, clear to end": no full-screen library
needed for one block of text); elsewhere (a pipe, a log file) frames follow each other with a time stamp,
and `--format json` gives one JSON object per line (JSON Lines). Ctrl-C ends the watch cleanly.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Optional, TextIO

from .api import Clock, PveClient
from .status import gather, render_text

HOME_CLEAR = "\x1b[H\x1b[J"


def frame_text(report: dict, interval_s: float, stamp: str, translate: Callable[[str], str]) -> str:
    head = f"pve-lab status {stamp}, every {interval_s:g} s (Ctrl-C to stop)"
    return translate(head + "\n" + render_text(report))


def watch(client: PveClient, stream: TextIO, interval_s: float = 5.0, count: Optional[int] = None,
          fmt: str = "text", log_lines: Optional[int] = None, clock: Optional[Clock] = None,
          translate: Callable[[str], str] = lambda text: text, tty: Optional[bool] = None,
          probe: Optional[Callable[[dict], dict]] = None) -> int:
    """Redraw until Ctrl-C (or `count` frames); the exit code of the last frame (0 healthy, 1 not).
    probe: the HA test VM's ping (status.ping_test_vm), once per frame."""
    clock = clock or Clock()
    tty = stream.isatty() if tty is None else tty
    healthy, frames = True, 0
    try:
        while count is None or frames < count:
            started = clock.now()
            report = gather(client, log_lines, probe)
            healthy = report["healthy"]
            stamp = time.strftime("%H:%M:%S", time.localtime(clock.wall()))
            if fmt == "json":
                stream.write(json.dumps(dict(report, time=clock.wall()), sort_keys=True) + "\n")
            elif tty:
                stream.write(HOME_CLEAR + frame_text(report, interval_s, stamp, translate) + "\n")
            else:
                stream.write(frame_text(report, interval_s, stamp, translate) + "\n\n")
            stream.flush()
            frames += 1
            if count is None or frames < count:
                clock.sleep(max(0.0, interval_s - (clock.now() - started)))
    except KeyboardInterrupt:
        stream.write("\n")
    return 0 if healthy else 1


class TickingClock(Clock):
    """A clock whose every wait first calls `tick` (a drill waits between all its polls: the live view
    redraws there, without touching the drill's code)."""

    def __init__(self, inner: Clock, tick: Callable[[], None]):
        self.inner, self.tick = inner, tick

    def now(self) -> float:
        return self.inner.now()

    def wall(self) -> float:
        return self.inner.wall()

    def sleep(self, seconds: float) -> None:
        self.tick()
        self.inner.sleep(seconds)


class DrillView:
    """`drill --watch`: the status view redrawn above the drill's progress, as the drill runs.

    On a terminal the screen is redrawn at most every interval_s (status read through its own client,
    so the view never slows the drill's own API calls); elsewhere lines are printed as they come."""

    def __init__(self, client: PveClient, stream: TextIO, interval_s: float = 5.0, clock: Optional[Clock] = None,
                 translate: Callable[[str], str] = lambda text: text, tty: Optional[bool] = None, keep: int = 25):
        self.client, self.stream, self.interval_s = client, stream, interval_s
        self.clock = clock or Clock()
        self.translate = translate
        self.tty = stream.isatty() if tty is None else tty
        self.lines: list[str] = []
        self.keep = keep
        self.frame: Optional[str] = None
        self.last_read: Optional[float] = None

    def line(self, text: str) -> None:
        self.lines.append(text)
        if self.tty:
            self.redraw(read=False)
        else:
            self.stream.write(self.translate(text) + "\n")
            self.stream.flush()

    def tick(self) -> None:
        if self.tty:
            self.redraw(read=self.last_read is None or self.clock.now() - self.last_read >= self.interval_s)

    def redraw(self, read: bool) -> None:
        if read or self.frame is None:
            self.last_read = self.clock.now()
            stamp = time.strftime("%H:%M:%S", time.localtime(self.clock.wall()))
            self.frame = frame_text(gather(self.client), self.interval_s, stamp, self.translate)
        progress = "\n".join(self.translate(x) for x in self.lines[-self.keep:])
        self.stream.write(HOME_CLEAR + self.frame + "\n\n" + progress + "\n")
        self.stream.flush()

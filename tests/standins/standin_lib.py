"""Shared helpers for the stand-in PVE/Debian tools in tests/standins/bin.

Each stand-in is a small Python program that behaves as its real tool is documented to (output format,
exit codes, state it changes). State lives under $STANDIN_STATE:
  calls.log                   every call: "<node>: <tool> <args>"
  cluster/                    what a real cluster shares (pmxcfs /etc/pve, ceph cluster state)
  nodes/<node>/               per-node state (beside the node's HOME and PVE_LAB_ROOT tree)
  faults/<name>               fault injection: present = on; a number inside = fire that many times
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ["STANDIN_STATE"])


def node() -> str:
    return os.environ["STANDIN_NODE"]


def node_dir(name: str | None = None) -> Path:
    d = state_dir() / "nodes" / (name or node())
    d.mkdir(parents=True, exist_ok=True)
    return d


def root() -> Path:
    return Path(os.environ.get("PVE_LAB_ROOT", "/"))


def log_call(tool: str, argv: list[str]) -> None:
    with open(state_dir() / "calls.log", "a") as f:
        f.write(f"{node()}: {tool} {shlex.join(argv)}".rstrip() + "\n")


def fault(name: str) -> bool:
    """True when fault `name` is armed; a counted fault is used up by firing."""
    path = state_dir() / "faults" / name
    if not path.exists():
        return False
    text = path.read_text().strip()
    if text.isdigit():
        left = int(text)
        if left <= 0:
            return False
        path.write_text(str(left - 1))
    return True


def arm_fault(state: Path, name: str, times: int | None = None) -> None:
    (state / "faults").mkdir(parents=True, exist_ok=True)
    (state / "faults" / name).write_text("" if times is None else str(times))


@contextmanager
def locked_json(path: Path, default):
    """Read-modify-write a JSON file under an exclusive lock (nodes may run at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else default
        holder = {"data": data}
        yield holder
        path.write_text(json.dumps(holder["data"], indent=1, sort_keys=True))


def die(message: str, code: int = 255) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)

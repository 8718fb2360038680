"""`plan --calibrate EVENTLOG`: learn each step kind's duration from a real `pulumi up --event-log FILE`.

The event log is one engine event (JSON) per line, as pulumi/pulumi sdk/go/common/apitype/events.go
defines them: `{"sequence", "timestamp" (Unix seconds), "resourcePreEvent" | "resOutputsEvent" |
"resOpFailedEvent" | ...}`, each step event carrying `metadata` {op, urn, type, new: {inputs, parent, ...}}.
A resource's step starts at its resourcePreEvent and ends at its resOutputsEvent; the time between them
is what that step took. Only steps that did work count (op create, update, replace, create-replacement):
a `same` step took no time. Each step is mapped to the same kind as `plan` uses (pvelab/plan/durations.py
keys): a node script's `script:first-argument`, `vm:outer`/`vm:builder`/`vm:inner`, `@clone` kinds for nodes
cloned from the golden template, or the resource type. Per kind the median of the measured runs wins
(per OSD device for `ceph-osd`). The figures stay estimates for the next lab: they say where they came from.
"""
from __future__ import annotations

import json
import re
import shlex
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .durations import STEP_DURATIONS, Duration
from .model import SCRIPT_RUN_RE

WORK_OPS = frozenset({"create", "update", "replace", "create-replacement"})
VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
REMOTE_COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"


class CalibrationError(Exception):
    pass


@dataclass
class Measured:
    kind: str
    seconds: list[float]  # per unit
    steps: list[str]  # resource names

    @property
    def median_s(self) -> int:
        return int(round(statistics.median(self.seconds)))


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _secretless(value: Any) -> Any:
    # The event log shows secrets as "[secret]"; anything else is the value.
    return value if value != "[secret]" else None


def _command_kind(inputs: dict) -> tuple[str, int, dict]:
    """(kind, units, env) of a node step from its command text, as plan's command_parts reads it."""
    text = _secretless(inputs.get("create")) or ""
    if not isinstance(text, str):
        return "", 1, {}
    run_line = next((line for line in reversed(text.splitlines()) if SCRIPT_RUN_RE.search(line)), "")
    match = SCRIPT_RUN_RE.search(run_line)
    if not match:
        return "", 1, {}
    try:
        words = shlex.split(run_line)
    except ValueError:
        words = []
    if words and words[0] == "env":
        words = words[1:]
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    args = words[2:] if len(words) >= 2 and words[0] == "bash" else []
    kind = f"{match.group(1)}:{args[0]}" if args else match.group(1)
    units = (len(env.get("OSD_SERIALS", "").split()) or 1) if match.group(1) == "ceph-osd" else 1
    return kind, units, env


def _vm_facts(inputs: dict) -> tuple[str, Optional[str]]:
    """(kind, host name) of a VM step."""
    tags = inputs.get("tags") or []
    name = inputs.get("name")
    if "pve-lab-template" in tags:
        return "vm:builder", name
    if "pve-lab-node" in tags:
        return ("vm:outer@clone" if inputs.get("clone") else "vm:outer"), name
    return "vm:inner", name


def read_events(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalibrationError(f"--calibrate {path}: cannot read it ({exc.strerror or exc})") from None
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise CalibrationError(f"--calibrate {path}: line {number} is not JSON; give the file written by "
                                   f"`pulumi up --event-log FILE`") from None
    return events


def _creator_address(finished: list[tuple[dict, float]]) -> Optional[str]:
    """The address (LINK0) of the node that ran `pvecm create` in this log, if it did."""
    for meta, _ in finished:
        if meta.get("type") == REMOTE_COMMAND:
            kind, _, env = _command_kind(((meta.get("new") or {}).get("inputs")) or {})
            if kind == "cluster-create":
                return env.get("LINK0")
    return None


def learn(path: Path) -> dict[str, Measured]:
    """Every step kind's measured durations in the event log."""
    events = sorted(read_events(Path(path)), key=lambda e: e.get("sequence", 0))
    started: dict[str, tuple[int, dict]] = {}
    finished: list[tuple[dict, float]] = []
    for e in events:
        pre, done = e.get("resourcePreEvent"), e.get("resOutputsEvent")
        if pre and not pre.get("planning"):
            meta = pre.get("metadata") or {}
            if meta.get("op") in WORK_OPS:
                started[meta.get("urn", "")] = (int(e.get("timestamp", 0)), meta)
        elif done and not done.get("planning"):
            meta = done.get("metadata") or {}
            begin = started.pop(meta.get("urn", ""), None)
            if begin is not None:
                finished.append((begin[1], float(int(e.get("timestamp", 0)) - begin[0])))
    if not finished and not any("resourcePreEvent" in e for e in events):
        raise CalibrationError(f"--calibrate {path}: no resource steps in it; give the file written by "
                               f"`pulumi up --event-log FILE` (not `pulumi preview`)")
    # Nodes cloned from the golden template: their component (the steps' parent) and their host name
    # (NODE_NAME of the Ceph steps). The connection, with its private key, is a secret in the log.
    cloned_parents, cloned_names = set(), set()
    for meta, _ in finished:
        new = meta.get("new") or {}
        if meta.get("type") == VM_TYPE and _vm_facts(new.get("inputs") or {})[0] == "vm:outer@clone":
            cloned_parents.add(new.get("parent"))
            cloned_names.add((new.get("inputs") or {}).get("name"))
    creator = _creator_address(finished)
    out: dict[str, Measured] = {}
    for meta, seconds in finished:
        inputs = ((meta.get("new") or {}).get("inputs")) or {}
        typ, units = meta.get("type", ""), 1
        if typ == REMOTE_COMMAND:
            kind, units, env = _command_kind(inputs)
            on_clone = (meta.get("new") or {}).get("parent") in cloned_parents or env.get("NODE_NAME") in cloned_names
            if kind and on_clone and f"{kind}@clone" in STEP_DURATIONS:
                kind = f"{kind}@clone"
            if kind == "cluster-join" and creator and env.get("LINK0") == creator:
                kind = "cluster-join@creator"  # as plan counts it: node 1's join, a check on a first build
        elif typ == LOCAL_COMMAND and _name(meta.get("urn", "")).endswith("-convert"):
            kind = "outer-template"
        elif typ == VM_TYPE:
            kind, _ = _vm_facts(inputs)
        else:
            kind = typ
        if not kind:
            continue
        m = out.setdefault(kind, Measured(kind, [], []))
        m.seconds.append(seconds / max(1, units))
        m.steps.append(_name(meta.get("urn", "")))
    return out


def calibrated_table(measured: dict[str, Measured], source: str) -> dict[str, Duration]:
    """The duration table with every measured kind replaced by its median, saying where it came from."""
    table = dict(STEP_DURATIONS)
    for kind, m in measured.items():
        per_unit = table[kind].per_unit if kind in table else ""
        table[kind] = Duration(m.median_s, f"measured: median of {len(m.seconds)} step(s) in {source}", per_unit)
    return table


@contextmanager
def calibrated(measured: dict[str, Measured], source: str) -> Iterator[None]:
    """Use the calibrated figures for the plans built inside (the table is restored afterwards)."""
    saved = dict(STEP_DURATIONS)
    STEP_DURATIONS.update(calibrated_table(measured, source))
    try:
        yield
    finally:
        STEP_DURATIONS.clear()
        STEP_DURATIONS.update(saved)


def render_calibration(measured: dict[str, Measured], source: str) -> str:
    lines = [f"Calibration from {source} (measured step times; the plan below uses them, other steps keep the table's):"]
    for kind in sorted(measured):
        m = measured[kind]
        before = STEP_DURATIONS.get(kind)
        was = f"{before.seconds} s" if before else "no entry"
        unit = f" per {before.per_unit}" if before and before.per_unit else ""
        lines.append(f"  {kind:<28} {m.median_s:>6} s{unit}  (table: {was}; {len(m.seconds)} step(s))")
    return "\n".join(lines) + "\n"


def calibration_json(measured: dict[str, Measured]) -> dict:
    return {k: {"median_s": m.median_s, "seconds": m.seconds, "steps": m.steps} for k, m in sorted(measured.items())}


def _state_json(state: Any) -> Optional[dict]:
    if state is None:
        return None
    return {"type": state.type, "urn": state.urn, "id": state.id, "parent": state.parent, "custom": state.custom,
            "provider": state.provider, "inputs": state.inputs or {}, "outputs": {}}


def _step_json(metadata: Any) -> dict:
    op = getattr(metadata.op, "value", metadata.op)
    return {"op": op, "urn": metadata.urn, "type": metadata.type, "provider": metadata.provider,
            "old": _state_json(metadata.old), "new": _state_json(metadata.new)}


def event_json(event: Any) -> Optional[dict]:
    """An Automation API EngineEvent (pulumi.automation.events) back in the event log's JSON shape, for the
    kinds calibration reads (step starts, ends, failures, the summary); None for the others."""
    base = {"sequence": event.sequence, "timestamp": event.timestamp}
    if event.resource_pre_event is not None:
        return base | {"resourcePreEvent": {"metadata": _step_json(event.resource_pre_event.metadata),
                                            "planning": bool(event.resource_pre_event.planning)}}
    if event.res_outputs_event is not None:
        return base | {"resOutputsEvent": {"metadata": _step_json(event.res_outputs_event.metadata),
                                           "planning": bool(event.res_outputs_event.planning)}}
    if event.res_op_failed_event is not None:
        return base | {"resOpFailedEvent": {"metadata": _step_json(event.res_op_failed_event.metadata)}}
    if event.summary_event is not None:
        return base | {"summaryEvent": {"durationSeconds": event.summary_event.duration_seconds}}
    return None


class EventLogWriter:
    """`on_event` for the Automation API's `stack.up`: appends each step event to an event log file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.write_text("")

    def __call__(self, event: Any) -> None:
        data = event_json(event)
        if data is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(data, default=str) + "\n")

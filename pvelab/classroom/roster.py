"""The class roster: class defaults, allocation settings, limits, outer nodes and the students.

A roster is YAML (see examples/classroom.yaml). The student list may also be a CSV file: either
`students: students.csv` in the YAML roster (a path relative to it), or a CSV file given directly whose
leading `#` lines hold the class settings as YAML (`##` lines are plain comments). CSV columns: `id`, `name`, and optionally `node` (pin to
an outer node), `user` (e.g. a realm login `aiko@ldap`) and `lab.<path>` overrides such as
`lab.nodes.memoryMiB`. Cells are text; a `lab.<path>` cell is a number or true/false only where that key of the
lab object is one (`007` stays '007', `No` stays 'No').

Every mistake is one line naming the roster key, e.g. `roster.students[3].id: duplicate 's03'`; all of
them are reported together (RosterError).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import ipaddress
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..formats import (
    BRIDGE_RE, MAX_LABEL, PVE_NODE_RE, REALM_MAX, REALM_RE, ROLE_ID_RE, SDN_ID_MAX, SDN_ID_RE, STORAGE_ID_RE,
    USER_ID_MAX, USER_ID_RE, is_number, key_name, show,
)
from ..safeyaml import YamlInputError, load_yaml, read_text
from ..spec import ADMIN_ROLES, LabSpec, SpecError

CLASS_ID_RE = re.compile(r"[a-z][a-z0-9]{0,11}")
STUDENT_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")
VNET_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,4}")
ONE_LINE_RE = re.compile(r"[^\x00-\x1f\x7f]*")
NODE_NAME_RE, STORAGE_RE, USER_RE = PVE_NODE_RE, STORAGE_ID_RE, USER_ID_RE  # older names (use fullmatch)


class RosterError(SpecError):
    """Every problem in a roster (or its allocation), one line each naming the roster key."""

    def render(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return "\n".join([f"{len(self.problems)} problem(s) in the roster:"] + [f"- {p}" for p in self.problems])


@dataclass(frozen=True)
class OuterNode:
    """An outer PVE node the class may use, with the capacity the class may take from it (None = unlimited)."""

    name: str
    cores: Optional[int] = None  # vCPUs for the class (may exceed the physical cores: overcommit)
    memory_gib: Optional[float] = None
    disk_gib: Optional[float] = None
    storage: Optional[str] = None  # VM disks on this node (default: lab.outer.storage)
    image_storage: Optional[str] = None  # the shared cloud image on this node (default: lab.outer.imageStorage)


@dataclass(frozen=True)
class NetworkSettings:
    mode: str = "vlan"  # vlan: a VLAN tag per student on `bridge`; sdn: a VNet per student in `zone`
    tag_base: int = 1100  # slot k gets VLAN tag (or VNet tag) tag_base + k
    bridge: Optional[str] = None  # vlan mode: default lab.outer.bridge
    zone: Optional[str] = None  # sdn mode: an existing zone (VLAN or VXLAN type)
    vnet_prefix: str = "lab"  # sdn mode: slot k gets VNet "<prefix><k>" (VNet ids have at most 8 characters)


@dataclass(frozen=True)
class AllocationSettings:
    vmid_base: int = 20000
    vmid_block: int = 10  # VMIDs reserved per student: slot k owns vmid_base + k*vmid_block ...
    supernet: str = "10.100.0.0/16"
    subnet_prefix: int = 24  # slot k gets the k-th /subnet_prefix of the supernet
    first_host: int = 11  # nested node i is at host first_host + i of the student's subnet (.1 = gateway)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    user_realm: str = "pve"
    role: str = "PVEVMUser"
    hostname_prefix: str = "{id}-pve"  # templates: {id}, {slot}, {class}
    cluster_name: str = "{class}-{id}"
    reuse_retired_slots: bool = False  # a removed student's slot stays retired unless this is true


@dataclass(frozen=True)
class Limits:
    """Per-student limits of the class (None = no limit). The policy pack enforces them."""

    max_nodes: Optional[int] = None
    max_cores: Optional[int] = None  # total vCPUs of one student's nested nodes
    max_memory_gib: Optional[float] = None
    max_disk_gib: Optional[float] = None
    allowed_nodes: tuple[str, ...] = ()  # default: the roster's outer nodes
    allowed_storages: tuple[str, ...] = ()  # default: the storages the class uses


@dataclass(frozen=True)
class Student:
    index: int  # position in the roster (for error messages)
    id: str
    name: str
    node: Optional[str] = None  # pinned outer node
    user: Optional[str] = None  # a PVE user id; default <class>-<id>@<realm>
    lab: dict = field(default_factory=dict)  # overrides of the class lab object


@dataclass
class Roster:
    path: Path
    class_id: str
    title: str
    lab: dict  # the class defaults: a `pve-lab:lab` object
    allocation: AllocationSettings
    limits: Limits
    outer_nodes: list[OuterNode]
    students: list[Student]

    @property
    def default_node(self) -> str:
        return str((self.lab.get("outer") or {}).get("node") or "pve")


TOP_KEYS = {"class", "title", "lab", "allocation", "limits", "outerNodes", "students"}
ALLOCATION_KEYS = {"vmidBase": "vmid_base", "vmidBlock": "vmid_block", "supernet": "supernet",
                   "subnetPrefix": "subnet_prefix", "firstHost": "first_host", "network": "network",
                   "userRealm": "user_realm", "role": "role", "hostnamePrefix": "hostname_prefix",
                   "clusterName": "cluster_name", "reuseRetiredSlots": "reuse_retired_slots"}
NETWORK_KEYS = {"mode": "mode", "tagBase": "tag_base", "bridge": "bridge", "zone": "zone", "vnetPrefix": "vnet_prefix"}
LIMIT_KEYS = {"maxNodes": "max_nodes", "maxCores": "max_cores", "maxMemoryGiB": "max_memory_gib",
              "maxDiskGiB": "max_disk_gib", "allowedNodes": "allowed_nodes", "allowedStorages": "allowed_storages"}
NODE_KEYS = {"name": "name", "cores": "cores", "memoryGiB": "memory_gib", "diskGiB": "disk_gib",
             "storage": "storage", "imageStorage": "image_storage"}
STUDENT_KEYS = {"id", "name", "node", "user", "lab"}


class _Problems(list):
    def unknown(self, where: str, raw: dict, allowed) -> None:
        for key in raw:
            if key not in allowed:
                self.append(f"{where}.{key_name(key)}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(value: Any, where: str, problems: list[str], minimum: float, maximum: float, integer: bool = True):
    if not is_number(value) or (integer and not isinstance(value, int)):
        problems.append(f"{where}: expected {'an integer' if integer else 'a number'}, got {show(value)}")
        return None
    if not minimum <= value <= maximum:
        problems.append(f"{where}: {value} is out of range (allowed: {minimum}..{maximum})")
        return None
    return value


def _mapping(raw: Any, where: str, problems: list[str]) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__}")
        return {}
    return raw


def _text(value: Any, where: str, problems: list[str], pattern: re.Pattern, allowed: str,
          max_len: int = 200, min_len: int = 1) -> Optional[str]:
    """A string of the given shape (whole string: a trailing newline is refused), or None with a problem."""
    if isinstance(value, bool) or not isinstance(value, str):
        hint = " (put it in quotes)" if isinstance(value, (bool, int, float)) else ""
        problems.append(f"{where}: expected text ({allowed}), got {show(value)}{hint}")
        return None
    if not (min_len <= len(value) <= max_len) or not pattern.fullmatch(value):
        problems.append(f"{where}: {show(value)} is not allowed: {allowed} ({min_len}-{max_len} characters)")
        return None
    return value


def _str_list(raw: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        problems.append(f"{where}: expected a list of names, got {show(raw)}")
        return ()
    for i, v in enumerate(raw):
        if not (PVE_NODE_RE.fullmatch(v) or STORAGE_ID_RE.fullmatch(v)):
            problems.append(f"{where}[{i}]: {show(v)} is not a node name or storage id")
            return ()
    return tuple(raw)


def _parse_network(raw: Any, problems: _Problems) -> NetworkSettings:
    where = "roster.allocation.network"
    raw = _mapping(raw, where, problems)
    problems.unknown(where, raw, NETWORK_KEYS)
    kw = {NETWORK_KEYS[k]: v for k, v in raw.items() if k in NETWORK_KEYS}
    net = NetworkSettings(**kw)
    if net.mode not in ("vlan", "sdn"):
        problems.append(f"{where}.mode: {show(net.mode)} (allowed: vlan, sdn)")
    if _number(net.tag_base, f"{where}.tagBase", problems, 1, 16_777_215) is None:
        net = dataclasses.replace(net, tag_base=NetworkSettings.tag_base)
    if net.mode == "sdn":
        if net.zone is None or net.zone == "":
            problems.append(f"{where}.zone: missing; mode sdn needs an existing SDN zone (e.g. a VLAN or VXLAN zone)")
        else:
            _text(net.zone, f"{where}.zone", problems, SDN_ID_RE, "an SDN zone id: letters and digits, starting with "
                  "a letter", SDN_ID_MAX, 2)
        if not isinstance(net.vnet_prefix, str) or not VNET_PREFIX_RE.fullmatch(net.vnet_prefix):
            problems.append(f"{where}.vnetPrefix: {show(net.vnet_prefix)} is not allowed: 1-5 lowercase letters/digits, "
                            f"starting with a letter (VNet ids are the prefix + the slot, at most 8 characters)")
    elif net.mode == "vlan" and net.tag_base > 4094:
        problems.append(f"{where}.tagBase: {net.tag_base} is not a VLAN tag (allowed: 1..4094)")
    if net.bridge is not None:
        _text(net.bridge, f"{where}.bridge", problems, BRIDGE_RE, "a bridge name like vmbr1", 15)
    return net


def _parse_allocation(raw: Any, problems: _Problems) -> AllocationSettings:
    where = "roster.allocation"
    raw = _mapping(raw, where, problems)
    problems.unknown(where, raw, ALLOCATION_KEYS)
    kw = {ALLOCATION_KEYS[k]: v for k, v in raw.items() if k in ALLOCATION_KEYS and k != "network"}
    kw["network"] = _parse_network(raw.get("network"), problems)
    alloc = AllocationSettings(**kw)
    bounds = {"vmidBase": (100, 999_000_000), "vmidBlock": (1, 1_000_000), "subnetPrefix": (8, 29),
              "firstHost": (2, 250)}
    for key, (low, high) in bounds.items():
        attr = ALLOCATION_KEYS[key]
        if _number(getattr(alloc, attr), f"{where}.{key}", problems, low, high) is None:
            alloc = dataclasses.replace(alloc, **{attr: getattr(AllocationSettings, attr)})  # go on checking the rest
    supernet = None
    if _text(alloc.supernet, f"{where}.supernet", problems, re.compile(r"[0-9./]+"), "an IPv4 network like 10.100.0.0/16"):
        try:
            supernet = ipaddress.ip_network(alloc.supernet, strict=True)
        except ValueError as exc:
            problems.append(f"{where}.supernet: {show(alloc.supernet)} is not a network CIDR ({exc}); use e.g. 10.100.0.0/16")
    if supernet is not None and alloc.subnet_prefix < supernet.prefixlen:
        problems.append(f"{where}.subnetPrefix: /{alloc.subnet_prefix} is larger than the supernet {supernet}")
    elif supernet is not None and 2 ** (32 - alloc.subnet_prefix) < alloc.first_host + 2:
        problems.append(f"{where}.firstHost: {alloc.first_host} does not fit in a /{alloc.subnet_prefix} subnet")
    _text(alloc.user_realm, f"{where}.userRealm", problems, REALM_RE, "a realm name (e.g. pve, pam, or your LDAP realm)",
          REALM_MAX, 2)
    if _text(alloc.role, f"{where}.role", problems, ROLE_ID_RE, "a PVE role id like PVEVMUser", 64) and \
            alloc.role in ADMIN_ROLES:
        problems.append(f"{where}.role: {show(alloc.role)} is not allowed: a role id, not an admin role; "
                        f"use PVEVMUser or a console-only custom role")
    for key, attr in (("hostnamePrefix", "hostname_prefix"), ("clusterName", "cluster_name")):
        value = getattr(alloc, attr)
        if not _text(value, f"{where}.{key}", problems, re.compile(r"[a-z0-9{}-]+"),
                     "lowercase letters, digits, '-' and the fields {id}, {slot}, {class}", 60):
            continue
        try:
            value.format(id="x", slot=0, **{"class": "c"})
        except (KeyError, IndexError, ValueError, AttributeError):
            problems.append(f"{where}.{key}: {show(value)} may only use the fields {{id}}, {{slot}} and {{class}}")
    if not isinstance(alloc.reuse_retired_slots, bool):
        problems.append(f"{where}.reuseRetiredSlots: expected true or false, got {show(alloc.reuse_retired_slots)}")
    return alloc


def _parse_limits(raw: Any, problems: _Problems) -> Limits:
    where = "roster.limits"
    raw = _mapping(raw, where, problems)
    problems.unknown(where, raw, LIMIT_KEYS)
    kw: dict[str, Any] = {}
    for key, attr in LIMIT_KEYS.items():
        if key not in raw or raw[key] is None:
            continue
        if key.startswith("allowed"):
            kw[attr] = _str_list(raw[key], f"{where}.{key}", problems)
        else:
            kw[attr] = _number(raw[key], f"{where}.{key}", problems, 1, 1_000_000, integer=key in ("maxNodes", "maxCores"))
    return Limits(**kw)


NODE_NAME = (PVE_NODE_RE, "a PVE node name: letters, digits and '-'", MAX_LABEL)
STORAGE_ID = (STORAGE_ID_RE, "a PVE storage id: letters, digits, '-', '_', '.', starting with a letter", 64, 2)


def _parse_outer_nodes(raw: Any, problems: _Problems) -> list[OuterNode]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"roster.outerNodes: expected a list of nodes (name, cores, memoryGiB, diskGiB), got {show(raw)}")
        return []
    nodes, seen = [], set()
    for i, item in enumerate(raw):
        where = f"roster.outerNodes[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = _mapping(item, where, problems)
        problems.unknown(where, item, NODE_KEYS)
        name = _text(item.get("name"), f"{where}.name", problems, *NODE_NAME)
        if name is None:
            continue
        if name in seen:
            problems.append(f"{where}.name: duplicate '{name}'")
            continue
        seen.add(name)
        kw: dict[str, Any] = {"name": name}
        for key in ("cores", "memoryGiB", "diskGiB"):
            if item.get(key) is not None:
                kw[NODE_KEYS[key]] = _number(item[key], f"{where}.{key}", problems, 0, 1_000_000, integer=key == "cores")
        for key in ("storage", "imageStorage"):
            if item.get(key) is not None:
                kw[NODE_KEYS[key]] = _text(item[key], f"{where}.{key}", problems, *STORAGE_ID)
        nodes.append(OuterNode(**kw))
    return nodes


def _lab_field_type(dotted: str) -> Any:
    """The type of lab key `dotted` (e.g. nodes.memoryMiB -> int) in the spec, or None when there is no such key."""
    from ..spec import _camel  # the spec's own key spelling

    tp: Any = LabSpec
    for part in dotted.split("."):
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        match = next((f.name for f in dataclasses.fields(tp) if _camel(f.name) == part), None)
        if match is None:
            return None
        tp = hints[match]
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _cell(text: str, column: str, where: str, problems: list[str]) -> Any:
    """A CSV cell: text, unless the lab key of its column is a number or true/false (declared by the spec)."""
    text = text.strip()
    if text == "":
        return None
    if not column.startswith("lab."):
        return text
    tp = _lab_field_type(column[4:])
    if tp is int:
        if re.fullmatch(r"-?[0-9]{1,18}", text):
            return int(text, 10)
        problems.append(f"{where}: column '{column}': {show(text)} is not a whole number")
        return None
    if tp is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        problems.append(f"{where}: column '{column}': {show(text)} is not true or false")
        return None
    return text


def _set_path(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = value


def students_from_csv(text: str, where: str, problems: list[str]) -> list[dict]:
    """CSV rows -> student mappings as in a YAML roster. Blank cells are left out."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        reader = csv.reader(io.StringIO("\n".join(rows), newline=""), strict=True)
        table = list(reader)
    except csv.Error as exc:
        problems.append(f"{where}: not a valid CSV file ({exc})")
        return []
    header = [h.strip() for h in (table[0] if table else [])]
    if "id" not in header:
        problems.append(f"{where}: the CSV needs a header row with at least 'id' and 'name' (got {', '.join(map(key_name, header)) or 'nothing'})")
        return []
    bad = [h for h in header if h not in STUDENT_KEYS - {"lab"} and not (h.startswith("lab.") and _lab_field_type(h[4:]))]
    for h in bad:
        problems.append(f"{where}: unknown column {show(h)} (allowed: id, name, node, user, lab.<path> e.g. lab.nodes.memoryMiB)")
    if len(set(header)) != len(header):
        problems.append(f"{where}: a column appears twice in the header ({', '.join(header)})")
    if bad or len(set(header)) != len(header):
        return []
    students = []
    for number, row in enumerate(table[1:], start=2):
        row_where = f"{where} row {number}"
        if len(row) > len(header):
            problems.append(f"{row_where}: {len(row)} cells but the header has {len(header)} columns; quote cells "
                            f"that contain a comma")
            continue
        entry: dict[str, Any] = {}
        for column, cell in zip(header, row):
            value = _cell(cell, column, row_where, problems)
            if value is None:
                continue
            if column.startswith("lab."):
                _set_path(entry.setdefault("lab", {}), column[4:], value)
            else:
                entry[column] = value
        students.append(entry)
    return students


def _parse_students(raw: Any, roster_path: Path, problems: _Problems) -> list[Student]:
    if isinstance(raw, str):  # a CSV file next to the roster
        csv_path = (roster_path.parent / raw)
        if not csv_path.is_file():
            problems.append(f"roster.students: the file {show(raw)} does not exist (next to {roster_path.name})")
            return []
        try:
            text = read_text(csv_path, f"roster.students ({raw})")
        except YamlInputError as exc:
            problems.extend(exc.problems)
            return []
        raw = students_from_csv(text, f"roster.students ({raw})", problems)
    if not isinstance(raw, list) or not raw:
        problems.append("roster.students: give at least one student (a list of {id, name}, or a CSV file name)")
        return []
    students, seen = [], {}
    for i, item in enumerate(raw):
        where = f"roster.students[{i}]"
        item = _mapping(item, where, problems)
        problems.unknown(where, item, STUDENT_KEYS)
        sid = item.get("id")
        if isinstance(sid, bool) or not isinstance(sid, str):
            hint = " (put it in quotes: YAML reads 007 as 7)" if isinstance(sid, (int, float)) else ""
            problems.append(f"{where}.id: expected text, got {show(sid)}{hint}")
            continue
        if not STUDENT_ID_RE.fullmatch(sid):
            problems.append(f"{where}.id: {show(sid)} is not allowed: 1-20 lowercase letters, digits and '-'")
            continue
        if sid in seen:
            problems.append(f"{where}.id: duplicate '{sid}' (also roster.students[{seen[sid]}])")
            continue
        seen[sid] = i
        name = item.get("name")
        if name is not None:
            name = _text(name, f"{where}.name", problems, ONE_LINE_RE, "one line of text", 200, 0)
        node = item.get("node")
        if node is not None:
            node = _text(node, f"{where}.node", problems, *NODE_NAME)
        user = item.get("user")
        if user is not None:
            user = _text(user, f"{where}.user", problems, USER_ID_RE, "a PVE user id like aiko@pve or aiko@ldap",
                         USER_ID_MAX, 3)
        lab = _mapping(item.get("lab"), f"{where}.lab", problems)
        students.append(Student(index=i, id=sid, name=(name or "").strip(), node=node, user=user, lab=lab))
    return students


def parse_roster(doc: Any, path: Path) -> Roster:
    problems = _Problems()
    doc = _mapping(doc, "roster", problems)
    problems.unknown("roster", doc, TOP_KEYS)
    class_id = doc.get("class")
    if not isinstance(class_id, str) or not CLASS_ID_RE.fullmatch(class_id):
        problems.append(f"roster.class: {show(class_id)} is not allowed: 1-12 lowercase letters and digits, starting "
                        f"with a letter (it prefixes every stack, pool and user, e.g. ha101)")
        class_id = "class"
    title = doc.get("title") or ""
    if title and _text(title, "roster.title", problems, ONE_LINE_RE, "one line of text", 200) is None:
        title = ""
    lab = _mapping(doc.get("lab"), "roster.lab", problems)
    for key in ("student", "vmidBase"):
        if key in lab:
            problems.append(f"roster.lab.{key}: set by the allocation for each student; leave it out of the class defaults")
    alloc = _parse_allocation(doc.get("allocation"), problems)
    limits = _parse_limits(doc.get("limits"), problems)
    nodes = _parse_outer_nodes(doc.get("outerNodes"), problems)
    students = _parse_students(doc.get("students"), path, problems)
    node_names = [n.name for n in nodes]
    for s in students:
        if s.node and node_names and s.node not in node_names:
            problems.append(f"roster.students[{s.index}].node: '{s.node}' is not an outer node "
                            f"(roster.outerNodes: {', '.join(node_names)})")
    for name in limits.allowed_nodes:
        if node_names and name not in node_names:
            problems.append(f"roster.limits.allowedNodes: '{name}' is not in roster.outerNodes ({', '.join(node_names)})")
    if problems:
        raise RosterError(list(problems))
    return Roster(path=path, class_id=class_id, title=str(title), lab=lab, allocation=alloc, limits=limits,
                  outer_nodes=nodes, students=students)


def load_roster(path: str | Path) -> Roster:
    """Read a YAML roster, or a CSV roster whose leading `#` lines hold the class settings as YAML."""
    path = Path(path)
    if not path.is_file():
        raise RosterError([f"roster: the file '{path}' does not exist" if not path.exists()
                           else f"roster: '{path}' is not a file"])
    try:
        text = read_text(path, f"roster ({path.name})")
        if path.suffix.lower() == ".csv":
            # `# ` lines hold the YAML class settings; `##` lines are plain comments.
            header = "\n".join(line.lstrip()[1:] for line in text.splitlines()
                               if line.lstrip().startswith("#") and not line.lstrip().startswith("##"))
            doc = load_yaml(header, f"roster ({path.name}, the '#' header lines)")
            if doc is None:
                doc = {}
            if not isinstance(doc, dict):
                raise RosterError([f"roster ({path.name}): the '#' header lines must hold the class settings (class, lab, ...)"])
            if "students" in doc:
                raise RosterError([f"roster ({path.name}): 'students' comes from the CSV rows; leave it out of the '#' lines"])
            problems: list[str] = []
            doc["students"] = students_from_csv(text, f"roster ({path.name})", problems)
            if problems:
                raise RosterError(problems)
            return parse_roster(doc, path)
        doc = load_yaml(text, f"roster ({path.name})")
    except YamlInputError as exc:
        raise RosterError(exc.problems) from None
    return parse_roster(doc, path)

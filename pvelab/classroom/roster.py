"""The class roster: class defaults, allocation settings, limits, outer nodes and the students.

A roster is YAML (see examples/classroom.yaml). The student list may also be a CSV file: either
`students: students.csv` in the YAML roster (a path relative to it), or a CSV file given directly whose
leading `#` lines hold the class settings as YAML (`##` lines are plain comments). CSV columns: `id`, `name`, and optionally `node` (pin to
an outer node), `user` (e.g. a realm login `aiko@ldap`) and `lab.<path>` overrides such as
`lab.nodes.memoryMiB` (values read as YAML scalars).

Every mistake is one line naming the roster key, e.g. `roster.students[3].id: duplicate 's03'`; all of
them are reported together (RosterError).
"""
from __future__ import annotations

import csv
import io
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..spec import ADMIN_ROLES, ROLE_RE, SpecError

CLASS_ID_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
STUDENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
STORAGE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
REALM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9._-]*$")
VNET_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,4}$")


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
    class_cache: Optional[Any] = None  # classroom/class_cache.ClassCache: the class's apt-cacher-ng VM

    @property
    def default_node(self) -> str:
        return str((self.lab.get("outer") or {}).get("node") or "pve")


TOP_KEYS = {"class", "title", "lab", "allocation", "limits", "outerNodes", "students", "classCache"}
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
                self.append(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(value: Any, where: str, problems: list[str], minimum: float, maximum: float, integer: bool = True):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        problems.append(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
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


def _str_list(raw: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        problems.append(f"{where}: expected a list of names, got {raw!r}")
        return ()
    return tuple(raw)


def _parse_network(raw: Any, problems: _Problems) -> NetworkSettings:
    where = "roster.allocation.network"
    raw = _mapping(raw, where, problems)
    problems.unknown(where, raw, NETWORK_KEYS)
    kw = {NETWORK_KEYS[k]: v for k, v in raw.items() if k in NETWORK_KEYS}
    net = NetworkSettings(**kw)
    if net.mode not in ("vlan", "sdn"):
        problems.append(f"{where}.mode: '{net.mode}' (allowed: vlan, sdn)")
    _number(net.tag_base, f"{where}.tagBase", problems, 1, 16_777_215)
    if net.mode == "sdn":
        if not net.zone or not isinstance(net.zone, str):
            problems.append(f"{where}.zone: missing; mode sdn needs an existing SDN zone (e.g. a VLAN or VXLAN zone)")
        if not isinstance(net.vnet_prefix, str) or not VNET_PREFIX_RE.match(net.vnet_prefix):
            problems.append(f"{where}.vnetPrefix: '{net.vnet_prefix}' is not allowed: 1-5 lowercase letters/digits, "
                            f"starting with a letter (VNet ids are the prefix + the slot, at most 8 characters)")
    elif net.mode == "vlan" and isinstance(net.tag_base, int) and net.tag_base > 4094:
        problems.append(f"{where}.tagBase: {net.tag_base} is not a VLAN tag (allowed: 1..4094)")
    if net.bridge is not None and not isinstance(net.bridge, str):
        problems.append(f"{where}.bridge: expected a bridge name like vmbr1, got {net.bridge!r}")
    return net


def _parse_allocation(raw: Any, problems: _Problems) -> AllocationSettings:
    where = "roster.allocation"
    raw = _mapping(raw, where, problems)
    problems.unknown(where, raw, ALLOCATION_KEYS)
    kw = {ALLOCATION_KEYS[k]: v for k, v in raw.items() if k in ALLOCATION_KEYS and k != "network"}
    kw["network"] = _parse_network(raw.get("network"), problems)
    alloc = AllocationSettings(**kw)
    _number(alloc.vmid_base, f"{where}.vmidBase", problems, 100, 999_000_000)
    _number(alloc.vmid_block, f"{where}.vmidBlock", problems, 1, 1_000_000)
    _number(alloc.subnet_prefix, f"{where}.subnetPrefix", problems, 8, 29)
    _number(alloc.first_host, f"{where}.firstHost", problems, 2, 250)
    try:
        net = ipaddress.ip_network(str(alloc.supernet), strict=True)
        if net.version != 4:
            problems.append(f"{where}.supernet: '{alloc.supernet}' is IPv6; use an IPv4 network like 10.100.0.0/16")
        elif isinstance(alloc.subnet_prefix, int) and alloc.subnet_prefix < net.prefixlen:
            problems.append(f"{where}.subnetPrefix: /{alloc.subnet_prefix} is larger than the supernet {net}")
    except ValueError as exc:
        problems.append(f"{where}.supernet: '{alloc.supernet}' is not a network CIDR ({exc}); use e.g. 10.100.0.0/16")
    if not isinstance(alloc.user_realm, str) or not REALM_RE.match(alloc.user_realm):
        problems.append(f"{where}.userRealm: '{alloc.user_realm}' is not a realm name (e.g. pve, pam, or your LDAP realm)")
    if not isinstance(alloc.role, str) or not ROLE_RE.match(alloc.role) or alloc.role in ADMIN_ROLES:
        problems.append(f"{where}.role: '{alloc.role}' is not allowed: a role id, not an admin role; "
                        f"use PVEVMUser or a console-only custom role")
    for key, attr in (("hostnamePrefix", "hostname_prefix"), ("clusterName", "cluster_name")):
        value = getattr(alloc, attr)
        try:
            str(value).format(id="x", slot=0, **{"class": "c"})
        except (KeyError, IndexError, ValueError):
            problems.append(f"{where}.{key}: '{value}' may only use the fields {{id}}, {{slot}} and {{class}}")
    if not isinstance(alloc.reuse_retired_slots, bool):
        problems.append(f"{where}.reuseRetiredSlots: expected true or false, got {alloc.reuse_retired_slots!r}")
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


def _parse_outer_nodes(raw: Any, problems: _Problems) -> list[OuterNode]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"roster.outerNodes: expected a list of nodes (name, cores, memoryGiB, diskGiB), got {raw!r}")
        return []
    nodes, seen = [], set()
    for i, item in enumerate(raw):
        where = f"roster.outerNodes[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = _mapping(item, where, problems)
        problems.unknown(where, item, NODE_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not NODE_NAME_RE.match(name):
            problems.append(f"{where}.name: {name!r} is not a node name")
            continue
        if name in seen:
            problems.append(f"{where}.name: duplicate '{name}'")
            continue
        seen.add(name)
        kw = {"name": name}
        for key in ("cores", "memoryGiB", "diskGiB"):
            if item.get(key) is not None:
                kw[NODE_KEYS[key]] = _number(item[key], f"{where}.{key}", problems, 0, 1_000_000, integer=key == "cores")
        for key in ("storage", "imageStorage"):
            if item.get(key) is not None:
                if not isinstance(item[key], str) or not STORAGE_RE.match(item[key]):
                    problems.append(f"{where}.{key}: {item[key]!r} is not a storage id")
                else:
                    kw[NODE_KEYS[key]] = item[key]
        nodes.append(OuterNode(**kw))
    return nodes


def _scalar(text: str) -> Any:
    """A CSV cell as YAML reads it (numbers, true/false), or the text itself."""
    text = text.strip()
    if text == "":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def _set_path(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = value


def students_from_csv(text: str, where: str, problems: list[str]) -> list[dict]:
    """CSV rows -> student mappings as in a YAML roster. Blank cells are left out."""
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(rows)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "id" not in header:
        problems.append(f"{where}: the CSV needs a header row with at least 'id' and 'name' (got {', '.join(header) or 'nothing'})")
        return []
    for h in header:
        if h not in STUDENT_KEYS - {"lab"} and not h.startswith("lab."):
            problems.append(f"{where}: unknown column '{h}' (allowed: id, name, node, user, lab.<path> e.g. lab.nodes.memoryMiB)")
    students = []
    for row in reader:
        entry: dict[str, Any] = {}
        for key, cell in row.items():
            key = (key or "").strip()
            value = _scalar(cell or "")
            if value is None or not key:
                continue
            if key.startswith("lab."):
                _set_path(entry.setdefault("lab", {}), key[4:], value)
            elif key in ("id", "name", "node", "user"):
                entry[key] = str(value)
        students.append(entry)
    return students


def _parse_students(raw: Any, roster_path: Path, problems: _Problems) -> list[Student]:
    if isinstance(raw, str):  # a CSV file next to the roster
        csv_path = (roster_path.parent / raw)
        if not csv_path.exists():
            problems.append(f"roster.students: the file '{raw}' does not exist (next to {roster_path.name})")
            return []
        raw = students_from_csv(csv_path.read_text(encoding="utf-8-sig"), f"roster.students ({raw})", problems)
    if not isinstance(raw, list) or not raw:
        problems.append("roster.students: give at least one student (a list of {id, name}, or a CSV file name)")
        return []
    students, seen = [], {}
    for i, item in enumerate(raw):
        where = f"roster.students[{i}]"
        item = _mapping(item, where, problems)
        problems.unknown(where, item, STUDENT_KEYS)
        sid = item.get("id")
        sid = str(sid) if isinstance(sid, (str, int)) and not isinstance(sid, bool) else sid
        if not isinstance(sid, str) or not STUDENT_ID_RE.match(sid):
            problems.append(f"{where}.id: {sid!r} is not allowed: 1-20 lowercase letters, digits and '-'")
            continue
        if sid in seen:
            problems.append(f"{where}.id: duplicate '{sid}' (also roster.students[{seen[sid]}])")
            continue
        seen[sid] = i
        name = item.get("name", "")
        if not isinstance(name, str):
            problems.append(f"{where}.name: expected text, got {name!r}")
            name = ""
        node = item.get("node")
        if node is not None and (not isinstance(node, str) or not NODE_NAME_RE.match(node)):
            problems.append(f"{where}.node: {node!r} is not a node name")
            node = None
        user = item.get("user")
        if user is not None and (not isinstance(user, str) or not USER_RE.match(user)):
            problems.append(f"{where}.user: {user!r} is not a PVE user id like aiko@pve or aiko@ldap")
            user = None
        lab = _mapping(item.get("lab"), f"{where}.lab", problems)
        students.append(Student(index=i, id=sid, name=name.strip(), node=node, user=user, lab=lab))
    return students


def parse_roster(doc: Any, path: Path) -> Roster:
    problems = _Problems()
    doc = _mapping(doc, "roster", problems)
    problems.unknown("roster", doc, TOP_KEYS)
    class_id = doc.get("class")
    if not isinstance(class_id, str) or not CLASS_ID_RE.match(class_id):
        problems.append(f"roster.class: {class_id!r} is not allowed: 1-12 lowercase letters and digits, starting "
                        f"with a letter (it prefixes every stack, pool and user, e.g. ha101)")
        class_id = "class"
    title = doc.get("title") or ""
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
    from .class_cache import parse_class_cache

    cache = parse_class_cache(doc.get("classCache"), problems)
    if cache is not None and cache.node and node_names and cache.node not in node_names:
        problems.append(f"roster.classCache.node: '{cache.node}' is not in roster.outerNodes ({', '.join(node_names)})")
    if problems:
        raise RosterError(list(problems))
    return Roster(path=path, class_id=class_id, title=str(title), lab=lab, allocation=alloc, limits=limits,
                  outer_nodes=nodes, students=students, class_cache=cache)


def load_roster(path: str | Path) -> Roster:
    """Read a YAML roster, or a CSV roster whose leading `#` lines hold the class settings as YAML."""
    path = Path(path)
    if not path.exists():
        raise RosterError([f"roster: the file '{path}' does not exist"])
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        # `# ` lines hold the YAML class settings; `##` lines are plain comments.
        header = "\n".join(line.lstrip()[1:] for line in text.splitlines()
                           if line.lstrip().startswith("#") and not line.lstrip().startswith("##"))
        try:
            doc = yaml.safe_load(header) or {}
        except yaml.YAMLError as exc:
            raise RosterError([f"roster ({path.name}): the '#' header lines are not valid YAML ({exc})"]) from None
        if not isinstance(doc, dict):
            raise RosterError([f"roster ({path.name}): the '#' header lines must hold the class settings (class, lab, ...)"])
        problems: list[str] = []
        doc["students"] = students_from_csv(text, f"roster ({path.name})", problems)
        if problems:
            raise RosterError(problems)
        return parse_roster(doc, path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RosterError([f"roster ({path.name}): not valid YAML ({exc})"]) from None
    return parse_roster(doc, path)

"""build_plan(evaluation) -> Plan: what the real program declares, arranged for people (and scripts).

Pure analysis of an `Evaluation` (pvelab/evaluate.py: every resource `pulumi up` would register, with its
parent, dependencies, provider and inputs). Nothing is recomputed from the spec: node sizes, addresses and
VMIDs come from the recorded VM inputs, step order from the recorded dependency graph, corosync links from
the cluster steps' own variables. So the plan shows what the program really does, bugs included.

The step graph: every custom resource except providers is a step. A step waits for another when the
recorded graph says so, with the same rules as `Evaluation.depends_on`: waiting for a component means
waiting for everything under it, and a resource waits for whatever its provider waits for. Steps on the
same topological level have no path between them, so they can run at the same time.

Secrets: the plan only ever reads named, non-secret fields (an address, a VMID, a script name), also
from inside objects that are secret as a whole (a VM's cloud-init block holds the root password; a
command's connection holds the SSH key). As a second guard, every renderer passes its output through
`Plan.redact`, which blanks any secret value the evaluation holds (the placeholder token included).
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

from pvelab.evaluate import (MOCK_PRIVATE_KEY, MOCK_ROOT_PASSWORD, PLACEHOLDER_SECRETS, SECRET_SIG, SIG_KEY,
                             Evaluation, Record)

from pvelab.policy_rules import check_lab_sanity
from .durations import HA_FAILOVER_S, STEP_DURATIONS, duration_for

COMMAND = "command:remote:Command"
VM = "proxmoxve:index/vmLegacy:VmLegacy"
POOL = "proxmoxve:ceph/pool:Pool"
HA_RESOURCE = "proxmoxve:index/haresource:Haresource"
HA_RULE = "proxmoxve:index/harule:Harule"
HA_GROUP = "proxmoxve:index/hagroup:Hagroup"
IMAGE = "proxmoxve:download/fileLegacy:FileLegacy"
NESTED_NODE_COMPONENT = "pve-lab:index:NestedPveNode"
NESTED_NODE_TAG = "pve-lab-node"

LOCAL_LANE = "local"
OUTER_LANE = "outer"
# The outer PVE host itself needs memory besides the lab's VMs (README "Sizing": PVE ~2 GiB).
OUTER_HOST_RESERVE_MIB = 2048

# Variables of a node script that may be shown even when the command text is secret as a whole.
SHOWABLE_ENV = frozenset({"CLUSTER_NAME", "EXPECTED_NODES", "EXPECTED_OSDS", "EXPECTED_MONS", "LINK0", "LINK1",
                          "FIRST_IP", "NODE_NAME", "CEPH_RELEASE", "CEPH_NETWORK", "CEPH_CLUSTER_NETWORK",
                          "OSD_SERIALS", "PVE_SUITE"})
SCRIPT_RUN_RE = re.compile(r'bash "\$HOME/pve-lab/([A-Za-z0-9_.-]+)\.sh"')
# The `create` of the per-node step that ships every script (pvelab/node_script.bundle_run_line).
BUNDLE_RE = re.compile(r"^bash -s -- pve-lab-scripts [0-9a-f]+$")
BUNDLE_KIND = "node-scripts"
SECRET_FIELD_RE = re.compile(r"(password|privatekey|token|secret|stdin)", re.IGNORECASE)
MIN_SECRET_LEN = 8


# ------------------------------------------------------------------ the plan's shape (all JSON-friendly)


@dataclass
class Disk:
    interface: str
    size_gib: float
    role: str  # system | data (a Ceph OSD disk) | efi


@dataclass
class NestedNode:
    hostname: str
    vmid: int
    address: str  # CIDR address of the first NIC, from the VM's cloud-init config
    ip: str
    cores: int
    memory_mib: int
    disks: list[Disk]
    component: str  # the NestedPveNode component's name
    vm_resource: str
    link0: Optional[str] = None  # corosync link addresses, from the cluster steps' variables
    link1: Optional[str] = None
    link1_address: Optional[str] = None  # CIDR address of the second NIC, when there is one
    ceph_roles: list[str] = field(default_factory=list)  # MON, MGR, OSD x1
    osd_count: int = 0
    ha_priority: Optional[int] = None  # in the HA node-affinity rule (or PVE 8 group)

    @property
    def disk_gib(self) -> float:
        return sum(d.size_gib for d in self.disks)

    def disks_text(self) -> str:
        return " + ".join(f"{_num(d.size_gib)}" for d in self.disks if d.role != "efi") + " GiB"

    def size_text(self) -> str:
        return f"{self.cores} vCPU, {_gib(self.memory_mib)} RAM, disks {self.disks_text()}"


@dataclass
class Step:
    id: str  # the resource name (unique within a stack)
    title: str
    lane: str
    kind: str  # key into durations.STEP_DURATIONS
    phase: str  # credentials | outer | install | cluster | ceph | ha | other
    resource_type: str
    component: str  # name of the parent component
    detail: str = ""  # e.g. "install-pve.sh prepare"
    waits_for: list[str] = field(default_factory=list)  # every step it directly waits for
    depends_on: list[str] = field(default_factory=list)  # the same without those implied through others
    level: int = 0
    estimate_s: int = 0
    estimate_source: str = ""
    estimate_is_default: bool = False
    start_s: int = 0
    finish_s: int = 0
    critical: bool = False


@dataclass
class Lane:
    id: str
    title: str
    kind: str  # local | outer | node | other
    address: str = ""


@dataclass
class TreeNode:
    name: str
    type: str
    kind: str  # stack | component | resource | provider
    summary: str = ""
    lane: str = ""
    children: list["TreeNode"] = field(default_factory=list)

    def walk(self) -> Iterable["TreeNode"]:
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class Fit:
    what: str  # cpu | memory | disk
    need: float
    have: float
    fits: bool
    note: str = ""


@dataclass
class Totals:
    outer_vms: int
    vcpu: int
    memory_mib: int
    disk_gib: float
    inner_vm_memory_mib: int = 0  # test VMs inside the nested cluster (already inside the nodes' memory)
    host_cores: Optional[int] = None
    host_memory_gib: Optional[float] = None
    host_disk_gib: Optional[float] = None
    fit: list[Fit] = field(default_factory=list)

    @property
    def fits(self) -> Optional[bool]:
        return all(f.fits for f in self.fit) if self.fit else None


@dataclass
class HostCapacity:
    cores: Optional[int] = None
    memory_gib: Optional[float] = None
    disk_gib: Optional[float] = None


@dataclass
class OuterHostInfo:
    node: str = ""
    endpoint: str = ""
    storages: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    image: str = ""


@dataclass
class PoolInfo:
    name: str
    size: Optional[int]
    min_size: Optional[int]
    pg_num: Optional[int]
    node: str
    add_storages: bool


@dataclass
class HaInfo:
    vms: list[dict]  # {vmid, name, memory_mib, disk_gib, storage, node}
    resources: list[str]  # vm:100
    rule: str = ""
    rule_type: str = ""  # node-affinity (PVE 9 rule) or group (PVE 8)
    priorities: dict[str, int] = field(default_factory=dict)
    strict: Optional[bool] = None
    preferred_node: str = ""


@dataclass
class Plan:
    stack: str
    error: Optional[str] = None  # the program's own message, exactly as `pulumi up` shows it
    problems: list[str] = field(default_factory=list)  # the same, one line per problem
    warnings: list[str] = field(default_factory=list)
    # The policy pack's lab sanity rules (policy/, pvelab/policy_rules.py) over the same records.
    policy: list[str] = field(default_factory=list)
    cluster_name: str = ""
    summary: dict[str, Any] = field(default_factory=dict)  # short facts for the header (suite, Ceph release)
    outer: OuterHostInfo = field(default_factory=OuterHostInfo)
    tree: Optional[TreeNode] = None
    nodes: list[NestedNode] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    levels: list[list[str]] = field(default_factory=list)
    totals: Optional[Totals] = None
    critical_path: list[str] = field(default_factory=list)
    estimate_s: int = 0
    network: dict[str, Optional[str]] = field(default_factory=dict)  # link0 / link1 CIDRs
    pool: Optional[PoolInfo] = None
    ha: Optional[HaInfo] = None
    _secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def step(self, step_id: str) -> Step:
        return self._steps_by_id()[step_id]

    def _steps_by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def lane_steps(self, lane: str) -> list[Step]:
        return sorted((s for s in self.steps if s.lane == lane), key=lambda s: (s.level, s.start_s, _natural(s.id)))

    def redact(self, text: str) -> str:
        """Blank every secret value the evaluation held (a last guard; the plan never reads them)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[secret]")
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_secrets", None)
        data["ok"] = self.ok
        if self.totals is not None:
            data["totals"]["fits"] = self.totals.fits
        for node, raw in zip(self.nodes, data["nodes"]):
            raw["disk_gib"] = node.disk_gib
        data["estimate"] = {
            "wall_time_s": self.estimate_s,
            "is_estimate": True,
            "assumes": "every step that may run in parallel does; figures from pvelab/plan/durations.py",
            "ha_failover_drill_s": list(HA_FAILOVER_S),
        }
        return data


# ------------------------------------------------------------------ reading recorded inputs


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def _open(value: Any) -> Any:
    return value.get("value") if _is_secret(value) else value


def reveal(value: Any, *path: Any) -> Any:
    """The non-secret field at `path`, looking through secret wrappers of the objects around it.

    Only for fields that are plainly not secret (an address, a host); a field that is itself a secret
    gives None.
    """
    current = value
    for key in path:
        current = _open(current)
        if isinstance(current, dict):
            current = current.get(key)
        elif isinstance(current, list) and isinstance(key, int) and -len(current) <= key < len(current):
            current = current[key]
        else:
            return None
    if _is_secret(current):
        return None
    return current


def _plain(record: Record, key: str) -> Any:
    value = record.inputs.get(key)
    return None if _is_secret(value) else value


def _int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _gib(mib: float) -> str:
    return f"{_num(round(mib / 1024, 2))} GiB" if mib >= 1024 else f"{_num(mib)} MiB"


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class CommandParts:
    script: str
    args: list[str]
    env: dict[str, str]
    host: Optional[str]
    secret_text: bool


def command_parts(record: Record) -> CommandParts:
    """Script, arguments and variables of a node step, parsed from its command text (node_script.py)."""
    create = record.inputs.get("create")
    secret_text = _is_secret(create)
    text = _open(create) or ""
    text = text if isinstance(text, str) else ""
    host = reveal(record.inputs.get("connection"), "host")
    lines = text.splitlines()
    if len(lines) == 1 and BUNDLE_RE.match(lines[0]):
        return CommandParts(BUNDLE_KIND, [], {}, host if isinstance(host, str) else None, secret_text)
    run_line = next((line for line in reversed(text.splitlines()) if SCRIPT_RUN_RE.search(line)), "")
    match = SCRIPT_RUN_RE.search(run_line)
    script = match.group(1) if match else ""
    env: dict[str, str] = {}
    args: list[str] = []
    try:
        words = shlex.split(run_line)
    except ValueError:
        words = []
    if words and words[0] == "env":
        words = words[1:]
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if len(words) >= 2 and words[0] == "bash":
        args = words[2:]
    if secret_text:  # only what is plainly not secret
        env = {k: v for k, v in env.items() if k in SHOWABLE_ENV}
        args = []
    return CommandParts(script, args, env, host if isinstance(host, str) else None, secret_text)


def _endpoint_host(url: Any) -> Optional[str]:
    if not isinstance(url, str):
        return None
    try:
        return urlparse(url).hostname
    except ValueError:
        return None


# ------------------------------------------------------------------ secrets (for the redaction guard)


def secret_values(evaluation: Evaluation, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every secret string the evaluation holds: secret fields of inputs, secret outputs, placeholders."""
    found: set[str] = set()

    def add(value: Any) -> None:
        if isinstance(value, str):
            for candidate in [value, value.strip(), *value.splitlines(), *(value.split("=", 1)[1:])]:
                candidate = candidate.strip()
                if len(candidate) >= MIN_SECRET_LEN:
                    found.add(candidate)
        elif isinstance(value, dict):
            for v in value.values():
                add(v)
        elif isinstance(value, list):
            for v in value:
                add(v)

    def visit(value: Any, key: str, inside_secret: bool) -> None:
        if _is_secret(value):
            inner = value.get("value")
            if not isinstance(inner, (dict, list)):
                add(inner)  # a secret leaf: all of it
            visit(inner, key, True)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, str(k), inside_secret)
        elif isinstance(value, list):
            for v in value:
                visit(v, key, inside_secret)
        elif inside_secret and SECRET_FIELD_RE.search(key) and not key.lower().endswith("keys"):
            add(value)

    for record in evaluation.records:
        visit(record.inputs, "", False)
    for exported in evaluation.stack_outputs.values():
        if exported.secret:
            add(exported.value)
    for value in [*PLACEHOLDER_SECRETS.values(), MOCK_ROOT_PASSWORD, MOCK_PRIVATE_KEY, *extra]:
        add(value)
    # Longest first, so a value is blanked whole before any of its parts.
    return tuple(sorted(found, key=len, reverse=True))


# ------------------------------------------------------------------ the step graph


class _Graph:
    def __init__(self, evaluation: Evaluation):
        self.records = evaluation.records
        self.by_urn = {r.urn: r for r in self.records}
        self.children: dict[str, list[Record]] = defaultdict(list)
        for r in self.records:
            self.children[r.parent].append(r)

    @staticmethod
    def is_provider(r: Record) -> bool:
        return r.type.startswith("pulumi:providers:")

    def is_step(self, r: Record) -> bool:
        return r.custom and not self.is_provider(r)

    @staticmethod
    def provider_urn(r: Record) -> Optional[str]:
        return r.provider.rsplit("::", 1)[0] if r.provider else None

    def raw_deps(self, r: Record) -> list[str]:
        deps = list(r.dependencies)
        provider = self.provider_urn(r)
        if provider:
            deps.append(provider)
        return deps

    def step_preds(self, r: Record) -> set[str]:
        """The steps `r` directly waits for, looking through components (children) and providers."""
        out: set[str] = set()
        seen: set[str] = set()
        stack = self.raw_deps(r)
        while stack:
            urn = stack.pop()
            if urn in seen:
                continue
            seen.add(urn)
            dep = self.by_urn.get(urn)
            if dep is None:
                continue
            if self.is_step(dep):
                out.add(urn)
                continue
            stack.extend(self.raw_deps(dep))
            if not dep.custom:
                stack.extend(c.urn for c in self.children.get(urn, ()))
        return out


def _topological(preds: dict[str, set[str]]) -> list[str]:
    order, indegree, users = [], {k: len(v) for k, v in preds.items()}, defaultdict(list)
    for k, ps in preds.items():
        for p in ps:
            users[p].append(k)
    ready = sorted((k for k, d in indegree.items() if d == 0), key=_natural)
    while ready:
        k = ready.pop(0)
        order.append(k)
        for u in users[k]:
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
    if len(order) != len(preds):  # cannot happen with a real Pulumi graph; keep the rest visible anyway
        order += sorted(set(preds) - set(order), key=_natural)
    return order


def _reduce(order: list[str], preds: dict[str, set[str]]) -> dict[str, set[str]]:
    """Transitive reduction: drop a dependency that is already implied through another one."""
    bit = {k: 1 << i for i, k in enumerate(order)}
    ancestors: dict[str, int] = {}
    reduced: dict[str, set[str]] = {}
    for k in order:
        mask = 0
        for p in preds[k]:
            mask |= ancestors.get(p, 0) | bit[p]
        ancestors[k] = mask
        keep = set()
        for p in preds[k]:
            implied = any(q != p and ancestors.get(q, 0) & bit[p] for q in preds[k])
            if not implied:
                keep.add(p)
        reduced[k] = keep
    return reduced


# ------------------------------------------------------------------ titles and phases

COMMAND_TITLES = {
    "install-pve:prepare": ("install", "install PVE: prepare"),
    "install-pve:reboot": ("install", "install PVE: reboot"),
    "install-pve:finish": ("install", "install PVE: proxmox-ve"),
    "install-pve:ready": ("install", "install PVE: ready"),
    "node-network": ("install", "network: address on vmbr0"),
    "install-pve:prepare@clone": ("install", "clone: /etc/hosts (nothing to install)"),
    "node-firstboot:identity": ("install", "clone: own name, machine-id, SSH keys"),
    "node-firstboot:pve": ("install", "clone: pmxcfs + node certificate"),
    "node-firstboot:ready": ("install", "clone: ready (identity, API)"),
    "apt-proxy": ("install", "apt proxy setting (aptProxy)"),
    "node-seal": ("template", "seal the builder (no identity left), power off"),
    "cluster-create": ("cluster", "pvecm create {CLUSTER_NAME}"),
    "cluster-fingerprint": ("cluster", "read join fingerprint"),
    "node-scripts": ("install", "ship the node scripts"),
    "node-evict": ("cluster", "remove {NODE_NAME}'s old membership if its VM was rebuilt"),
    "node-restart-wait": ("restart", "wait for {NODE_NAME}: quorum, Ceph, HA"),
    "cluster-join": ("cluster", "pvecm add (join as node {EXPECTED_NODES})"),
    "cluster-quorum": ("cluster", "wait quorum ({EXPECTED_NODES} nodes)"),
    "ceph-install": ("ceph", "pveceph install {CEPH_RELEASE}"),
    "ceph-init": ("ceph", "pveceph init"),
    "ceph-mon": ("ceph", "Ceph MON + MGR"),
    "ceph-osd": ("ceph", "Ceph OSD x{osd_count}"),
    "ceph-health": ("ceph", "wait Ceph HEALTH_OK"),
}


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def _image_name(vm: Record) -> str:
    """The file a test VM's disk is imported from (`storage:import/<file>`), or 'its image' while unknown."""
    source = ((_plain(vm, "disks") or [{}])[0] or {}).get("importFrom")
    return source.rsplit("/", 1)[-1] if isinstance(source, str) else "its image"


def _resource_title(r: Record, outer_vm: bool, parent: Optional[Record] = None) -> tuple[str, str, str]:
    """(kind, phase, title) of a non-command resource."""
    t = r.type
    if t == VM and "pve-lab-template" in (_plain(r, "tags") or []):
        return "vm:builder", "template", f"template builder VM {_plain(r, 'name') or ''}".strip()
    if t == "command:local:Command" and r.name.endswith("-convert"):
        return "outer-template", "template", "make the builder a template (outer API)"
    if t == VM:
        vmid, name = _int(_plain(r, "vmId")), _plain(r, "name") or ""
        if outer_vm:
            return "vm:outer", "outer", f"create VM {vmid} {name}".strip()
        if _plain(r, "initialization"):  # ha.testVmImage: its disk is imported from the image
            return "vm:inner@image", "ha", f"test VM {vmid} {name} (boots {_image_name(r)})".strip()
        return "vm:inner", "ha", f"test VM {vmid} {name}".strip()
    if t == IMAGE and parent is not None and parent.type == "pve-lab:index:HaTestVms":
        return "image:inner", "ha", f"download {_plain(r, 'fileName') or 'image'} on {_plain(r, 'nodeName')}"
    if t == IMAGE:
        return t, "outer", f"download {_plain(r, 'fileName') or 'image'}"
    if t == "proxmoxve:storage/directoryLegacy:DirectoryLegacy":
        return t, "ha", f"import storage {_plain(r, 'resourceId')} on {', '.join(_plain(r, 'nodes') or [])}"
    if t == "random:index/randomPassword:RandomPassword":
        # lab-credentials-root-password -> "root password"; lab-student-password -> "student password"
        prefix = f"{parent.name}-" if parent is not None and r.name.startswith(f"{parent.name}-") else ""
        what = r.name[len(prefix):].replace("-", " ")
        if what == "password" and parent is not None:
            what = f"{parent.name.rsplit('-', 1)[-1]} password"
        return t, "credentials", f"new {what}"
    if t == "command:local:Command":  # the rolling restart's outer half (components/rolling_restart.py)
        # its environment is a secret (the outer token): the node comes from the resource name
        return t, "restart", f"apply pending changes of {r.name.rsplit('-', 1)[-1]}'s VM (reboot only if any)"
    if t == "tls:index/privateKey:PrivateKey":
        return t, "credentials", f"new SSH key ({_plain(r, 'algorithm') or 'key'})"
    if t == POOL:
        return t, "ceph", f"Ceph pool {_plain(r, 'name')} (size {_int(_plain(r, 'size'))}/{_int(_plain(r, 'minSize'))})"
    if t == HA_RESOURCE:
        return t, "ha", f"HA resource {_plain(r, 'resourceId')}"
    if t == HA_RULE:
        return t, "ha", f"HA rule {_plain(r, 'rule')}"
    if t == HA_GROUP:
        return t, "ha", f"HA group {_plain(r, 'group')}"
    # a classroom student's corner of the outer host (components/student_access.py)
    if t == "proxmoxve:index/poolLegacy:PoolLegacy":
        return t, "outer", f"resource pool {_plain(r, 'poolId')}"
    if t == "proxmoxve:index/userLegacy:UserLegacy":
        return t, "outer", f"user {_plain(r, 'userId')}"
    if t == "proxmoxve:index/acl:Acl":
        return t, "outer", f"ACL {_plain(r, 'roleId')} on {_plain(r, 'path')}"
    if t == "proxmoxve:sdn/vnet:Vnet":
        return t, "outer", f"SDN VNet {_plain(r, 'resourceId')} (tag {_int(_plain(r, 'tag'))})"
    if t == "proxmoxve:sdn/applier:Applier":
        return t, "outer", "SDN apply" if _plain(r, "onCreate") is not False else "SDN apply (on destroy)"
    return t, "other", t.rsplit(":", 1)[-1]


# ------------------------------------------------------------------ build


def split_problems(message: str) -> list[str]:
    """The program's validation message (SpecError.render) back into one line per problem."""
    lines = [line for line in message.splitlines() if line.strip()]
    if lines and lines[0].endswith("problem(s) in the lab config:"):
        return [line[2:] if line.startswith("- ") else line for line in lines[1:]]
    return lines


def build_plan(evaluation: Evaluation, *, stack: str = "lab", host: Optional[HostCapacity] = None,
               extra_secrets: Iterable[str] = ()) -> Plan:
    """Arrange an evaluation for `plan`: tree, nodes, steps per node, levels, totals, critical path."""
    plan = Plan(stack=stack, warnings=list(evaluation.logs),
                _secrets=secret_values(evaluation, extra_secrets))
    if evaluation.error is not None:
        plan.error = evaluation.error
        plan.problems = split_problems(evaluation.error)
        return plan

    graph = _Graph(evaluation)
    records = evaluation.records
    plan.policy = [str(v) for v in check_lab_sanity(records)]

    # --- the nested nodes: VMs under a NestedPveNode component (or tagged as one)
    nested_vms = [r for r in records if r.type == VM and (
        (graph.by_urn.get(r.parent) and graph.by_urn[r.parent].type == NESTED_NODE_COMPONENT)
        or NESTED_NODE_TAG in (_plain(r, "tags") or []))]
    nested_vms.sort(key=lambda r: (_int(_plain(r, "vmId")) or 0, _natural(r.name)))
    nested_urns = {r.urn for r in nested_vms}
    outer_provider = graph.provider_urn(nested_vms[0]) if nested_vms else None

    nodes: list[NestedNode] = []
    for r in nested_vms:
        init = r.inputs.get("initialization")
        address = reveal(init, "ipConfigs", 0, "ipv4", "address") or ""
        link1_address = reveal(init, "ipConfigs", 1, "ipv4", "address")
        cpu = _plain(r, "cpu") or {}
        disks = []
        for d in _plain(r, "disks") or []:
            role = "system" if d.get("importFrom") else ("data" if d.get("serial") else "disk")
            disks.append(Disk(d.get("interface", ""), float(d.get("size") or 0), role))
        if _plain(r, "efiDisk"):
            disks.append(Disk("efidisk0", 0.0, "efi"))  # 4 MiB: not worth counting
        parent = graph.by_urn.get(r.parent)
        nodes.append(NestedNode(
            hostname=_plain(r, "name") or r.name, vmid=_int(_plain(r, "vmId")) or 0,
            address=address, ip=address.split("/")[0],
            cores=(_int(cpu.get("cores")) or 1) * (_int(cpu.get("sockets")) or 1),
            memory_mib=_int((_plain(r, "memory") or {}).get("dedicated")) or 0,
            disks=disks, component=parent.name if parent else "", vm_resource=r.name,
            link1_address=link1_address if isinstance(link1_address, str) else None,
        ))
    plan.nodes = nodes
    node_by_ip = {n.ip: n.hostname for n in nodes if n.ip}
    node_names = {n.hostname for n in nodes}

    # --- outer host facts, from the outer VMs and the outer provider
    outer_vms = [r for r in records if r.type == VM and outer_provider and graph.provider_urn(r) == outer_provider]
    if nested_vms:
        first = nested_vms[0]
        plan.outer.node = _plain(first, "nodeName") or ""
        plan.outer.storages = sorted({d.get("datastoreId") for r in outer_vms for d in (_plain(r, "disks") or [])
                                      if d.get("datastoreId")})
        plan.outer.bridges = sorted({n.get("bridge") for r in outer_vms for n in (_plain(r, "networkDevices") or [])
                                     if n.get("bridge")})
        plan.outer.image = next((d.get("importFrom") for d in (_plain(first, "disks") or []) if d.get("importFrom")), "")
    provider_record = graph.by_urn.get(outer_provider or "")
    if provider_record is not None:
        plan.outer.endpoint = _plain(provider_record, "endpoint") or ""

    # --- lanes and steps
    lanes = [Lane(LOCAL_LANE, "this machine", "local"),
             Lane(OUTER_LANE, f"outer host {plan.outer.node}".strip(), "outer", _endpoint_host(plan.outer.endpoint) or "")]
    lanes += [Lane(n.hostname, n.hostname, "node", n.ip) for n in nodes]
    extra_lanes: dict[str, Lane] = {}

    def lane_for(r: Record, parts: Optional[CommandParts]) -> str:
        if parts is not None:
            if parts.host in node_by_ip:
                return node_by_ip[parts.host]
            key = f"host {parts.host or '?'}"
            extra_lanes.setdefault(key, Lane(key, key, "other", parts.host or ""))
            return key
        if not r.type.startswith("proxmoxve:"):
            return LOCAL_LANE
        provider = graph.provider_urn(r)
        if provider == outer_provider:
            return (_plain(r, "name") or OUTER_LANE) if r.urn in nested_urns else OUTER_LANE
        node_name = _plain(r, "nodeName")
        if node_name in node_names:
            return node_name
        prov = graph.by_urn.get(provider or "")
        host_ip = _endpoint_host(_plain(prov, "endpoint")) if prov else None
        if host_ip in node_by_ip:
            return node_by_ip[host_ip]
        return OUTER_LANE

    step_records = [r for r in records if graph.is_step(r)]
    steps: dict[str, Step] = {}
    parts_by_id: dict[str, CommandParts] = {}
    urn_to_id = {r.urn: r.name for r in step_records}
    # Steps of a node cloned from the golden template take their own figures where the table has them.
    cloned = {_plain(r, "name") or r.name for r in nested_vms if _plain(r, "clone")}
    for r in step_records:
        parent = graph.by_urn.get(r.parent)
        component = parent.name if parent else ""
        units = 1
        if r.type == COMMAND:
            parts = command_parts(r)
            parts_by_id[r.name] = parts
            kind = f"{parts.script}:{parts.args[0]}" if parts.args else parts.script
            if parts.script == "ceph-osd":
                units = len(parts.env.get("OSD_SERIALS", "").split()) or 1
            phase, template = COMMAND_TITLES.get(kind, ("other", kind or r.name))
            title = template.format_map(_Missing(parts.env, osd_count=units))
            detail = " ".join([f"{parts.script}.sh", *parts.args]) if parts.script else ""
            if parts.script == BUNDLE_KIND:
                detail = "components/scripts/*.sh -> ~/pve-lab/"
            lane = lane_for(r, parts)
        else:
            kind, phase, title = _resource_title(r, r.urn in nested_urns, parent)
            detail = r.type
            lane = lane_for(r, None)
        if lane in cloned and f"{kind}@clone" in STEP_DURATIONS:
            kind = f"{kind}@clone"
            if kind in COMMAND_TITLES:
                phase, template = COMMAND_TITLES[kind]
                title = template.format_map(_Missing(parts.env, osd_count=units))
        seconds, entry, is_default = duration_for(kind, units)
        steps[r.name] = Step(id=r.name, title=title, lane=lane, kind=kind, phase=phase, resource_type=r.type,
                             component=component, detail=detail, estimate_s=seconds,
                             estimate_source=entry.source, estimate_is_default=is_default)

    _creator_join(steps)

    preds = {urn_to_id[r.urn]: {urn_to_id[u] for u in graph.step_preds(r)} for r in step_records}
    order = _topological(preds)
    reduced = _reduce(order, preds)
    for k in order:
        s = steps[k]
        s.waits_for = sorted(preds[k], key=_natural)
        s.depends_on = sorted(reduced[k], key=_natural)
        s.level = 1 + max((steps[p].level for p in preds[k]), default=-1)
        s.start_s = max((steps[p].finish_s for p in preds[k]), default=0)
        s.finish_s = max(s.start_s + s.estimate_s, _settled_s(s, [steps[p] for p in preds[k]]))
        s.estimate_s = s.finish_s - s.start_s  # what the step itself waits, as the timeline shows it
    by_level: dict[int, list[str]] = defaultdict(list)
    for s in steps.values():
        by_level[s.level].append(s.id)
    plan.levels = [sorted(by_level[i], key=lambda k: (_lane_rank(lanes, extra_lanes, steps[k].lane), _natural(k)))
                   for i in range(len(by_level))]

    # critical path: from the step that finishes last, back through the predecessor that finishes last
    if steps:
        # max() keeps the first of equals: iterate in natural name order so ties resolve the same every run
        last = max((steps[k] for k in sorted(steps, key=_natural)), key=lambda s: (s.finish_s, s.level))
        path = [last.id]
        while preds[path[-1]]:
            path.append(max(sorted(preds[path[-1]], key=_natural), key=lambda p: (steps[p].finish_s, steps[p].level)))
        plan.critical_path = list(reversed(path))
        plan.estimate_s = last.finish_s
        for k in plan.critical_path:
            steps[k].critical = True

    plan.lanes = lanes + sorted(extra_lanes.values(), key=lambda lane: _natural(lane.id))
    plan.lanes = [lane for lane in plan.lanes if lane.kind == "node" or any(s.lane == lane.id for s in steps.values())]
    plan.steps = sorted(steps.values(), key=lambda s: (s.level, _lane_rank(lanes, extra_lanes, s.lane), _natural(s.id)))

    _ceph_and_links(plan, parts_by_id)
    _pool_and_ha(plan, records)
    plan.cluster_name = next((p.env.get("CLUSTER_NAME", "") for p in parts_by_id.values()
                              if p.script == "cluster-create"), "")
    suite = next((p.env.get("PVE_SUITE") for p in parts_by_id.values() if p.env.get("PVE_SUITE")), None)
    release = next((p.env.get("CEPH_RELEASE") for p in parts_by_id.values() if p.env.get("CEPH_RELEASE")), None)
    plan.summary = {"nodes": len(nodes), "debian_suite": suite, "ceph_release": release,
                    "pve_version": {"trixie": 9, "bookworm": 8}.get(suite or "")}
    plan.totals = _totals(outer_vms, records, outer_provider, graph, host)
    plan.tree = _tree(evaluation, graph, steps, plan, stack)
    return plan


def _creator_join(steps: dict[str, Step]) -> None:
    """The join step of the node that ran `pvecm create` is a membership check on a first build."""
    creator_lanes = {s.lane for s in steps.values() if s.kind.split("@")[0] == "cluster-create"}
    for s in steps.values():
        if s.kind.split("@")[0] == "cluster-join" and s.lane in creator_lanes:
            s.kind = "cluster-join@creator"
            s.estimate_s, entry, s.estimate_is_default = duration_for(s.kind)
            s.estimate_source = entry.source


def _settled_s(step: Step, preds: list[Step]) -> int:
    """When a polling step's condition holds, from the predecessors it converges after (0: not a poll)."""
    entry = STEP_DURATIONS.get(step.kind)
    if entry is None or not entry.settles_after:
        return 0
    after = [p.finish_s for p in preds if p.kind.split("@")[0] in entry.settles_after]
    return max(after) + entry.settle_s if after else 0


def _lane_rank(lanes: list[Lane], extra: dict[str, Lane], lane_id: str) -> int:
    ids = [lane.id for lane in lanes] + sorted(extra, key=_natural)
    return ids.index(lane_id) if lane_id in ids else len(ids)


def _ceph_and_links(plan: Plan, parts_by_id: dict[str, CommandParts]) -> None:
    by_host = {n.hostname: n for n in plan.nodes}
    for step in plan.steps:
        parts = parts_by_id.get(step.id)
        node = by_host.get(step.lane)
        if parts is None or node is None:
            continue
        if parts.script in ("cluster-create", "cluster-join"):
            node.link0 = parts.env.get("LINK0") or node.link0
            node.link1 = parts.env.get("LINK1") or node.link1
        elif parts.script == "ceph-mon":
            node.ceph_roles += [r for r in ("MON", "MGR") if r not in node.ceph_roles]
        elif parts.script == "ceph-osd":
            node.osd_count += len(parts.env.get("OSD_SERIALS", "").split()) or 1
    for node in plan.nodes:
        if node.osd_count:
            node.ceph_roles.append(f"OSD x{node.osd_count}")
    plan.network = {"link0": _network_of(plan.nodes[0].address) if plan.nodes else None,
                    "link1": _network_of(plan.nodes[0].link1_address) if plan.nodes and any(
                        n.link1 for n in plan.nodes) else None}


def _network_of(address: Optional[str]) -> Optional[str]:
    if not address:
        return None
    try:
        return str(ipaddress.ip_interface(address).network)
    except ValueError:
        return None


def _pool_and_ha(plan: Plan, records: list[Record]) -> None:
    pools = [r for r in records if r.type == POOL]
    if pools:
        p = pools[0]
        plan.pool = PoolInfo(name=_plain(p, "name") or "", size=_int(_plain(p, "size")),
                             min_size=_int(_plain(p, "minSize")), pg_num=_int(_plain(p, "pgNum")),
                             node=_plain(p, "nodeName") or "", add_storages=bool(_plain(p, "addStorages")))
    node_names = {n.hostname for n in plan.nodes}
    inner_vms = [r for r in records if r.type == VM and plan.steps and
                 any(s.id == r.name and s.kind == "vm:inner" for s in plan.steps)]
    resources = [r for r in records if r.type == HA_RESOURCE]
    rules = [r for r in records if r.type in (HA_RULE, HA_GROUP)]
    if not (inner_vms or resources):
        return
    vms = []
    for r in sorted(inner_vms, key=lambda r: _int(_plain(r, "vmId")) or 0):
        disks = _plain(r, "disks") or []
        vms.append({"vmid": _int(_plain(r, "vmId")), "name": _plain(r, "name") or r.name,
                    "memory_mib": _int((_plain(r, "memory") or {}).get("dedicated")),
                    "disk_gib": sum(float(d.get("size") or 0) for d in disks),
                    "storage": next((d.get("datastoreId") for d in disks if d.get("datastoreId")), ""),
                    "node": _plain(r, "nodeName") or ""})
    ha = HaInfo(vms=vms, resources=sorted(str(_plain(r, "resourceId")) for r in resources))
    if rules:
        rule = rules[0]
        ha.rule = _plain(rule, "rule") or _plain(rule, "group") or rule.name
        ha.rule_type = _plain(rule, "type") or "group"
        ha.priorities = {str(k): _int(v) or 0 for k, v in sorted((_plain(rule, "nodes") or {}).items(),
                                                                   key=lambda kv: _natural(kv[0]))}
        strict = _plain(rule, "strict")
        restricted = _plain(rule, "restricted")
        ha.strict = bool(strict if strict is not None else restricted) if (strict, restricted) != (None, None) else None
    if ha.priorities:
        top = max(ha.priorities.values())
        ha.preferred_node = next(k for k, v in ha.priorities.items() if v == top)
    elif vms:
        ha.preferred_node = vms[0]["node"]
    for n in plan.nodes:
        if n.hostname in ha.priorities:
            n.ha_priority = ha.priorities[n.hostname]
    if ha.preferred_node and ha.preferred_node not in node_names:
        plan.warnings.append(f"HA preferred node {ha.preferred_node} is not one of the nested nodes")
    plan.ha = ha


def _totals(outer_vms: list[Record], records: list[Record], outer_provider: Optional[str], graph: _Graph,
            host: Optional[HostCapacity]) -> Totals:
    vcpu = memory = 0
    disk = 0.0
    for r in outer_vms:
        cpu = _plain(r, "cpu") or {}
        vcpu += (_int(cpu.get("cores")) or 1) * (_int(cpu.get("sockets")) or 1)
        memory += _int((_plain(r, "memory") or {}).get("dedicated")) or 0
        disk += sum(float(d.get("size") or 0) for d in (_plain(r, "disks") or []))
    inner = sum(_int((_plain(r, "memory") or {}).get("dedicated")) or 0
                for r in records if r.type == VM and graph.provider_urn(r) != outer_provider)
    totals = Totals(outer_vms=len(outer_vms), vcpu=vcpu, memory_mib=memory, disk_gib=disk,
                    inner_vm_memory_mib=inner)
    if host is not None:
        totals.host_cores, totals.host_memory_gib, totals.host_disk_gib = host.cores, host.memory_gib, host.disk_gib
        if host.cores is not None:
            # PVE refuses to start a VM with more vCPUs than the host has; sharing cores between VMs is allowed.
            largest = max(((_int((_plain(r, "cpu") or {}).get("cores")) or 1) *
                           (_int((_plain(r, "cpu") or {}).get("sockets")) or 1) for r in outer_vms), default=0)
            notes = []
            if largest > host.cores:
                notes.append(f"a VM has {largest} vCPU, more than the host's {host.cores} cores: it cannot start")
            if vcpu > host.cores:
                notes.append(f"{vcpu / host.cores:.1f}x over-committed: allowed, but installs and Ceph run slower")
            totals.fit.append(Fit("cpu", vcpu, host.cores, largest <= host.cores, "; ".join(notes)))
        if host.memory_gib is not None:
            need_gib = (memory + OUTER_HOST_RESERVE_MIB) / 1024
            totals.fit.append(Fit("memory", round(need_gib, 2), host.memory_gib, need_gib <= host.memory_gib,
                                  f"the VMs' {_gib(memory)} + ~{_gib(OUTER_HOST_RESERVE_MIB)} for the outer PVE itself"))
        if host.disk_gib is not None:
            totals.fit.append(Fit("disk", disk, host.disk_gib, disk <= host.disk_gib,
                                  "every VM disk at full size; thin storage allocates less at first"))
    return totals


def _tree(evaluation: Evaluation, graph: _Graph, steps: dict[str, Step], plan: Plan, stack: str) -> TreeNode:
    nodes_by_component = {n.component: n for n in plan.nodes}
    nodes_by_vm = {n.vm_resource: n for n in plan.nodes}
    order_key: dict[str, tuple] = {}

    def key(r: Record) -> tuple:
        if r.urn in order_key:
            return order_key[r.urn]
        if r.name in steps:
            k = (steps[r.name].level, _natural(r.name))
        elif graph.is_provider(r):
            level = max((steps[graph.by_urn[u].name].level for u in graph.step_preds(r)), default=-1) + 1
            k = (level, _natural(r.name))
        else:
            kids = graph.children.get(r.urn, [])
            k = (min((key(c)[0] for c in kids), default=10**6), _natural(r.name))
        order_key[r.urn] = k
        return k

    def summary(r: Record) -> tuple[str, str]:
        if r.name in nodes_by_component:
            n = nodes_by_component[r.name]
            return "component", f"{n.hostname}  {n.address}  VMID {n.vmid}  {n.size_text()}"
        if graph.is_provider(r):
            endpoint = _plain(r, "endpoint") or "default"
            return "provider", f"API {endpoint}"
        if not r.custom:
            return "component", ""
        s = steps[r.name]
        if r.name in nodes_by_vm:
            n = nodes_by_vm[r.name]
            return "resource", f"{s.title} on {plan.outer.node}: {n.hostname} {n.address}, {n.size_text()}"
        lane = next((lane.title for lane in plan.lanes if lane.id == s.lane), s.lane)
        where = "" if s.lane == LOCAL_LANE else f" @ {lane}"
        return "resource", f"{s.title}{where}"

    def build(r: Record) -> TreeNode:
        kind, text = summary(r)
        node = TreeNode(name=r.name, type=r.type, kind=kind, summary=text,
                        lane=steps[r.name].lane if r.name in steps else "")
        node.children = [build(c) for c in sorted(graph.children.get(r.urn, []), key=key)]
        return node

    roots = [r for r in evaluation.records if r.parent not in graph.by_urn]
    return TreeNode(name=stack, type="pulumi:pulumi:Stack", kind="stack",
                    summary=f"stack {stack}" + (f", cluster {plan.cluster_name}" if plan.cluster_name else ""),
                    children=[build(r) for r in sorted(roots, key=key)])

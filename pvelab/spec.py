"""The lab's typed spec: read from the `pve-lab:lab` config object, validated before any resource exists.

Pure Python (no Pulumi import) so that validation, `plan`, the classroom tools and the tests share it.
Every mistake becomes one line naming the config key and what is allowed; all mistakes are reported
together so a user fixes their stack file in one pass.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .formats import (
    BRIDGE_RE, CHECKSUM_HEX_LEN, CONFIG_ID_RE, HEX_RE, HOSTNAME_RE, IMPORT_FILE_RE, MAX_FQDN, MAX_LABEL, MAX_PG_NUM,
    MAX_VM_MEMORY_MIB, POOL_ID_RE, PVE_NODE_RE, PVE_TAG_RE, ROLE_ID_RE, SDN_ID_MAX, SDN_ID_RE, STORAGE_ID_RE,
    TEST_VM_CHECKSUMS, UNIX_USER_RE, USER_ID_MAX, USER_ID_RE, Bounds, Choice, HttpsUrl, Text, key_name, show,
)

CONFIG_NAMESPACE = "pve-lab"
CONFIG_KEY = f"{CONFIG_NAMESPACE}:lab"

# Memory budget per nested node, in MiB (see README "Sizing"): PVE itself, one Ceph MON + MGR, each OSD.
PVE_BASE_MIB = 2048
CEPH_MON_MGR_MIB = 1024
MIN_OSD_MEMORY_TARGET_MIB = 896  # Ceph refuses a smaller osd_memory_target
MAX_CLUSTER_NAME = 15  # pve-cluster API2/ClusterConfig.pm: clustername maxLength 15
DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
PVE_VMID_MIN, PVE_VMID_MAX = 100, 999_999_999
CEPH_RELEASES = {9: ("squid", "tentacle"), 8: ("reef", "squid")}
CEPH_REPOSITORIES = ("no-subscription", "enterprise", "test")


class SpecError(Exception):
    """All the problems found in one config, each naming its key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{len(self.problems)} problem(s) in the lab config:" if len(self.problems) > 1 else ""
        lines = [head] if head else []
        lines += [f"- {p}" if head else p for p in self.problems]
        return "\n".join(lines)


def _key(path: str) -> str:
    return f"{CONFIG_KEY}.{path}" if path else CONFIG_KEY


# ---------------------------------------------------------------- the typed spec (config shape)
# Field names are snake_case here and camelCase in YAML; `_wire()` maps between them.


@dataclass(frozen=True)
class OuterHost:
    endpoint: str = ""
    insecure: bool = False
    node: str = "pve"
    storage: str = "local-lvm"
    image_storage: str = "local"
    bridge: str = "vmbr0"
    vlan_tag: Optional[int] = None
    pool: Optional[str] = None
    ssh_user: str = "root"  # the provider's SSH user for operations the API cannot do


@dataclass(frozen=True)
class NodeSize:
    count: int = 3
    cores: int = 4
    memory_mib: int = 8192
    system_disk_gib: int = 32
    ceph_disks: int = 1
    ceph_disk_gib: int = 32
    bios: str = "seabios"
    acknowledge_even_count: bool = False
    qdevice: bool = False  # even counts: a small QDevice VM (corosync-qnetd) casts the tie-breaking vote
    source: str = "apt"  # apt: install every node from the internet | template: clone a golden node template


@dataclass(frozen=True)
class SecondNetwork:
    """An optional second network: corosync link1 (and optionally Ceph's cluster network)."""

    cidr: str = ""
    first_address: str = ""
    bridge: str = "vmbr0"
    vlan_tag: Optional[int] = None


@dataclass(frozen=True)
class LabNetwork:
    cidr: str = "10.10.10.0/24"
    gateway: str = "10.10.10.1"
    dns: tuple[str, ...] = ("10.10.10.1",)
    first_address: str = "10.10.10.11"
    link1: Optional[SecondNetwork] = None


@dataclass(frozen=True)
class ClusterNaming:
    name: str = "pve-lab"
    hostname_prefix: str = "pve"
    domain: str = "lab.internal"


@dataclass(frozen=True)
class CephPool:
    name: str = "vmpool"
    size: int = 3
    min_size: int = 2
    pg_num: int = 32


@dataclass(frozen=True)
class CephSpec:
    enabled: bool = True
    release: str = "squid"
    repository: str = "no-subscription"
    network: Optional[str] = None  # default: the lab network
    cluster_network: Optional[str] = None  # "link1" puts OSD replication on the second network
    osd_memory_target_mib: int = 1536
    pool: CephPool = field(default_factory=CephPool)
    health_timeout_s: int = 900


@dataclass(frozen=True)
class TestVmImage:
    """An OS for the HA test VMs (ha.testVmImage; pvelab/ha_guest.py): a cloud-init image downloaded inside the nested cluster,
    checked against its digest, imported onto Ceph. Every key is required (an unverified image never boots)."""

    __test__ = False  # not a pytest test class

    url: str = ""
    checksum: str = ""
    checksum_algorithm: str = "sha256"
    file_name: str = ""  # what PVE stores it as: an import file name, after its real format (.qcow2 / .raw)


@dataclass(frozen=True)
class HaSpec:
    enabled: bool = True
    test_vms: int = 1
    test_vm_memory_mib: int = 512
    test_vm_disk_gib: int = 4
    test_vmid_base: int = 100
    preferred_node: Optional[str] = None  # default: the first node
    rule_name: str = "lab-prefer"
    test_vm_image: Optional[TestVmImage] = None  # off: an empty disk, no OS (the default)
    test_vm_address: Optional[str] = None  # the first test VM's lab address; default: allocated (pvelab/ha_guest.py)


@dataclass(frozen=True)
class ImageSpec:
    url: str = "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
    file_name: str = "debian-13-genericcloud-amd64.qcow2"
    checksum: Optional[str] = None
    checksum_algorithm: str = "sha512"
    # An image already on the outer host (e.g. downloaded once for a whole class): "<storage>:import/<file>".
    # When set, the lab downloads nothing.
    file_id: Optional[str] = None


@dataclass(frozen=True)
class RepositorySpec:
    """The Proxmox VE package repository the nodes install from."""

    component: str = "pve-no-subscription"
    # The archive keyring is checked against a pinned sha256; only PVE 9's is built in.
    keyring_url: Optional[str] = None
    keyring_sha256: Optional[str] = None


@dataclass(frozen=True)
class TemplateSpec:
    """The golden node template (nodes.source: template); see pvelab/node_template.py."""

    builder_address: Optional[str] = None  # the builder VM's lab address; default: the one after the last node
    linked_clones: bool = True  # false: full clones (storages without linked clones: LVM thick, raw on dir)
    seal_timeout_s: int = 600  # how long the builder may take to power off after sealing
    # An existing template on outer.node (e.g. made by the class-images stack): clone it, build none here.
    vm_id: Optional[int] = None


@dataclass(frozen=True)
class Timeouts:
    install_s: int = 1800
    reboot_s: int = 600
    ready_s: int = 600
    quorum_s: int = 300


@dataclass(frozen=True)
class StudentNetwork:
    """Where a student's nested nodes attach on the outer host: a VLAN tag on a bridge, or an SDN VNet."""

    mode: str = "vlan"  # vlan | sdn
    vlan_tag: Optional[int] = None  # mode vlan: tag on outer.bridge
    zone: Optional[str] = None  # mode sdn: an existing SDN zone (VLAN or VXLAN type)
    vnet: Optional[str] = None  # mode sdn: the student's VNet id (created by the student's stack)
    vnet_tag: Optional[int] = None  # mode sdn: VLAN id / VXLAN VNI of the VNet


@dataclass(frozen=True)
class StudentSpec:
    """Set by `classroom render` for one student's stack; absent for a lone lab."""

    id: str = ""
    name: str = ""
    user: str = ""  # e.g. s01@pve: may open its own nested nodes' consoles and nothing else
    pool: str = ""  # the outer host's resource pool holding the student's VMs
    # The student's role on their pool: PVEVMUser (view, console, power, CD-ROM, backup of their own VMs)
    # or a console-only custom role the instructor created (VM.Audit + VM.Console).
    role: str = "PVEVMUser"
    network: StudentNetwork = field(default_factory=StudentNetwork)


@dataclass(frozen=True)
class LabSpec:
    outer: OuterHost = field(default_factory=OuterHost)
    nodes: NodeSize = field(default_factory=NodeSize)
    network: LabNetwork = field(default_factory=LabNetwork)
    vmid_base: int = 9100
    cluster: ClusterNaming = field(default_factory=ClusterNaming)
    pve_version: int = 9
    ceph: CephSpec = field(default_factory=CephSpec)
    ha: HaSpec = field(default_factory=HaSpec)
    image: ImageSpec = field(default_factory=ImageSpec)
    repository: RepositorySpec = field(default_factory=RepositorySpec)
    timeouts: Timeouts = field(default_factory=Timeouts)
    template: TemplateSpec = field(default_factory=TemplateSpec)
    apt_proxy: Optional[str] = None  # http://host:port of the class's package cache (pvelab/apt_proxy.py)
    tags: tuple[str, ...] = ("pve-lab",)
    student: Optional[StudentSpec] = None

    # ---- derived, never typed by hand
    @property
    def node_plans(self) -> list["NodePlan"]:
        return derive_nodes(self)

    @property
    def vmid_range(self) -> range:
        return range(self.vmid_base, self.vmid_base + self.nodes.count)

    @property
    def ceph_network(self) -> str:
        return self.ceph.network or self.network.cidr

    @property
    def ha_preferred_node(self) -> str:
        return self.ha.preferred_node or hostname(self, 0)


@dataclass(frozen=True)
class NodePlan:
    """One nested node, fully derived from the spec."""

    index: int
    hostname: str
    fqdn: str
    ip: str
    prefix_len: int
    vmid: int
    link1_ip: Optional[str] = None

    @property
    def cidr_address(self) -> str:
        return f"{self.ip}/{self.prefix_len}"

    @property
    def web_url(self) -> str:
        return f"https://{self.ip}:8006/"

    @property
    def ssh_command(self) -> str:
        return f"ssh root@{self.ip}"


def hostname(spec: LabSpec, index: int) -> str:
    return f"{spec.cluster.hostname_prefix}{index + 1}"


def derive_nodes(spec: LabSpec) -> list[NodePlan]:
    net = ipaddress.ip_network(spec.network.cidr, strict=False)
    first = ipaddress.ip_address(spec.network.first_address)
    link1 = spec.network.link1
    l1_first = ipaddress.ip_address(link1.first_address) if link1 else None
    plans = []
    for i in range(spec.nodes.count):
        name = hostname(spec, i)
        plans.append(
            NodePlan(
                index=i,
                hostname=name,
                fqdn=f"{name}.{spec.cluster.domain}",
                ip=str(first + i),
                prefix_len=net.prefixlen,
                vmid=spec.vmid_base + i,
                link1_ip=str(l1_first + i) if l1_first else None,
            )
        )
    return plans


# ---------------------------------------------------------------- generic parsing of the config object


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    out = head + "".join(p[:1].upper() + p[1:] for p in rest)
    # memoryMiB, systemDiskGiB: units keep their usual spelling
    return out.replace("Mib", "MiB").replace("Gib", "GiB")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0])
    if origin is tuple:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", bool: "true or false", str: "a string"}.get(tp, str(tp))


@functools.lru_cache(maxsize=None)
def _shape(cls: type) -> tuple[dict, dict]:
    """A spec class's type hints and its fields by YAML key (computed once: get_type_hints is slow)."""
    return typing.get_type_hints(cls), {_camel(f.name): f for f in dataclasses.fields(cls)}


def _parse(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"{_key(path)}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints, fields = _shape(cls)
    kwargs = {}
    for key, value in raw.items():
        sub = f"{path}.{key_name(key)}" if path else key_name(key)
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            problems.append(f"{_key(sub)}: unknown key{hint} (allowed: {', '.join(sorted(fields))})")
            continue
        ok, converted = _convert(hints[f.name], value, sub, problems)
        if ok:
            kwargs[f.name] = converted
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return True, None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, path, problems)
    if dataclasses.is_dataclass(tp):
        return True, _parse(tp, value, path, problems)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{_key(path)}: expected a list of strings, got {show(value)}")
            return False, None
        return True, tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value):
            return True, int(value)  # `pulumi config set --path` stores numbers as strings
    elif tp is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return True, str(value)
    if tp is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return True, value.lower() == "true"
    problems.append(f"{_key(path)}: expected {_type_name(tp)}, got {show(value)}")
    return False, None


# ---------------------------------------------------------------- the shape of every field (declarative)
# One rule per config key: the shape PVE gives it (pvelab/formats.py names the source of each pattern) or
# the bounds it accepts. Cross-field rules (quorum, sizing, networks) are the plain functions further down.

STORAGE_ID = Text(STORAGE_ID_RE, "a PVE storage id: letters, digits, '-', '_', '.', starting with a letter, "
                                 "ending with a letter or digit", 64, 2)
NODE_NAME = Text(PVE_NODE_RE, "a PVE node name: letters, digits and '-', not starting or ending with '-'", MAX_LABEL)
BRIDGE = Text(BRIDGE_RE, "a bridge name like vmbr0: letters, digits, '-', '_', '.'", 15)
SECONDS = Bounds(30, 7200)
IPV4 = Text(re.compile(r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"),
            "an IPv4 address like 10.10.10.20", 15, 7)
NODE_SOURCES = ("apt", "template")
VLAN = Bounds(1, 4094)

FIELD_RULES: dict[str, Any] = {
    "outer.endpoint": HttpsUrl(base_only=True, missing="missing; the outer PVE API URL, e.g. https://pve.example:8006/"),
    "outer.node": NODE_NAME,
    "outer.storage": STORAGE_ID,
    "outer.imageStorage": STORAGE_ID,
    "outer.bridge": BRIDGE,
    "outer.vlanTag": VLAN,
    "outer.pool": Text(POOL_ID_RE, "a PVE pool id: letters, digits, '-', '_', '.' (up to 3 levels a/b/c)", 64),
    "outer.sshUser": Text(UNIX_USER_RE, "a Linux user name like root"),
    "nodes.count": Bounds(1, 32),
    "nodes.cores": Bounds(2, 128),
    "nodes.memoryMiB": Bounds(1024, MAX_VM_MEMORY_MIB),
    "nodes.systemDiskGiB": Bounds(16, 4096),
    "nodes.cephDisks": Bounds(0, 8),
    "nodes.cephDiskGiB": Bounds(8, 16384),
    "nodes.bios": Choice(("seabios", "ovmf")),
    "nodes.source": Choice(NODE_SOURCES),  # apt, or clones of the golden node template (pvelab/node_template.py)
    "network.link1.bridge": BRIDGE,
    "network.link1.vlanTag": VLAN,
    # pvecm takes a pve-node name; the node scripts also want it lower case and starting with a letter.
    "cluster.name": Text(HOSTNAME_RE, "lowercase letters, digits and '-', starting with a letter, not ending with '-'",
                         MAX_CLUSTER_NAME),
    "cluster.hostnamePrefix": Text(HOSTNAME_RE, "lowercase letters, digits and '-', starting with a letter", 40),
    "cluster.domain": Text(DOMAIN_RE, "a DNS domain like lab.internal (lowercase labels of letters, digits and '-', "
                                      "at least two)", MAX_FQDN),
    "pveVersion": Choice((9, 8), says="is not supported"),
    "ceph.repository": Choice(CEPH_REPOSITORIES, says="is not a Ceph repository"),
    "ceph.clusterNetwork": Choice(("link1",)),
    "ceph.osdMemoryTargetMiB": Bounds(1, MAX_VM_MEMORY_MIB),  # the minimum has its own message (_check_ceph)
    "ceph.pool.name": STORAGE_ID,  # the pool is also added as a PVE storage of the same name
    "ceph.pool.size": Bounds(1, 7),
    "ceph.pool.minSize": Bounds(1, 7),
    "ceph.pool.pgNum": Bounds(1, MAX_PG_NUM),
    "ceph.healthTimeoutS": Bounds(60, 7200),
    "ha.testVms": Bounds(0, 10),
    "ha.testVmMemoryMiB": Bounds(128, 65536),
    "ha.testVmDiskGiB": Bounds(1, 1024),
    "ha.ruleName": Text(CONFIG_ID_RE, "a PVE config id: letters, digits, '_' and '-', starting with a letter", 64, 2),
    # The test VMs' OS image (pvelab/ha_guest.py has the rules across keys: required keys, digest length, address).
    "ha.testVmImage.url": HttpsUrl(missing="missing; an https:// URL of a cloud image that runs cloud-init, e.g. "
                                           "a dated build of Debian 13 genericcloud (README 'A test VM that runs')"),
    "ha.testVmImage.checksum": Text(re.compile(r"[0-9a-f]{64}|[0-9a-f]{128}"), "", 128, 0,
                                    says="is not a sha256 or sha512 digest (64 or 128 lower-case hex digits); give the "
                                         "image's digest as its publisher lists it: an unverified image never boots "
                                         "in the lab"),
    "ha.testVmImage.checksumAlgorithm": Choice(TEST_VM_CHECKSUMS),
    "ha.testVmImage.fileName": Text(IMPORT_FILE_RE, "a plain file name ending in .qcow2, .raw or .vmdk, after the "
                                                    "image's real format (PVE checks it)", 200),
    "ha.testVmAddress": IPV4,
    "image.url": HttpsUrl(),
    "image.fileName": Text(IMPORT_FILE_RE, "a plain file name ending in .qcow2, .raw or .vmdk (what PVE imports)", 200),
    "image.checksumAlgorithm": Choice(tuple(CHECKSUM_HEX_LEN)),
    "image.fileId": Text(re.compile(STORAGE_ID_RE.pattern + ":import/" + IMPORT_FILE_RE.pattern),
                         "a volume id like local:import/debian-13.qcow2", 260,
                         says="is not a volume id like local:import/debian-13.qcow2 (an import file: .qcow2, .raw, .vmdk)"),
    "repository.component": Choice(("pve-no-subscription", "pve-enterprise", "pvetest")),
    "repository.keyringUrl": HttpsUrl(),
    "repository.keyringSha256": Text(re.compile(r"[0-9a-f]{64}"), "", says="must be 64 lower-case hex digits (a sha256)"),
    "timeouts.installS": SECONDS,
    "timeouts.rebootS": SECONDS,
    "timeouts.readyS": SECONDS,
    "timeouts.quorumS": SECONDS,
    "template.builderAddress": IPV4,  # where in the lab network: the cross-field rule in node_template.validate_template
    "template.sealTimeoutS": Bounds(60, 7200),
    "template.vmId": Bounds(PVE_VMID_MIN, PVE_VMID_MAX),
    # written into the nodes' apt.conf.d (components/scripts/apt-proxy.sh): one plain http URL, no path
    "aptProxy": Text(re.compile(r"http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?"), "an http://host[:port] URL of a package cache",
                     says="is not an http://host[:port] URL (e.g. http://10.10.10.5:3142 for apt-cacher-ng)"),
    "tags[]": Text(PVE_TAG_RE, "a PVE tag: letters, digits, '_', '.', '+', '-'", 64),
    "student.id": Text(re.compile(r"[a-z0-9][a-z0-9-]*"), "lowercase letters, digits and '-'", 40),
    "student.name": Text(re.compile(r"[^\x00-\x1f\x7f]*"), "one line of text", 200, 0),
    "student.user": Text(USER_ID_RE, "a PVE user id like s01@pve", USER_ID_MAX, 3),
    "student.pool": Text(POOL_ID_RE, "a PVE pool id: letters, digits, '-', '_', '.'", 64),
    "student.role": Text(ROLE_ID_RE, "a PVE role id like PVEVMUser", 64),
    "student.network.mode": Choice(("vlan", "sdn")),
    "student.network.vlanTag": VLAN,
    "student.network.zone": Text(SDN_ID_RE, "an SDN zone id: letters and digits, starting with a letter", SDN_ID_MAX, 2),
    "student.network.vnet": Text(SDN_ID_RE, "an SDN VNet id: letters and digits, starting with a letter", SDN_ID_MAX, 2),
    "student.network.vnetTag": Bounds(1, 16_777_215),
}


def _field_values(spec: LabSpec, path: str) -> list[tuple[str, Any]]:
    """(config key, value) pairs at `path` in the spec; none when a section is absent; `x[]` for list items."""
    obj: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, _snake(part), None)
        if obj is None:
            return []
    last = parts[-1]
    if last.endswith("[]"):
        items = getattr(obj, _snake(last[:-2]))
        prefix = path[:-2]
        return [(f"{prefix}[{i}]", v) for i, v in enumerate(items)]
    value = getattr(obj, _snake(last))
    return [] if value is None else [(path, value)]


@functools.lru_cache(maxsize=None)
def _snake(name: str) -> str:
    name = name.replace("MiB", "Mib").replace("GiB", "Gib")
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def check_fields(spec: LabSpec) -> list[str]:
    """Every field against its rule in FIELD_RULES."""
    problems = []
    for path, rule in FIELD_RULES.items():
        for key, value in _field_values(spec, path):
            problem = rule.problem(value)
            if problem:
                problems.append(f"{_key(key)}: {problem}")
    return problems


# ---------------------------------------------------------------- cross-field rules


def _net(value: str, path: str, problems: list[str]) -> Optional[ipaddress.IPv4Network]:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        problems.append(f"{_key(path)}: {show(value)} is not a valid network CIDR ({exc}); use e.g. 10.10.10.0/24")
        return None
    if net.version != 4:
        problems.append(f"{_key(path)}: {show(value)} is IPv6; the lab network must be IPv4")
        return None
    if net.num_addresses < 8:
        problems.append(f"{_key(path)}: {show(value)} is too small; use a /29 or larger")
        return None
    return net


def _addr(value: str, path: str, problems: list[str]) -> Optional[ipaddress.IPv4Address]:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != 4:
        problems.append(f"{_key(path)}: {show(value)} is not an IPv4 address")
        return None
    return addr


def _check_range(net, first, count: int, path: str, problems: list[str], avoid: dict[str, Any]) -> None:
    """The `count` consecutive node addresses from `first` must be usable hosts of `net`, clear of `avoid`."""
    if first is None or net is None:
        return
    last = first + (count - 1)
    hosts_lo, hosts_hi = net.network_address + 1, net.broadcast_address - 1
    if not (hosts_lo <= first <= hosts_hi and last <= hosts_hi):
        problems.append(
            f"{_key(path)}: the {count} node addresses {first}..{last} do not fit in {net} "
            f"(usable hosts {hosts_lo}..{hosts_hi})"
        )
        return
    for what, addr in avoid.items():
        if addr is not None and first <= addr <= last:
            problems.append(f"{_key(path)}: node addresses {first}..{last} collide with {what} {addr}")


def _check_quorum(spec: LabSpec, problems: list[str]) -> None:
    n = spec.nodes
    if n.qdevice and n.count % 2 == 1:
        problems.append(
            f"{_key('nodes.qdevice')}: a QDevice is for an even node count, and nodes.count is {n.count} "
            f"(`pvecm qdevice setup` refuses: \"Clusters with an odd node count are not officially supported!\"); "
            f"use 2 or 4 nodes, or remove nodes.qdevice"
        )
    elif n.count < 3 and not (n.acknowledge_even_count or n.qdevice):
        problems.append(
            f"{_key('nodes.count')}: {n.count} node(s) cannot keep quorum when one fails; use 3 or more, "
            f"or set nodes.acknowledgeEvenCount: true to build it anyway"
        )
    elif n.count % 2 == 0 and not (n.acknowledge_even_count or n.qdevice):
        problems.append(
            f"{_key('nodes.count')}: {n.count} is even; losing half the nodes loses quorum. Use an odd count "
            f"(3, 5, ...), add a QDevice (nodes.qdevice: true) or set nodes.acknowledgeEvenCount: true"
        )


def _check_sizing(spec: LabSpec, problems: list[str]) -> None:
    n, ceph, ha = spec.nodes, spec.ceph, spec.ha
    need = PVE_BASE_MIB
    if ceph.enabled:
        need += CEPH_MON_MGR_MIB + n.ceph_disks * ceph.osd_memory_target_mib
    if ha.enabled:
        need += ha.test_vms * ha.test_vm_memory_mib
    if n.memory_mib < need:
        problems.append(
            f"{_key('nodes.memoryMiB')}: {n.memory_mib} MiB is too little for PVE"
            + (f" + Ceph ({n.ceph_disks} OSD x {ceph.osd_memory_target_mib} MiB + MON/MGR)" if ceph.enabled else "")
            + (f" + {ha.test_vms} HA test VM(s)" if ha.enabled else "")
            + f"; need at least {need} MiB"
        )
    vms = n.count + (1 if n.qdevice else 0)  # the QDevice VM takes the VMID and address after the nodes
    if not (PVE_VMID_MIN <= spec.vmid_base and spec.vmid_base + vms - 1 <= PVE_VMID_MAX):
        problems.append(f"{_key('vmidBase')}: {spec.vmid_base} is out of range (allowed: 100..{PVE_VMID_MAX - vms + 1})")


def _check_lab_network(spec: LabSpec, problems: list[str]):
    """The lab network, its gateway, the node addresses and DNS; returns (network, node addresses)."""
    net, count = spec.network, spec.nodes.count
    lab_net = _net(net.cidr, "network.cidr", problems)
    gw = _addr(net.gateway, "network.gateway", problems)
    first = _addr(net.first_address, "network.firstAddress", problems)
    if lab_net and gw:
        if gw not in lab_net:
            problems.append(f"{_key('network.gateway')}: {gw} is outside {lab_net}")
        elif gw in (lab_net.network_address, lab_net.broadcast_address):
            which = "network" if gw == lab_net.network_address else "broadcast"
            problems.append(f"{_key('network.gateway')}: {gw} is the {which} address of {lab_net}; use a host "
                            f"address (e.g. {lab_net.network_address + 1})")
    if lab_net and first and first not in lab_net:
        problems.append(f"{_key('network.firstAddress')}: {first} is outside {lab_net}")
    elif count >= 1:
        vms = count + (1 if spec.nodes.qdevice else 0)  # the QDevice VM takes the address after the nodes
        _check_range(lab_net, first, vms, "network.firstAddress", problems, {"the gateway": gw})
    if not net.dns:
        problems.append(f"{_key('network.dns')}: give at least one DNS server")
    for i, d in enumerate(net.dns):
        _addr(d, f"network.dns[{i}]", problems)
    addresses = [first + i for i in range(count)] if first is not None else []
    return lab_net, addresses


def _check_link1(spec: LabSpec, lab_net, problems: list[str]) -> list:
    """The optional second corosync network; returns the nodes' link1 addresses."""
    l1, count = spec.network.link1, spec.nodes.count
    if l1 is None:
        return []
    l1_net = _net(l1.cidr, "network.link1.cidr", problems) if l1.cidr else None
    if not l1.cidr:
        problems.append(f"{_key('network.link1.cidr')}: missing; the second corosync network, e.g. 10.10.20.0/24")
    l1_first = _addr(l1.first_address, "network.link1.firstAddress", problems) if l1.first_address else None
    if not l1.first_address:
        problems.append(f"{_key('network.link1.firstAddress')}: missing; the first node's address on link1")
    if l1_net and lab_net and l1_net.overlaps(lab_net):
        problems.append(f"{_key('network.link1.cidr')}: {l1_net} overlaps the lab network {lab_net}; use a separate network")
    elif l1_first and l1_net and l1_first not in l1_net:
        problems.append(f"{_key('network.link1.firstAddress')}: {l1_first} is outside {l1_net}")
    else:
        _check_range(l1_net, l1_first, count, "network.link1.firstAddress", problems, {})
    return [l1_first + i for i in range(count)] if l1_first is not None else []


def _check_names(spec: LabSpec, problems: list[str]) -> None:
    """Host names and FQDNs the nodes get: DNS label and name lengths."""
    c, count = spec.cluster, spec.nodes.count
    if not HOSTNAME_RE.fullmatch(c.hostname_prefix) or not DOMAIN_RE.fullmatch(c.domain):
        return  # the field rules already said what is wrong
    longest = f"{c.hostname_prefix}{count}"
    if len(longest) > MAX_LABEL:
        problems.append(f"{_key('cluster.hostnamePrefix')}: node name '{longest}' is longer than {MAX_LABEL} characters")
    if "." not in c.domain:
        problems.append(f"{_key('cluster.domain')}: {show(c.domain)} is not a DNS domain like lab.internal (two labels or more)")
    for label in c.domain.split("."):
        if len(label) > MAX_LABEL:
            problems.append(f"{_key('cluster.domain')}: the label '{label[:20]}...' is longer than {MAX_LABEL} characters")
            break
    if len(longest) + 1 + len(c.domain) > MAX_FQDN:
        problems.append(f"{_key('cluster.domain')}: the node FQDN '{longest}.{c.domain[:20]}...' is longer than "
                        f"{MAX_FQDN} characters")


def _check_ceph(spec: LabSpec, lab_net, addresses: list, link1_addresses: list, problems: list[str]) -> None:
    ceph, n, link1 = spec.ceph, spec.nodes, spec.network.link1
    if not ceph.enabled:
        return
    releases = CEPH_RELEASES.get(spec.pve_version, ())
    if releases and ceph.release not in releases:
        problems.append(
            f"{_key('ceph.release')}: {show(ceph.release)} is not offered on PVE {spec.pve_version} "
            f"(allowed: {', '.join(releases)})"
        )
    if ceph.network is not None:
        cn = _net(ceph.network, "ceph.network", problems)
        outside = [a for a in addresses if cn and a not in cn]
        inside_l1 = [a for a in link1_addresses if cn and a in cn]
        if cn and lab_net and not cn.overlaps(lab_net):
            problems.append(f"{_key('ceph.network')}: {cn} must be the lab network {lab_net} (or a part of it) so monitors can bind")
        elif outside:
            problems.append(f"{_key('ceph.network')}: {cn} must contain every node address (monitors bind there); "
                            f"{', '.join(map(str, outside))} outside it")
        if inside_l1:
            problems.append(f"{_key('ceph.network')}: {cn} also contains link1 addresses ({inside_l1[0]}...); the "
                            f"public network must be the lab network only")
    if ceph.osd_memory_target_mib < MIN_OSD_MEMORY_TARGET_MIB:
        problems.append(f"{_key('ceph.osdMemoryTargetMiB')}: {ceph.osd_memory_target_mib} is below Ceph's minimum "
                        f"({MIN_OSD_MEMORY_TARGET_MIB})")
    if ceph.cluster_network == "link1" and link1 is None:
        problems.append(f"{_key('ceph.clusterNetwork')}: 'link1' needs network.link1 to be configured")
    p = ceph.pool
    if p.min_size > p.size:
        problems.append(f"{_key('ceph.pool.minSize')}: {p.min_size} is larger than ceph.pool.size {p.size}")
    elif p.min_size < 2 and p.size > 1:
        problems.append(f"{_key('ceph.pool.minSize')}: 1 risks data loss; use 2 or more")
    if p.pg_num >= 1 and p.pg_num & (p.pg_num - 1):
        problems.append(f"{_key('ceph.pool.pgNum')}: {p.pg_num} must be a power of two (e.g. 32)")
    osd_nodes = n.count if n.ceph_disks > 0 else 0
    if n.ceph_disks == 0:
        problems.append(f"{_key('nodes.cephDisks')}: Ceph is enabled but the nodes have no data disks; use 1 or more")
    elif p.size > osd_nodes:
        problems.append(
            f"{_key('ceph.pool.size')}: {p.size} replicas need {p.size} nodes with OSDs, the lab has {osd_nodes} "
            f"(the default CRUSH rule puts each replica on a different host)"
        )


def _check_ha(spec: LabSpec, problems: list[str]) -> None:
    ha, n = spec.ha, spec.nodes
    if not ha.enabled:
        return
    if not spec.ceph.enabled:
        problems.append(
            f"{_key('ha.enabled')}: HA needs shared storage for the VM disk; enable ceph (ceph.enabled: true) "
            f"or turn HA off (ha.enabled: false)"
        )
    if n.count < 3:
        problems.append(f"{_key('ha.enabled')}: HA needs at least 3 nodes (nodes.count is {n.count})")
    if not 100 <= ha.test_vmid_base <= PVE_VMID_MAX - ha.test_vms:
        problems.append(f"{_key('ha.testVmidBase')}: {ha.test_vmid_base} is out of range "
                        f"(allowed: 100..{PVE_VMID_MAX - ha.test_vms})")
    names = [hostname(spec, i) for i in range(n.count)]
    if ha.preferred_node is not None and ha.preferred_node not in names and \
            HOSTNAME_RE.fullmatch(spec.cluster.hostname_prefix) and n.count <= 32:
        problems.append(f"{_key('ha.preferredNode')}: {show(ha.preferred_node)} is not a lab node (nodes: {', '.join(names)})")


def _check_packages(spec: LabSpec, problems: list[str]) -> None:
    """Repository, keyring and image must match the PVE version (9 = Debian 13 trixie, 8 = Debian 12 bookworm)."""
    repo, image = spec.repository, spec.image
    if spec.pve_version == 8 and not (repo.keyring_url and repo.keyring_sha256):
        problems.append(
            f"{_key('repository.keyringSha256')}: PVE 8 needs repository.keyringUrl and repository.keyringSha256 "
            f"(the bookworm keyring and its sha256; only PVE 9's is built in)"
        )
    wrong_release = {9: ("bookworm", "debian-12"), 8: ("trixie", "debian-13")}.get(spec.pve_version, ())
    if any(w in image.url for w in wrong_release):
        problems.append(
            f"{_key('image.url')}: this image does not match pveVersion {spec.pve_version} "
            f"(PVE 9 needs a Debian 13 trixie image, PVE 8 a Debian 12 bookworm image)"
        )
    want = CHECKSUM_HEX_LEN.get(image.checksum_algorithm)
    if image.checksum is not None and want and not (len(image.checksum) == want and HEX_RE.fullmatch(image.checksum)):
        problems.append(f"{_key('image.checksum')}: must be {want} lower-case hex digits (a {image.checksum_algorithm} "
                        f"digest)")


def validate(spec: LabSpec) -> list[str]:
    """Every problem of a well-typed spec: field shapes first, then the rules across fields."""
    problems = check_fields(spec)
    _check_quorum(spec, problems)
    _check_sizing(spec, problems)
    lab_net, addresses = _check_lab_network(spec, problems)
    link1_addresses = _check_link1(spec, lab_net, problems)
    _check_names(spec, problems)
    _check_ceph(spec, lab_net, addresses, link1_addresses, problems)
    _check_ha(spec, problems)
    _check_packages(spec, problems)
    if spec.student is not None:
        problems += validate_student(spec)
    from .node_template import validate_template  # its own module (it imports this one)

    problems += validate_template(spec)  # the builder's address among the lab's addresses
    from .ha_guest import validate_guest  # its own module (it imports this one)

    problems += validate_guest(spec)  # the HA test VMs' image and addresses
    return problems


# Roles that would let a student reach beyond their own VMs (other pools, users, the host, SDN config).
ADMIN_ROLES = frozenset({"Administrator", "PVEAdmin", "PVEVMAdmin", "PVESysAdmin", "PVEUserAdmin", "PVEPoolAdmin",
                         "PVEDatastoreAdmin", "PVESDNAdmin", "PVEMappingAdmin"})
# Older names of the formats (use them with fullmatch, as everything here does).
ROLE_RE, USER_RE, POOL_NAME_RE, HA_RULE_RE, VNET_RE = ROLE_ID_RE, USER_ID_RE, STORAGE_ID_RE, CONFIG_ID_RE, SDN_ID_RE


def validate_student(spec: LabSpec) -> list[str]:
    """What the field rules cannot say about a student: no admin role, the network mode's required keys."""
    st, problems = spec.student, []
    assert st is not None
    if st.role in ADMIN_ROLES:
        problems.append(
            f"{_key('student.role')}: {show(st.role)} is not allowed: not an admin role "
            f"({', '.join(sorted(ADMIN_ROLES))}); use PVEVMUser or a console-only custom role"
        )
    net = st.network
    if net.mode == "vlan" and net.vlan_tag is None:
        problems.append(f"{_key('student.network.vlanTag')}: missing; mode vlan needs the student's VLAN tag (1..4094)")
    elif net.mode == "sdn":
        if not net.zone:
            problems.append(f"{_key('student.network.zone')}: missing; mode sdn needs an existing SDN zone")
        if not net.vnet:
            problems.append(f"{_key('student.network.vnet')}: missing; the student's VNet id (at most {SDN_ID_MAX} characters)")
        if net.vnet_tag is None:
            problems.append(f"{_key('student.network.vnetTag')}: missing; the VNet's VLAN id or VXLAN VNI")
    return problems


SECRET_LOOKING_KEYS = re.compile(r"(password|token|secret|privatekey)", re.IGNORECASE)


def _find_secret_keys(raw: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            sub = f"{path}.{key_name(k)}" if path else key_name(k)
            if SECRET_LOOKING_KEYS.search(str(k)):
                found.append(sub)
            found += _find_secret_keys(v, sub)
    return found


def parse_spec(raw: Any) -> LabSpec:
    """Parse and validate the raw `pve-lab:lab` object; raise SpecError listing every problem."""
    problems: list[str] = []
    for path in _find_secret_keys(raw):
        problems.append(
            f"{_key(path)}: secrets do not belong in the lab object; set them as Pulumi secrets "
            f"(see README 'Secrets': pve-lab:outerApiToken, pve-lab:rootPassword)"
        )
    if problems:
        raise SpecError(problems)
    spec = _parse(LabSpec, raw, "", problems)
    if not problems:  # semantic checks only make sense on a well-typed spec
        problems += validate(spec)
    if problems:
        raise SpecError(problems)
    return spec


# ---------------------------------------------------------------- secrets (separate config keys)

SECRET_KEYS = {
    "outerApiToken": "the outer host's API token, 'user@realm!tokenid=uuid'",
    "rootPassword": "the nested nodes' root password (generated when absent)",
    "sshPrivateKey": "an OpenSSH private key for root on the nested nodes (generated when absent)",
}
# user@realm!tokenid=uuid (pve-access-control: token ids are pve-configid-like, the secret a UUID); whole string only.
API_TOKEN_RE = re.compile(r"[!-~]+@[A-Za-z][A-Za-z0-9._-]+![A-Za-z][A-Za-z0-9._-]*=[0-9a-fA-F-]{8,64}")


PRIVATE_KEY_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+ )?PRIVATE KEY-----\n[A-Za-z0-9+/=\n:, -]+\n-----END ([A-Z0-9 ]+ )?PRIVATE KEY-----")
PUBLIC_KEY_RE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( [^\n\r]*)?")


def check_secrets(api_token: Optional[str], ssh_private_key: Optional[str], ssh_public_key: Optional[str]) -> list[str]:
    """Problems with the secret config keys. Values are never echoed back."""
    problems = []
    if not api_token:
        problems.append(
            f"{CONFIG_NAMESPACE}:outerApiToken: missing; set it with "
            f"`pulumi config set --secret {CONFIG_NAMESPACE}:outerApiToken 'root@pam!lab=<uuid>'`"
        )
    elif not API_TOKEN_RE.fullmatch(api_token):
        problems.append(f"{CONFIG_NAMESPACE}:outerApiToken: not of the form 'user@realm!tokenid=uuid' (value hidden)")
    if bool(ssh_private_key) != bool(ssh_public_key):
        problems.append(
            f"{CONFIG_NAMESPACE}:sshPrivateKey / {CONFIG_NAMESPACE}:sshPublicKey: give both or neither "
            f"(a key pair is generated when both are absent)"
        )
    elif ssh_private_key and not PRIVATE_KEY_RE.fullmatch(ssh_private_key.strip()):
        problems.append(f"{CONFIG_NAMESPACE}:sshPrivateKey: not an OpenSSH/PEM private key (value hidden)")
    if ssh_public_key and not PUBLIC_KEY_RE.fullmatch(ssh_public_key.strip()):
        problems.append(f"{CONFIG_NAMESPACE}:sshPublicKey: not one line 'ssh-ed25519 AAAA... comment' (value hidden)")
    return problems


def check_root_password(password: Optional[str]) -> list[str]:
    """The nested nodes' root password, when given: 12-64 printable characters on one line (it goes to stdin)."""
    if password is None:
        return []
    if not (12 <= len(password) <= 64):
        return [f"{CONFIG_NAMESPACE}:rootPassword: must be 12 to 64 characters (value hidden)"]
    if not password.isprintable():
        return [f"{CONFIG_NAMESPACE}:rootPassword: must be printable characters on one line (value hidden)"]
    return []

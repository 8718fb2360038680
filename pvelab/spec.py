"""The lab's typed spec: read from the `pve-lab:lab` config object, validated before any resource exists.

Pure Python (no Pulumi import) so that validation, `plan`, the classroom tools and the tests share it.
Every mistake becomes one line naming the config key and what is allowed; all mistakes are reported
together so a user fixes their stack file in one pass.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

CONFIG_NAMESPACE = "pve-lab"
CONFIG_KEY = f"{CONFIG_NAMESPACE}:lab"

# Memory budget per nested node, in MiB (see README "Sizing"): PVE itself, one Ceph MON + MGR, each OSD.
PVE_BASE_MIB = 2048
CEPH_MON_MGR_MIB = 1024
MIN_OSD_MEMORY_TARGET_MIB = 896  # Ceph refuses a smaller osd_memory_target
MAX_CLUSTER_NAME = 15  # pvecm: at most 15 characters
HOSTNAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
DOMAIN_RE = re.compile(r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
POOL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HA_RULE_RE = re.compile(r"^[a-z][a-z0-9_-]+$")
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
class HaSpec:
    enabled: bool = True
    test_vms: int = 1
    test_vm_memory_mib: int = 512
    test_vm_disk_gib: int = 4
    test_vmid_base: int = 100
    preferred_node: Optional[str] = None  # default: the first node
    rule_name: str = "lab-prefer"


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


def _parse(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(f"{_key(path)}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {_camel(f.name): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        sub = f"{path}.{key}" if path else str(key)
        f = fields.get(key)
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
            problems.append(f"{_key(path)}: expected a list of strings, got {value!r}")
            return False, None
        return True, tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return True, int(value)  # `pulumi config set --path` stores numbers as strings
    elif tp is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return True, str(value)
    if tp is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return True, value.lower() == "true"
    problems.append(f"{_key(path)}: expected {_type_name(tp)}, got {value!r}")
    return False, None


# ---------------------------------------------------------------- semantic checks


def _net(value: str, path: str, problems: list[str]) -> Optional[ipaddress.IPv4Network]:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        problems.append(f"{_key(path)}: '{value}' is not a valid network CIDR ({exc}); use e.g. 10.10.10.0/24")
        return None
    if net.version != 4:
        problems.append(f"{_key(path)}: '{value}' is IPv6; the lab network must be IPv4")
        return None
    if net.num_addresses < 8:
        problems.append(f"{_key(path)}: '{value}' is too small; use a /29 or larger")
        return None
    return net


def _addr(value: str, path: str, problems: list[str]) -> Optional[ipaddress.IPv4Address]:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        problems.append(f"{_key(path)}: '{value}' is not an IPv4 address")
        return None
    if addr.version != 4:
        problems.append(f"{_key(path)}: '{value}' is not an IPv4 address")
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


def _positive(value: int, path: str, problems: list[str], minimum: int = 1, maximum: Optional[int] = None) -> None:
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        problems.append(f"{_key(path)}: {value} is out of range (allowed: {allowed})")


def validate(spec: LabSpec) -> list[str]:
    problems: list[str] = []
    o, n, net, c, ceph, ha = spec.outer, spec.nodes, spec.network, spec.cluster, spec.ceph, spec.ha

    # outer host
    if not o.endpoint:
        problems.append(f"{_key('outer.endpoint')}: missing; the outer PVE API URL, e.g. https://pve.example:8006/")
    elif not re.match(r"^https?://[^/\s]+(:\d+)?/?$", o.endpoint):
        problems.append(f"{_key('outer.endpoint')}: '{o.endpoint}' is not an API base URL like https://host:8006/")
    for k in ("node", "storage", "image_storage", "bridge"):
        if not getattr(o, k):
            problems.append(f"{_key('outer.' + _camel(k))}: must not be empty")
    if o.vlan_tag is not None:
        _positive(o.vlan_tag, "outer.vlanTag", problems, 1, 4094)

    # nodes
    _positive(n.count, "nodes.count", problems, 1, 32)
    if n.count < 3 and not n.acknowledge_even_count:
        problems.append(
            f"{_key('nodes.count')}: {n.count} node(s) cannot keep quorum when one fails; use 3 or more, "
            f"or set nodes.acknowledgeEvenCount: true to build it anyway"
        )
    elif n.count % 2 == 0 and not n.acknowledge_even_count:
        problems.append(
            f"{_key('nodes.count')}: {n.count} is even; losing half the nodes loses quorum. Use an odd count "
            f"(3, 5, ...) or set nodes.acknowledgeEvenCount: true"
        )
    _positive(n.cores, "nodes.cores", problems, 2, 128)
    _positive(n.system_disk_gib, "nodes.systemDiskGiB", problems, 16, 4096)
    _positive(n.ceph_disks, "nodes.cephDisks", problems, 0, 8)
    _positive(n.ceph_disk_gib, "nodes.cephDiskGiB", problems, 8, 16384)
    if n.bios not in ("seabios", "ovmf"):
        problems.append(f"{_key('nodes.bios')}: '{n.bios}' is not allowed (allowed: seabios, ovmf)")
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

    # VMIDs
    if not (PVE_VMID_MIN <= spec.vmid_base and spec.vmid_base + n.count - 1 <= PVE_VMID_MAX):
        problems.append(f"{_key('vmidBase')}: {spec.vmid_base} is out of range (allowed: 100..{PVE_VMID_MAX - n.count + 1})")

    # network
    lab_net = _net(net.cidr, "network.cidr", problems)
    gw = _addr(net.gateway, "network.gateway", problems)
    first = _addr(net.first_address, "network.firstAddress", problems)
    if lab_net and gw and gw not in lab_net:
        problems.append(f"{_key('network.gateway')}: {gw} is outside {lab_net}")
    if lab_net and first and first not in lab_net:
        problems.append(f"{_key('network.firstAddress')}: {first} is outside {lab_net}")
    elif n.count >= 1:
        _check_range(lab_net, first, n.count, "network.firstAddress", problems, {"the gateway": gw})
    if not net.dns:
        problems.append(f"{_key('network.dns')}: give at least one DNS server")
    for i, d in enumerate(net.dns):
        _addr(d, f"network.dns[{i}]", problems)
    if net.link1 is not None:
        l1 = net.link1
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
            _check_range(l1_net, l1_first, n.count, "network.link1.firstAddress", problems, {})
        if l1.vlan_tag is not None:
            _positive(l1.vlan_tag, "network.link1.vlanTag", problems, 1, 4094)

    # cluster naming
    if not (1 <= len(c.name) <= MAX_CLUSTER_NAME) or not HOSTNAME_RE.match(c.name):
        problems.append(
            f"{_key('cluster.name')}: '{c.name}' is not allowed: 1-{MAX_CLUSTER_NAME} characters, lowercase "
            f"letters, digits and '-', starting with a letter"
        )
    if not HOSTNAME_RE.match(c.hostname_prefix) or len(c.hostname_prefix) > 40:
        problems.append(
            f"{_key('cluster.hostnamePrefix')}: '{c.hostname_prefix}' is not allowed: lowercase letters, digits and "
            f"'-', starting with a letter (the nodes become {c.hostname_prefix}1, {c.hostname_prefix}2, ...)"
        )
    if not DOMAIN_RE.match(c.domain) or "." not in c.domain:
        problems.append(f"{_key('cluster.domain')}: '{c.domain}' is not a DNS domain like lab.internal")

    if spec.pve_version not in CEPH_RELEASES:
        problems.append(f"{_key('pveVersion')}: {spec.pve_version} is not supported (allowed: 9, 8)")

    # ceph
    if ceph.enabled:
        releases = CEPH_RELEASES.get(spec.pve_version, ())
        if releases and ceph.release not in releases:
            problems.append(
                f"{_key('ceph.release')}: '{ceph.release}' is not offered on PVE {spec.pve_version} "
                f"(allowed: {', '.join(releases)})"
            )
        if ceph.repository not in CEPH_REPOSITORIES:
            problems.append(f"{_key('ceph.repository')}: '{ceph.repository}' (allowed: {', '.join(CEPH_REPOSITORIES)})")
        if ceph.network is not None:
            cn = _net(ceph.network, "ceph.network", problems)
            if cn and lab_net and not cn.overlaps(lab_net):
                problems.append(f"{_key('ceph.network')}: {cn} must be the lab network {lab_net} (or a part of it) so monitors can bind")
        if ceph.cluster_network not in (None, "link1"):
            problems.append(f"{_key('ceph.clusterNetwork')}: '{ceph.cluster_network}' (allowed: link1, or leave it out)")
        elif ceph.cluster_network == "link1" and net.link1 is None:
            problems.append(f"{_key('ceph.clusterNetwork')}: 'link1' needs network.link1 to be configured")
        if ceph.osd_memory_target_mib < MIN_OSD_MEMORY_TARGET_MIB:
            problems.append(
                f"{_key('ceph.osdMemoryTargetMiB')}: {ceph.osd_memory_target_mib} is below Ceph's minimum "
                f"({MIN_OSD_MEMORY_TARGET_MIB})"
            )
        p = ceph.pool
        if not POOL_NAME_RE.match(p.name):
            problems.append(f"{_key('ceph.pool.name')}: '{p.name}' is not allowed: letters, digits, '_', '.', '-'")
        _positive(p.size, "ceph.pool.size", problems, 1, 7)
        _positive(p.min_size, "ceph.pool.minSize", problems, 1, 7)
        if p.min_size > p.size:
            problems.append(f"{_key('ceph.pool.minSize')}: {p.min_size} is larger than ceph.pool.size {p.size}")
        elif p.min_size < 2 and p.size > 1:
            problems.append(f"{_key('ceph.pool.minSize')}: 1 risks data loss; use 2 or more")
        if p.pg_num < 1 or p.pg_num & (p.pg_num - 1):
            problems.append(f"{_key('ceph.pool.pgNum')}: {p.pg_num} must be a power of two (e.g. 32)")
        osd_nodes = n.count if n.ceph_disks > 0 else 0
        if n.ceph_disks == 0:
            problems.append(f"{_key('nodes.cephDisks')}: Ceph is enabled but the nodes have no data disks; use 1 or more")
        elif p.size > osd_nodes:
            problems.append(
                f"{_key('ceph.pool.size')}: {p.size} replicas need {p.size} nodes with OSDs, the lab has {osd_nodes} "
                f"(the default CRUSH rule puts each replica on a different host)"
            )
        _positive(ceph.health_timeout_s, "ceph.healthTimeoutS", problems, 60, 7200)

    # HA
    if ha.enabled:
        if not ceph.enabled:
            problems.append(
                f"{_key('ha.enabled')}: HA needs shared storage for the VM disk; enable ceph (ceph.enabled: true) "
                f"or turn HA off (ha.enabled: false)"
            )
        if n.count < 3:
            problems.append(f"{_key('ha.enabled')}: HA needs at least 3 nodes (nodes.count is {n.count})")
        _positive(ha.test_vms, "ha.testVms", problems, 0, 10)
        _positive(ha.test_vm_memory_mib, "ha.testVmMemoryMiB", problems, 128, 65536)
        _positive(ha.test_vm_disk_gib, "ha.testVmDiskGiB", problems, 1, 1024)
        _positive(ha.test_vmid_base, "ha.testVmidBase", problems, 100, PVE_VMID_MAX - ha.test_vms)
        names = [hostname(spec, i) for i in range(n.count)]
        if ha.preferred_node is not None and ha.preferred_node not in names:
            problems.append(f"{_key('ha.preferredNode')}: '{ha.preferred_node}' is not a lab node (nodes: {', '.join(names)})")
        if not HA_RULE_RE.match(ha.rule_name):
            problems.append(f"{_key('ha.ruleName')}: '{ha.rule_name}' is not allowed: lowercase, starting with a letter, [a-z0-9_-]")

    # repository and image must match the PVE version (PVE 9 = Debian 13 trixie, PVE 8 = Debian 12 bookworm)
    repo = spec.repository
    if repo.component not in ("pve-no-subscription", "pve-enterprise", "pvetest"):
        problems.append(f"{_key('repository.component')}: '{repo.component}' (allowed: pve-no-subscription, pve-enterprise, pvetest)")
    if repo.keyring_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", repo.keyring_sha256):
        problems.append(f"{_key('repository.keyringSha256')}: must be 64 lower-case hex digits (a sha256)")
    if spec.pve_version == 8 and not (repo.keyring_url and repo.keyring_sha256):
        problems.append(
            f"{_key('repository.keyringSha256')}: PVE 8 needs repository.keyringUrl and repository.keyringSha256 "
            f"(the bookworm keyring and its sha256; only PVE 9's is built in)"
        )
    wrong_release = {9: ("bookworm", "debian-12"), 8: ("trixie", "debian-13")}.get(spec.pve_version, ())
    if any(w in spec.image.url for w in wrong_release):
        problems.append(
            f"{_key('image.url')}: this image does not match pveVersion {spec.pve_version} "
            f"(PVE 9 needs a Debian 13 trixie image, PVE 8 a Debian 12 bookworm image)"
        )

    # image
    if not re.match(r"^https?://\S+$", spec.image.url):
        problems.append(f"{_key('image.url')}: '{spec.image.url}' is not an http(s) URL")
    if spec.image.file_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+:import/[A-Za-z0-9._-]+", spec.image.file_id):
        problems.append(f"{_key('image.fileId')}: '{spec.image.file_id}' is not a volume id like local:import/debian-13.qcow2")
    if not re.fullmatch(r"[A-Za-z0-9._-]+\.(qcow2|img|raw)", spec.image.file_name):
        problems.append(f"{_key('image.fileName')}: '{spec.image.file_name}' must be a plain file name ending in .qcow2, .img or .raw")
    for k in ("install_s", "reboot_s", "ready_s", "quorum_s"):
        _positive(getattr(spec.timeouts, k), "timeouts." + _camel(k), problems, 30, 7200)
    for i, t in enumerate(spec.tags):
        if not re.fullmatch(r"[a-z0-9_.+-]+", t):
            problems.append(f"{_key(f'tags[{i}]')}: '{t}' is not a PVE tag (lowercase letters, digits, _ . + -)")
    if spec.student is not None:
        problems += validate_student(spec)
    from .apt_proxy import validate_apt_proxy  # their own modules; they import this one
    from .node_template import validate_template

    problems += validate_template(spec) + validate_apt_proxy(spec)
    return problems


USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9._-]*$")
POOL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
VNET_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # PVE SDN: VNet ids are at most 8 characters
ROLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Roles that would let a student reach beyond their own VMs (other pools, users, the host, SDN config).
ADMIN_ROLES = frozenset({"Administrator", "PVEAdmin", "PVEVMAdmin", "PVESysAdmin", "PVEUserAdmin", "PVEPoolAdmin",
                         "PVEDatastoreAdmin", "PVESDNAdmin", "PVEMappingAdmin"})


def validate_student(spec: LabSpec) -> list[str]:
    st, problems = spec.student, []
    assert st is not None
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", st.id or ""):
        problems.append(f"{_key('student.id')}: '{st.id}' is not allowed: lowercase letters, digits and '-'")
    if not USER_RE.match(st.user or ""):
        problems.append(f"{_key('student.user')}: '{st.user}' is not a PVE user id like s01@pve")
    if not POOL_ID_RE.match(st.pool or ""):
        problems.append(f"{_key('student.pool')}: '{st.pool}' is not a pool id (letters, digits, '_', '-')")
    if not ROLE_RE.match(st.role or "") or st.role in ADMIN_ROLES:
        problems.append(
            f"{_key('student.role')}: '{st.role}' is not allowed: a role id, not an admin role "
            f"({', '.join(sorted(ADMIN_ROLES))}); use PVEVMUser or a console-only custom role"
        )
    net = st.network
    if net.mode == "vlan":
        if net.vlan_tag is None:
            problems.append(f"{_key('student.network.vlanTag')}: missing; mode vlan needs the student's VLAN tag (1..4094)")
        else:
            _positive(net.vlan_tag, "student.network.vlanTag", problems, 1, 4094)
    elif net.mode == "sdn":
        if not net.zone:
            problems.append(f"{_key('student.network.zone')}: missing; mode sdn needs an existing SDN zone")
        if not VNET_RE.match(net.vnet or ""):
            problems.append(f"{_key('student.network.vnet')}: '{net.vnet}' is not a VNet id (lowercase, starts with a letter, at most 8)")
        if net.vnet_tag is None:
            problems.append(f"{_key('student.network.vnetTag')}: missing; the VNet's VLAN id or VXLAN VNI")
        else:
            _positive(net.vnet_tag, "student.network.vnetTag", problems, 1, 16_777_215)
    else:
        problems.append(f"{_key('student.network.mode')}: '{net.mode}' (allowed: vlan, sdn)")
    return problems


SECRET_LOOKING_KEYS = re.compile(r"(password|token|secret|privatekey)", re.IGNORECASE)


def _find_secret_keys(raw: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            sub = f"{path}.{k}" if path else str(k)
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
API_TOKEN_RE = re.compile(r"^[^@\s]+@[^!\s]+![^=\s]+=[0-9a-fA-F-]{8,}$")


def check_secrets(api_token: Optional[str], ssh_private_key: Optional[str], ssh_public_key: Optional[str]) -> list[str]:
    """Problems with the secret config keys. Values are never echoed back."""
    problems = []
    if not api_token:
        problems.append(
            f"{CONFIG_NAMESPACE}:outerApiToken: missing; set it with "
            f"`pulumi config set --secret {CONFIG_NAMESPACE}:outerApiToken 'root@pam!lab=<uuid>'`"
        )
    elif not API_TOKEN_RE.match(api_token):
        problems.append(f"{CONFIG_NAMESPACE}:outerApiToken: not of the form 'user@realm!tokenid=uuid' (value hidden)")
    if bool(ssh_private_key) != bool(ssh_public_key):
        problems.append(
            f"{CONFIG_NAMESPACE}:sshPrivateKey / {CONFIG_NAMESPACE}:sshPublicKey: give both or neither "
            f"(a key pair is generated when both are absent)"
        )
    elif ssh_private_key and "PRIVATE KEY" not in ssh_private_key:
        problems.append(f"{CONFIG_NAMESPACE}:sshPrivateKey: not an OpenSSH/PEM private key (value hidden)")
    return problems

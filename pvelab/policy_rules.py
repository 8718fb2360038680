"""The classroom guardrails as pure rules over (type, name, props) resources.

One set of rules, three users: the Pulumi policy pack (`policy/`, run with `pulumi up --policy-pack policy`),
`classroom plan` (over resources built from the plan, or over the mock-runtime records with --evaluate)
and the tests. Nothing here imports Pulumi.

- Class limits (config, from the roster's `limits`): per-student nested nodes, vCPUs, RAM and disk on the
  outer host; allowed outer nodes and storages; the class's VMID range.
- Lab sanity: an odd count of at least 3 nested nodes, CPU type host (nested virtualization), NIC firewall
  off (the outer MAC filter would drop nested guests), stop-on-destroy, unique VMIDs, and, for a student's
  stack, isolation: every VM in the student's pool, on the student's own network, ACLs only for the
  student's own user on their own pool and network, and no admin role.

A resource is "outer" (on the outer host) unless its provider is the lab's inner provider (`<lab>-inner`,
the nested cluster's API): limits count only what the class takes from the outer host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from .spec import ADMIN_ROLES  # roles that reach beyond a student's own VMs

VM = "proxmoxve:index/vmLegacy:VmLegacy"
POOL = "proxmoxve:index/poolLegacy:PoolLegacy"
USER = "proxmoxve:index/userLegacy:UserLegacy"
ACL = "proxmoxve:index/acl:Acl"
VNET = "proxmoxve:sdn/vnet:Vnet"
IMAGE = "proxmoxve:download/fileLegacy:FileLegacy"


LIMIT_POLICY = "pve-lab-class-limits"  # resource policy: checked on each resource's inputs, before it is created
SANITY_POLICY = "pve-lab-sanity"  # resource policy: each VM and ACL on its own
STACK_POLICY = "pve-lab-stack"  # stack policy: node count, unique VMIDs, isolation (needs the whole stack)


@dataclass(frozen=True)
class Res:
    type: str
    name: str
    props: Mapping[str, Any]
    provider: str = ""  # the provider resource's name, "" when not known

    @property
    def outer(self) -> bool:
        return not self.provider.endswith("-inner")


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    resource: str = ""  # the resource's name, "" for the stack as a whole

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource + ': ' if self.resource else ''}{self.message}"


@dataclass(frozen=True)
class ClassLimits:
    max_nodes: Optional[int] = None
    max_cores: Optional[int] = None
    max_memory_gib: Optional[float] = None
    max_disk_gib: Optional[float] = None
    allowed_nodes: tuple[str, ...] = ()
    allowed_storages: tuple[str, ...] = ()
    vmid_min: Optional[int] = None
    vmid_max: Optional[int] = None
    require_student: bool = False  # a class stack must have its student's pool, user and ACLs

    CONFIG_KEYS = {"maxNodes": "max_nodes", "maxCores": "max_cores", "maxMemoryGiB": "max_memory_gib",
                   "maxDiskGiB": "max_disk_gib", "allowedNodes": "allowed_nodes", "allowedStorages": "allowed_storages",
                   "vmidMin": "vmid_min", "vmidMax": "vmid_max", "requireStudent": "require_student"}

    INTEGER_ATTRS = ("max_nodes", "max_cores", "vmid_min", "vmid_max")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ClassLimits":
        """Policy config (camelCase keys, as in the policy-pack config file) -> limits; unknown keys are refused."""
        kwargs: dict[str, Any] = {}
        for key, value in (config or {}).items():
            if key == "enforcementLevel":
                continue
            if key not in cls.CONFIG_KEYS:
                raise ValueError(f"policy config {LIMIT_POLICY}.{key}: unknown key (allowed: {', '.join(sorted(cls.CONFIG_KEYS))})")
            attr = cls.CONFIG_KEYS[key]
            if attr.startswith("allowed"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"policy config {LIMIT_POLICY}.{key}: expected a list of names, got {value!r}")
                value = tuple(value)
            elif attr == "require_student":
                if not isinstance(value, bool):
                    raise ValueError(f"policy config {LIMIT_POLICY}.{key}: expected true or false, got {value!r}")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"policy config {LIMIT_POLICY}.{key}: expected a number, got {value!r}")
            elif attr in cls.INTEGER_ATTRS and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"policy config {LIMIT_POLICY}.{key}: expected a whole number, got {value!r}")
                value = int(value)  # the engine hands JSON numbers to the pack as floats (protobuf Struct)
            kwargs[attr] = value
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        out = {}
        for key, attr in self.CONFIG_KEYS.items():
            value = getattr(self, attr)
            if value not in (None, ()):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


# JSON schema of the limits, for the policy pack's config_schema.
LIMITS_SCHEMA = {
    "maxNodes": {"type": "integer", "minimum": 1}, "maxCores": {"type": "integer", "minimum": 1},
    "maxMemoryGiB": {"type": "number", "minimum": 0}, "maxDiskGiB": {"type": "number", "minimum": 0},
    "allowedNodes": {"type": "array", "items": {"type": "string"}},
    "allowedStorages": {"type": "array", "items": {"type": "string"}},
    "vmidMin": {"type": "integer", "minimum": 100}, "vmidMax": {"type": "integer", "minimum": 100},
    "requireStudent": {"type": "boolean"},
}


# ---------------------------------------------------------------- reading props (preview-safe)


class _Unknown:
    """A value the engine does not know yet (a preview, or an input computed from a resource not yet created)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


def _open(value: Any) -> Any:
    """A pulumi-policy Secret wrapper opened (the rules never read secret values themselves)."""
    while type(value).__name__ == "Secret" and hasattr(value, "value"):
        value = value.value
    return value


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    """mapping[key], touching nothing else: pulumi-policy raises UnknownValueError for an unknown value as soon as
    it is read, and a rule that read every prop (RandomPassword results, SDN bridges) would become advisory."""
    mapping = _open(mapping)
    if isinstance(mapping, _Unknown) or not hasattr(mapping, "get"):
        return default
    try:
        return _open(mapping.get(key, default))
    except Exception as exc:  # pulumi_policy.proxy.UnknownValueError, matched by name: no import here
        if type(exc).__name__ == "UnknownValueError":
            return UNKNOWN
        raise


def _items(seq: Any) -> list[Any]:
    """A list's items (each may be UNKNOWN); [] for a missing or unknown list."""
    seq = _open(seq)
    if seq is None or isinstance(seq, (_Unknown, str)):
        return []
    out = []
    for i in range(len(seq)):
        try:
            out.append(_open(seq[i]))
        except Exception as exc:
            if type(exc).__name__ != "UnknownValueError":
                raise
            out.append(UNKNOWN)
    return out


def known(value: Any) -> bool:
    return not isinstance(value, _Unknown)


def as_res(item: Any) -> Res:
    """A Res from a Res, a (type, name, props[, provider]) tuple, or a mock-runtime Record."""
    if isinstance(item, Res):
        return item
    if isinstance(item, tuple):
        return Res(*item)
    from .evaluate import unwrap  # a Record: unwrap secrets, name its provider

    provider = (item.provider or "").rsplit("::", 1)[0]
    return Res(item.type, item.name, unwrap(item.inputs), provider.rsplit("::", 1)[-1] if provider else "")


def _num(value: Any, default: float = 0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _vms(resources: Sequence[Res]) -> list[Res]:
    return [r for r in resources if r.type == VM and r.outer]


def _cores(vm: Res) -> int:
    cpu = _get(vm.props, "cpu") or {}
    return int(_num(_get(cpu, "cores"), 1) * _num(_get(cpu, "sockets"), 1))


def _memory_mib(vm: Res) -> float:
    return _num(_get(_get(vm.props, "memory") or {}, "dedicated"), 512)


def _disk_gib(vm: Res) -> float:
    return sum(_num(_get(d, "size"), 8) for d in _items(_get(vm.props, "disks")))


def _storages(r: Res) -> list[tuple[str, str]]:
    """(what, storage id) pairs a resource puts data on (unknown ones left out)."""
    p, found = r.props, []
    if r.type == VM:
        for d in _items(_get(p, "disks")):
            interface = _get(d, "interface", "?")
            found.append((f"disk {interface}", _get(d, "datastoreId")))
            image = _get(d, "importFrom")
            if isinstance(image, str) and ":" in image:
                found.append((f"disk {interface} image", image.split(":", 1)[0]))
        efi = _get(p, "efiDisk")
        if efi and known(efi):
            found.append(("EFI disk", _get(efi, "datastoreId")))
        init = _get(p, "initialization")
        if init and known(init):
            found.append(("cloud-init disk", _get(init, "datastoreId")))
    elif r.type == IMAGE:
        found.append(("image", _get(p, "datastoreId")))
    return [(what, s) for what, s in found if s and known(s)]


def _vmid_text(vmid: Any) -> str:
    """A VMID as PVE writes it (the engine sends numbers as floats: 20000.0)."""
    return str(int(vmid)) if isinstance(vmid, (int, float)) and float(vmid).is_integer() else str(vmid)


def nic_tag(nic: Any) -> Any:
    """A NIC's VLAN tag; bpg's default vlanId 0 means "no tag" (proxmox/resource/vm: 0 is not sent as `tag=`)."""
    tag = _get(nic, "vlanId")
    return None if tag in (None, 0) else tag


# ---------------------------------------------------------------- class limits, one resource at a time


def resource_limit_violations(r: Res, limits: ClassLimits) -> list[Violation]:
    """The limits a single outer VM or image download can break on its own: outer node, storages, VMID range."""
    if not r.outer or r.type not in (VM, IMAGE):
        return []
    rule, out = "class-limits", []
    node = _get(r.props, "nodeName")
    if limits.allowed_nodes and known(node) and node not in limits.allowed_nodes:
        out.append(Violation(rule, f"outer node '{node}' is not allowed (allowed: {', '.join(limits.allowed_nodes)})", r.name))
    if limits.allowed_storages:
        for what, storage in _storages(r):
            if storage not in limits.allowed_storages:
                out.append(Violation(rule, f"{what} on storage '{storage}', which is not allowed "
                                           f"(allowed: {', '.join(limits.allowed_storages)})", r.name))
    vmid = _get(r.props, "vmId")
    if r.type == VM and known(vmid) and (limits.vmid_min is not None or limits.vmid_max is not None):
        vmid = int(_num(vmid, -1))
        lo, hi = limits.vmid_min or 100, limits.vmid_max or 999_999_999
        if not lo <= vmid <= hi:
            out.append(Violation(rule, f"VMID {vmid} is outside the class's range {lo}..{hi}", r.name))
    return out


def total_violations(vms: Sequence[Res], limits: ClassLimits, resource: str = "") -> list[Violation]:
    """A student's nested nodes together against the per-student limits."""
    rule, out = "class-limits", []
    if limits.max_nodes is not None and len(vms) > limits.max_nodes:
        out.append(Violation(rule, f"{len(vms)} nested nodes; the class allows {limits.max_nodes} per student", resource))
    totals = (("vCPUs", sum(_cores(v) for v in vms), limits.max_cores, ""),
              ("RAM", sum(_memory_mib(v) for v in vms) / 1024, limits.max_memory_gib, " GiB"),
              ("disk", sum(_disk_gib(v) for v in vms), limits.max_disk_gib, " GiB"))
    for what, used, limit, unit in totals:
        if limit is not None and used > limit + 1e-9:
            out.append(Violation(rule, f"{used:g}{unit} {what} over all nested nodes; the class allows {limit:g}{unit} "
                                       f"per student", resource))
    return out


class StackTally:
    """The outer VMs of one stack seen so far by a resource policy, keyed by URN (a resource analyzed twice counts
    once). A resource policy runs before its resource is created, so the VM that takes a student over a limit is
    refused before it exists, in `preview` and in `up`."""

    def __init__(self) -> None:
        self.vms: dict[str, Res] = {}

    def add(self, key: str, vm: Res, limits: ClassLimits) -> list[Violation]:
        if vm.type != VM or not vm.outer:
            return []
        self.vms[key] = vm
        out = total_violations(list(self.vms.values()), limits, vm.name)
        vmid = _get(vm.props, "vmId")
        if known(vmid) and vmid is not None:
            for other_key, other in self.vms.items():
                if other_key != key and _get(other.props, "vmId") == vmid:
                    out.append(Violation("unique-vmids", f"VMID {_vmid_text(vmid)} is also used by {other.name}",
                                         vm.name))
        return out


def student_section_violation(r: Res, limits: ClassLimits) -> list[Violation]:
    """In a class stack every outer VM is in the student's pool (the stack has a student section)."""
    if not limits.require_student or r.type != VM or not r.outer:
        return []
    pool = _get(r.props, "poolId")
    if known(pool) and not pool:
        return [Violation("class-limits", "a class stack must have a student section (its own pool, user and ACLs); "
                                          "render it with `python -m pvelab classroom render`", r.name)]
    return []


def check_class_limits(resources: Iterable[Any], limits: ClassLimits) -> list[Violation]:
    res = [as_res(r) for r in resources]
    out = total_violations(_vms(res), limits)
    for r in res:
        out += resource_limit_violations(r, limits)
    if limits.require_student and not any(r.type == POOL for r in res):
        out.append(Violation("class-limits", "a class stack must have a student section (its own pool, user and ACLs); "
                                             "render it with `python -m pvelab classroom render`"))
    return out


# ---------------------------------------------------------------- lab sanity


def vm_sanity_violations(vm: Res) -> list[Violation]:
    """What one outer VM gets wrong on its own: CPU type, NIC firewall, stop on destroy."""
    if vm.type != VM or not vm.outer:
        return []
    out, p = [], vm.props
    cpu_type = _get(_get(p, "cpu") or {}, "type")
    if known(cpu_type) and cpu_type != "host":
        out.append(Violation("nested-virtualization", f"CPU type '{cpu_type}'; nested PVE nodes need 'host' to run "
                                                      f"their own VMs", vm.name))
    for i, nic in enumerate(_items(_get(p, "networkDevices"))):
        firewall = _get(nic, "firewall", False)
        if known(firewall) and firewall is not False:
            out.append(Violation("nic-firewall-off", f"networkDevices[{i}] has the firewall on; its MAC filter "
                                                     f"drops the nested guests' traffic", vm.name))
    stop = _get(p, "stopOnDestroy")
    if known(stop) and stop is not True:
        out.append(Violation("destroy-safe", "stopOnDestroy is not set; destroy would wait on a hung nested node", vm.name))
    return out


def acl_violations(acl: Res) -> list[Violation]:
    """What one ACL of a student's stack gets wrong on its own: a group or token, an admin role, a path outside
    pools and SDN zones."""
    if acl.type != ACL:
        return []
    rule, out, p = "student-isolation", [], acl.props
    group, token = _get(p, "groupId"), _get(p, "tokenId")
    if (group and known(group)) or (token and known(token)):
        out.append(Violation(rule, f"ACL for '{group or token}'; a student's stack grants only its own user", acl.name))
    role = _get(p, "roleId")
    if known(role) and role in ADMIN_ROLES:
        out.append(Violation(rule, f"role '{role}' is an admin role; students get PVEVMUser (or a console-only role) "
                                   f"on their pool and PVESDNUser on their network", acl.name))
    path = _get(p, "path")
    if known(path) and isinstance(path, str) and not (path.startswith("/pool/") or path.startswith("/sdn/zones/")):
        out.append(Violation(rule, f"ACL on '{path}', outside the student's own pool and network", acl.name))
    return out


def quorum_violations(vms: Sequence[Res]) -> list[Violation]:
    if vms and (len(vms) < 3 or len(vms) % 2 == 0):
        return [Violation("quorum", f"{len(vms)} nested nodes; a class lab needs an odd count of at least 3 so that "
                                    f"losing one node keeps quorum")]
    return []


def unique_vmid_violations(vms: Sequence[Res]) -> list[Violation]:
    out, seen = [], {}
    for vm in vms:
        vmid = _get(vm.props, "vmId")
        if not known(vmid):
            continue
        if vmid in seen:
            out.append(Violation("unique-vmids", f"VMID {_vmid_text(vmid)} is also used by {seen[vmid]}", vm.name))
        seen[vmid] = vm.name
    return out


def check_lab_sanity(resources: Iterable[Any]) -> list[Violation]:
    res = [as_res(r) for r in resources]
    vms = _vms(res)
    out = quorum_violations(vms)
    for vm in vms:
        out += vm_sanity_violations(vm)
    out += unique_vmid_violations(vms)
    out += check_isolation(res)
    return out


def check_stack(resources: Iterable[Any]) -> list[Violation]:
    """The rules that need the whole stack (node count, unique VMIDs, isolation), reading only known values."""
    res = [as_res(r) for r in resources]
    vms = _vms(res)
    return quorum_violations(vms) + unique_vmid_violations(vms) + check_isolation(res)


def check_isolation(res: Sequence[Res]) -> list[Violation]:
    """A student's stack: only their own pool, network, VMs and ACLs. A user of another realm is not created by the
    stack (it must exist): then the ACLs name it and there is no user resource."""
    pools = [r for r in res if r.type == POOL]
    users = [r for r in res if r.type == USER]
    acls = [r for r in res if r.type == ACL]
    vnets = [r for r in res if r.type == VNET]
    if not (pools or users or acls or vnets):
        return []  # a lone lab: no student
    rule, out = "student-isolation", []
    acl_users = {_get(a.props, "userId") for a in acls if _get(a.props, "userId") and known(_get(a.props, "userId"))}
    if len(pools) != 1 or len(users) > 1 or (not users and len(acl_users) != 1):
        return [Violation(rule, f"a student's stack has exactly one pool and one user (found {len(pools)} pool(s), "
                                f"{len(users) or len(acl_users)} user(s))")]
    pool = _get(pools[0].props, "poolId")
    user = _get(users[0].props, "userId") if users else next(iter(acl_users))
    vnet_ids = {_get(v.props, "resourceId") for v in vnets}
    allowed_paths = {f"/pool/{pool}"}
    allowed_paths |= {f"/sdn/zones/{_get(v.props, 'zone')}/{_get(v.props, 'resourceId')}" for v in vnets}
    vlan_paths = set()
    for vm in _vms(res):
        vm_pool = _get(vm.props, "poolId")
        if known(vm_pool) and known(pool) and vm_pool != pool:
            out.append(Violation(rule, f"VM is in pool '{vm_pool}', not the student's pool '{pool}'", vm.name))
        for i, nic in enumerate(_items(_get(vm.props, "networkDevices"))):
            bridge, tag = _get(nic, "bridge"), nic_tag(nic)
            if not known(bridge) or not known(tag):
                continue
            if vnets:
                if bridge not in vnet_ids or tag is not None:
                    out.append(Violation(rule, f"networkDevices[{i}] is on '{bridge}'"
                                               f"{f' tag {tag}' if tag is not None else ''}, not the student's VNet "
                                               f"({', '.join(sorted(map(str, vnet_ids)))})", vm.name))
            elif tag is None:
                out.append(Violation(rule, f"networkDevices[{i}] on '{bridge}' has no VLAN tag: it would share the "
                                           f"untagged network with everyone", vm.name))
            else:
                vlan_paths.add(f"/sdn/zones/localnetwork/{bridge}/{int(_num(tag))}")
    allowed_paths |= vlan_paths
    granted, unknown_path = set(), False
    for acl in acls:
        p = acl.props
        acl_user, group, token = _get(p, "userId"), _get(p, "groupId"), _get(p, "tokenId")
        if (group and known(group)) or (token and known(token)) or (known(acl_user) and known(user)
                                                                      and acl_user != user):
            who = acl_user or group or token
            out.append(Violation(rule, f"ACL for '{who}'; a student's stack grants only its own user '{user}'", acl.name))
        role = _get(p, "roleId")
        if known(role) and role in ADMIN_ROLES:
            out.append(Violation(rule, f"role '{role}' is an admin role; students get PVEVMUser (or a "
                                       f"console-only role) on their pool and PVESDNUser on their network", acl.name))
        path = _get(p, "path")
        if not known(path):
            unknown_path = True
            continue
        if path not in allowed_paths:
            out.append(Violation(rule, f"ACL on '{path}', outside the student's own pool and network "
                                       f"({', '.join(sorted(map(str, allowed_paths)))})", acl.name))
        granted.add(path)
    if unknown_path:
        return out  # preview: an ACL's path is computed from a resource not created yet
    if f"/pool/{pool}" not in granted:
        out.append(Violation(rule, f"no ACL gives '{user}' access to their pool /pool/{pool} (they could not open "
                                   f"their consoles)"))
    if not (granted & (allowed_paths - {f'/pool/{pool}'})):
        out.append(Violation(rule, f"no ACL gives '{user}' their own network (PVESDNUser on their VNet or VLAN)"))
    return out


def check_all(resources: Iterable[Any], limits: Optional[ClassLimits] = None) -> list[Violation]:
    res = [as_res(r) for r in resources]
    return check_class_limits(res, limits or ClassLimits()) + check_lab_sanity(res)


# ---------------------------------------------------------------- resources from a spec (for `classroom plan`)


def resources_from_spec(spec: Any) -> list[Res]:
    """The outer-host resources a student's stack declares, built from its spec without running the program.

    Fast (no mock runtime), for planning a whole class; tests compare it with the evaluated program.
    """
    res: list[Res] = []
    n, o = spec.nodes, spec.outer
    st = spec.student
    bridge, tag = o.bridge, o.vlan_tag
    pool = o.pool
    if st is not None:
        pool = st.pool
        if st.network.mode == "sdn":
            bridge, tag = st.network.vnet, None
            res.append(Res(VNET, "lab-student-vnet", {"resourceId": st.network.vnet, "zone": st.network.zone,
                                                      "tag": st.network.vnet_tag}, "outer"))
            net_path = f"/sdn/zones/{st.network.zone}/{st.network.vnet}"
        else:
            tag = st.network.vlan_tag
            net_path = f"/sdn/zones/localnetwork/{bridge}/{tag}"
        from .classroom.realms import stack_owns_user

        res.append(Res(POOL, "lab-student-pool", {"poolId": st.pool}, "outer"))
        if stack_owns_user(st.user, st.pool):  # any other account exists already: the stack only grants ACLs
            res.append(Res(USER, "lab-student-user", {"userId": st.user}, "outer"))
        res += [Res(ACL, "lab-student-acl-pool", {"path": f"/pool/{st.pool}", "roleId": st.role, "userId": st.user,
                                                  "propagate": True}, "outer"),
                Res(ACL, "lab-student-acl-network", {"path": net_path, "roleId": "PVESDNUser", "userId": st.user,
                                                     "propagate": False}, "outer")]
    image_id = spec.image.file_id or f"{o.image_storage}:import/{spec.image.file_name}"
    if not spec.image.file_id:
        res.append(Res(IMAGE, "lab-image", {"nodeName": o.node, "datastoreId": o.image_storage}, "outer"))
    for plan in spec.node_plans:
        disks = [{"interface": "scsi0", "datastoreId": o.storage, "size": n.system_disk_gib, "importFrom": image_id}]
        disks += [{"interface": f"scsi{k + 1}", "datastoreId": o.storage, "size": n.ceph_disk_gib}
                  for k in range(n.ceph_disks)]
        nic = {"bridge": bridge, "firewall": False, **({"vlanId": tag} if tag is not None else {})}
        props = {"vmId": plan.vmid, "nodeName": o.node, "poolId": pool, "cpu": {"type": "host", "cores": n.cores,
                 "sockets": 1}, "memory": {"dedicated": n.memory_mib}, "disks": disks, "networkDevices": [nic],
                 "initialization": {"datastoreId": o.storage}, "stopOnDestroy": True}
        if n.bios == "ovmf":
            props["efiDisk"] = {"datastoreId": o.storage}
        res.append(Res(VM, f"lab-{plan.hostname}-vm", props, "outer"))
    return res

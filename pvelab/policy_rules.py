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


LIMIT_POLICY = "pve-lab-class-limits"
SANITY_POLICY = "pve-lab-sanity"


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


# ---------------------------------------------------------------- reading props


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
    cpu = vm.props.get("cpu") or {}
    return int(_num(cpu.get("cores"), 1) * _num(cpu.get("sockets"), 1))


def _memory_mib(vm: Res) -> float:
    return _num((vm.props.get("memory") or {}).get("dedicated"), 512)


def _disk_gib(vm: Res) -> float:
    return sum(_num(d.get("size"), 8) for d in vm.props.get("disks") or [])


def _storages(r: Res) -> list[tuple[str, str]]:
    """(what, storage id) pairs a resource puts data on."""
    p, found = r.props, []
    if r.type == VM:
        for d in p.get("disks") or []:
            found.append((f"disk {d.get('interface', '?')}", d.get("datastoreId")))
            if isinstance(d.get("importFrom"), str) and ":" in d["importFrom"]:
                found.append((f"disk {d.get('interface', '?')} image", d["importFrom"].split(":", 1)[0]))
        if p.get("efiDisk"):
            found.append(("EFI disk", p["efiDisk"].get("datastoreId")))
        if p.get("initialization"):
            found.append(("cloud-init disk", p["initialization"].get("datastoreId")))
    elif r.type == IMAGE:
        found.append(("image", p.get("datastoreId")))
    return [(what, s) for what, s in found if s]


# ---------------------------------------------------------------- class limits


def check_class_limits(resources: Iterable[Any], limits: ClassLimits) -> list[Violation]:
    res = [as_res(r) for r in resources]
    vms, out = _vms(res), []
    rule = "class-limits"
    if limits.max_nodes is not None and len(vms) > limits.max_nodes:
        out.append(Violation(rule, f"{len(vms)} nested nodes; the class allows {limits.max_nodes} per student"))
    totals = (("vCPUs", sum(_cores(v) for v in vms), limits.max_cores, ""),
              ("RAM", sum(_memory_mib(v) for v in vms) / 1024, limits.max_memory_gib, " GiB"),
              ("disk", sum(_disk_gib(v) for v in vms), limits.max_disk_gib, " GiB"))
    for what, used, limit, unit in totals:
        if limit is not None and used > limit + 1e-9:
            out.append(Violation(rule, f"{used:g}{unit} {what} over all nested nodes; the class allows {limit:g}{unit} per student"))
    for r in res:
        if not r.outer or r.type not in (VM, IMAGE):
            continue
        node = r.props.get("nodeName")
        if limits.allowed_nodes and node not in limits.allowed_nodes:
            out.append(Violation(rule, f"outer node '{node}' is not allowed (allowed: {', '.join(limits.allowed_nodes)})", r.name))
        if limits.allowed_storages:
            for what, storage in _storages(r):
                if storage not in limits.allowed_storages:
                    out.append(Violation(rule, f"{what} on storage '{storage}', which is not allowed "
                                               f"(allowed: {', '.join(limits.allowed_storages)})", r.name))
        if r.type == VM and (limits.vmid_min is not None or limits.vmid_max is not None):
            vmid = int(_num(r.props.get("vmId"), -1))
            lo, hi = limits.vmid_min or 100, limits.vmid_max or 999_999_999
            if not lo <= vmid <= hi:
                out.append(Violation(rule, f"VMID {vmid} is outside the class's range {lo}..{hi}", r.name))
    if limits.require_student and not any(r.type == POOL for r in res):
        out.append(Violation(rule, "a class stack must have a student section (its own pool, user and ACLs); "
                                   "render it with `python -m pvelab classroom render`"))
    return out


# ---------------------------------------------------------------- lab sanity


def check_lab_sanity(resources: Iterable[Any]) -> list[Violation]:
    res = [as_res(r) for r in resources]
    vms, out = _vms(res), []
    if vms and (len(vms) < 3 or len(vms) % 2 == 0):
        out.append(Violation("quorum", f"{len(vms)} nested nodes; a class lab needs an odd count of at least 3 so "
                                       f"that losing one node keeps quorum"))
    seen: dict[Any, str] = {}
    for vm in vms:
        p = vm.props
        if (p.get("cpu") or {}).get("type") != "host":
            out.append(Violation("nested-virtualization", f"CPU type '{(p.get('cpu') or {}).get('type')}'; nested PVE "
                                                          f"nodes need 'host' to run their own VMs", vm.name))
        for i, nic in enumerate(p.get("networkDevices") or []):
            if nic.get("firewall", False) is not False:
                out.append(Violation("nic-firewall-off", f"networkDevices[{i}] has the firewall on; its MAC filter "
                                                         f"drops the nested guests' traffic", vm.name))
        if p.get("stopOnDestroy") is not True:
            out.append(Violation("destroy-safe", "stopOnDestroy is not set; destroy would wait on a hung nested node", vm.name))
        vmid = p.get("vmId")
        if vmid in seen:
            out.append(Violation("unique-vmids", f"VMID {vmid} is also used by {seen[vmid]}", vm.name))
        seen[vmid] = vm.name
    out += check_isolation(res)
    return out


def check_isolation(res: Sequence[Res]) -> list[Violation]:
    """A student's stack: only their own pool, network, VMs and ACLs."""
    pools = [r for r in res if r.type == POOL]
    users = [r for r in res if r.type == USER]
    acls = [r for r in res if r.type == ACL]
    vnets = [r for r in res if r.type == VNET]
    if not (pools or users or acls or vnets):
        return []  # a lone lab: no student
    rule, out = "student-isolation", []
    if len(pools) != 1 or len(users) != 1:
        return [Violation(rule, f"a student's stack has exactly one pool and one user (found {len(pools)} pool(s), "
                                f"{len(users)} user(s))")]
    pool, user = pools[0].props.get("poolId"), users[0].props.get("userId")
    vnet_ids = {v.props.get("resourceId") for v in vnets}
    allowed_paths = {f"/pool/{pool}"}
    allowed_paths |= {f"/sdn/zones/{v.props.get('zone')}/{v.props.get('resourceId')}" for v in vnets}
    vlan_paths = set()
    for vm in _vms(res):
        if vm.props.get("poolId") != pool:
            out.append(Violation(rule, f"VM is in pool '{vm.props.get('poolId')}', not the student's pool '{pool}'", vm.name))
        for i, nic in enumerate(vm.props.get("networkDevices") or []):
            bridge, tag = nic.get("bridge"), nic.get("vlanId")
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
    granted = set()
    for acl in acls:
        p = acl.props
        if p.get("groupId") or p.get("tokenId") or p.get("userId") != user:
            who = p.get("userId") or p.get("groupId") or p.get("tokenId")
            out.append(Violation(rule, f"ACL for '{who}'; a student's stack grants only its own user '{user}'", acl.name))
        if p.get("roleId") in ADMIN_ROLES:
            out.append(Violation(rule, f"role '{p.get('roleId')}' is an admin role; students get PVEVMUser (or a "
                                       f"console-only role) on their pool and PVESDNUser on their network", acl.name))
        if p.get("path") not in allowed_paths:
            out.append(Violation(rule, f"ACL on '{p.get('path')}', outside the student's own pool and network "
                                       f"({', '.join(sorted(allowed_paths))})", acl.name))
        granted.add(p.get("path"))
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
        res += [Res(POOL, "lab-student-pool", {"poolId": st.pool}, "outer"),
                Res(USER, "lab-student-user", {"userId": st.user}, "outer"),
                Res(ACL, "lab-student-acl-pool", {"path": f"/pool/{st.pool}", "roleId": st.role, "userId": st.user,
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

"""`preflight`: check the outer PVE host before anything is built; one PASS/FAIL/WARN line per check, with the fix.

Nested virtualization is judged from GET /nodes/{node}/capabilities/qemu/cpu-flags?accel=kvm: PVE 9 lists
its `nested-virt` flag there with `supported-on` = the nodes whose KVM offers vmx/svm to guests. That list
comes from what KVM itself reports (pvestatd caches it), so it reflects the kvm_intel/kvm_amd `nested`
module parameter, not just the CPU. Older PVE versions lack that answer; then the CPU flags of GET
/nodes/{node}/status show whether VT-x/AMD-V exists at all, and whether nesting is on stays a WARN with the
command to check it on the host.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from ..classroom.realms import PASSWORD_REALM, realm_of, stack_owns_user
from ..footprint import NODE_TAG, QDEVICE_TAG, outer_vms
from ..spec import LabSpec
from .api import ApiError, PveClient

MiB, GiB = 1024 ** 2, 1024 ** 3
IMAGE_DOWNLOAD_GIB = 1  # a Debian 13 genericcloud qcow2 is ~0.4 GiB; leave room
# Storage types whose disks are thin (allocated as written): a class may overcommit them, with a warning.
THIN_STORAGE_TYPES = ("lvmthin", "zfspool", "rbd")

VM_PRIVS = ("VM.Allocate", "VM.Audit", "VM.PowerMgmt", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit",
            "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options")


@dataclass(frozen=True)
class Requirement:
    """What has to fit on the outer node: one lab, or (from the classroom tool) a whole class."""

    memory_mib: int
    disk_gib: int  # on outer.storage
    vcpus: int
    vms: int
    max_vm_cores: int
    vmids: Optional[tuple[int, ...]] = None  # None: the stack's own VMID block
    label: str = "the lab"
    own_vms: tuple[tuple[int, str], ...] = ()  # (VMID, hostname) of every lab VM this check may find built


def requirement_for(spec: LabSpec) -> Requirement:
    """What one lab's outer VMs take: the nodes and the QDevice VM (pvelab/footprint.py)."""
    vms = outer_vms(spec)
    return Requirement(memory_mib=sum(v.memory_mib for v in vms), disk_gib=sum(v.disk_gib for v in vms),
                       vcpus=sum(v.cores for v in vms), vms=len(vms), max_vm_cores=max(v.cores for v in vms),
                       vmids=tuple(v.vmid for v in vms), own_vms=tuple((v.vmid, v.hostname) for v in vms))


@dataclass
class Check:
    name: str
    status: str  # pass | fail | warn | skip
    detail: str
    fix: str = ""


@dataclass
class Preflight:
    spec: LabSpec
    client: PveClient
    requirement: Requirement
    classroom: bool = False
    results: list[Check] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.spec.outer.node

    def cached(self, path: str, **params) -> Any:
        key = path + json.dumps(params, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self.client.get(path, **params)
        return self._cache[key]

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.results.append(Check(name, status, detail, fix))

    def run(self) -> list[Check]:
        if not self.check_version():
            return self.results  # nothing else can be asked
        node_ok = self.check_node()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("nested virtualization", self.check_nesting),
            ("CPU type host", self.check_cpu),
            ("memory", self.check_memory),
            (f"storage {self.spec.outer.storage}", self.check_storage),
            (f"image storage {self.spec.outer.image_storage}", self.check_image_storage),
            ("network", self.check_network),
        ]
        for name, step in steps:
            if not node_ok:
                self.add(name, "skip", f"not checked: node '{self.node}' is not usable")
                continue
            self.guard(name, step)
        self.guard("VMIDs", self.check_vmids)
        self.guard("API token privileges", self.check_privileges)
        if self.spec.apt_proxy:
            self.guard("apt proxy", self.check_apt_proxy)
        if self.spec.nodes.source == "template":
            self.guard("node template", self.check_template)
        return self.results

    def check_template(self) -> None:
        import shutil

        from ..node_template import linked_clone_problem

        tpl, storage = self.spec.template, self.spec.outer.storage
        st = self.client.get(f"nodes/{self.node}/storage/{storage}/status")
        problems, fixes = [], []
        if tpl.linked_clones:
            problem = linked_clone_problem(storage, str(st.get("type") or ""))
            if problem:
                problems.append(problem)
                fixes.append("set pve-lab:lab.template.linkedClones: false (full clones), or use an LVM-thin, ZFS or Ceph outer.storage")
        if tpl.vm_id is None and shutil.which("curl") is None:
            problems.append("curl is not installed here: the step that makes the builder a template calls the outer API with it")
            fixes.append("install curl where you run pulumi")
        if problems:
            self.add("node template", "fail", "; ".join(problems), "; ".join(fixes))
        else:
            how = "linked clones" if tpl.linked_clones else "full clones"
            self.add("node template", "pass", f"{how} on {storage} (type {st.get('type')})")

    def check_apt_proxy(self) -> None:
        from ..apt_proxy import probe

        url = self.spec.apt_proxy
        problem = probe(url)
        if problem is None:
            self.add("apt proxy", "pass", f"{url} answers HTTP (checked from here; the nodes must reach it too)")
        else:
            self.add("apt proxy", "fail", f"{url} does not answer: {problem}",
                     "start the package cache (e.g. apt-cacher-ng on port 3142), or remove aptProxy from the lab config")

    def guard(self, name: str, step: Callable[[], None]) -> None:
        try:
            step()
        except ApiError as exc:
            fix = ""
            if exc.status == 403:
                fix = "grant the API token the privilege named above (README 'Prerequisites')"
            self.add(name, "fail", exc.message, fix)

    # ---------------------------------------------------------------- checks
    def check_version(self) -> bool:
        try:
            v = self.client.get("version")
        except ApiError as exc:
            fix = ("check PVE_LAB_OUTER_API_TOKEN (user@realm!tokenid=uuid) and that the token exists: pveum user "
                   "token list <user>" if exc.status == 401 or exc.auth else
                   "check outer.endpoint / --outer-url (and --outer-ca) and that this machine reaches port 8006")
            self.add("outer API", "fail", exc.message, fix)
            return False
        version = str(v.get("version", ""))
        m = re.match(r"(\d+)\.(\d+)", version)
        major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        if major >= 9 or (major == 8 and minor >= 4):
            self.add("PVE version", "pass", f"Proxmox VE {version}")
        else:
            self.add("PVE version", "fail", f"Proxmox VE {version or '(unknown)'}: the lab needs 8.4 or newer "
                                            f"(the 'import' content type for cloud images)",
                     "upgrade the outer host to Proxmox VE 9 (or at least 8.4)")
        return True

    def check_node(self) -> bool:
        try:
            nodes = self.client.get("nodes")
        except ApiError as exc:
            self.add("node", "fail", exc.message)
            return False
        names = sorted(n.get("node", "") for n in nodes)
        entry = next((n for n in nodes if n.get("node") == self.node), None)
        if entry is None:
            self.add("node", "fail", f"no node '{self.node}' (nodes: {', '.join(names) or 'none visible'})",
                     f"set pve-lab:lab.outer.node to one of: {', '.join(names)}")
            return False
        if entry.get("status") != "online":
            self.add("node", "fail", f"node '{self.node}' is {entry.get('status') or 'not online'}",
                     "start the node or choose another with outer.node")
            return False
        self.add("node", "pass", f"node '{self.node}' is online")
        return True

    def node_status(self) -> dict:
        return self.cached(f"nodes/{self.node}/status")

    def check_nesting(self) -> None:
        name = "nested virtualization"
        cpu_flags = (self.node_status().get("cpuinfo") or {}).get("flags", "").split()
        module = "kvm_amd" if "svm" in cpu_flags else "kvm_intel"
        fix_on = (f"on the outer host: echo 'options {module} nested=1' > /etc/modprobe.d/pve-lab-nested.conf; "
                  f"reboot (or with no VM running: modprobe -r {module} && modprobe {module}); then "
                  f"systemctl restart pvestatd so PVE re-reads the CPU flags")
        try:
            flags = self.client.get(f"nodes/{self.node}/capabilities/qemu/cpu-flags", accel="kvm")
        except ApiError as exc:
            if exc.status not in (400, 404, 501):
                raise
            flags = None  # an older PVE without this answer
        entry = next((f for f in flags or [] if f.get("name") == "nested-virt"), None)
        if entry is not None and "supported-on" in entry:
            if self.node in (entry.get("supported-on") or []):
                self.add(name, "pass", f"KVM on '{self.node}' offers vmx/svm to VMs (PVE's nested-virt CPU flag)")
            else:
                self.add(name, "fail", f"KVM on '{self.node}' does not offer vmx/svm to VMs: nested nodes could "
                                       f"not run their own VMs (\"KVM virtualisation configured, but not available\")",
                         fix_on)
            return
        if "vmx" not in cpu_flags and "svm" not in cpu_flags:
            self.add(name, "fail", f"the CPU of '{self.node}' shows neither vmx nor svm: hardware virtualization is "
                                   f"off or missing", "enable VT-x / AMD-V in the host's firmware setup")
            return
        self.add(name, "warn", f"the CPU of '{self.node}' has {'svm' if module == 'kvm_amd' else 'vmx'}, but this PVE "
                               f"version does not report whether KVM nesting is on",
                 f"on the outer host: cat /sys/module/{module}/parameters/nested must print Y or 1; if not: {fix_on}")

    def check_cpu(self) -> None:
        models = [m.get("name") for m in self.client.get(f"nodes/{self.node}/capabilities/qemu/cpu")]
        if "host" in models:
            self.add("CPU type host", "pass", "CPU type 'host' is offered (passes vmx/svm to the nested nodes)")
        else:
            self.add("CPU type host", "fail", f"CPU type 'host' is not offered on '{self.node}'",
                     "the nested nodes need CPU type host; use a KVM-capable x86_64 node")
        cpus = int((self.node_status().get("cpuinfo") or {}).get("cpus") or 0)
        req = self.requirement
        if cpus and req.max_vm_cores > cpus:
            self.add("vCPUs", "fail", f"a VM with {req.max_vm_cores} cores cannot start on '{self.node}' "
                                      f"({cpus} CPUs)", f"set pve-lab:lab.nodes.cores to {cpus} or less")
        elif cpus and req.vcpus > cpus:
            self.add("vCPUs", "warn", f"{req.vcpus} vCPUs for {req.label} on {cpus} host CPUs (overcommitted: "
                                      f"installs run slower)", "fewer nodes.cores, or accept slower builds")
        else:
            self.add("vCPUs", "pass", f"{req.vcpus} vCPUs for {req.label}, {cpus or '?'} host CPUs")

    def check_memory(self) -> None:
        mem = self.node_status().get("memory") or {}
        avail = int(mem.get("available") or mem.get("free") or 0)
        need = self.requirement.memory_mib * MiB
        detail = f"{_gib(need)} for {self.requirement.label}, {_gib(avail)} available on '{self.node}'"
        if need <= avail:
            self.add("memory", "pass", detail)
        else:
            self.add("memory", "fail", detail + f" (short by {_gib(need - avail)})",
                     "free memory on the node (stop other VMs) or lower pve-lab:lab.nodes.memoryMiB / nodes.count")

    def storage_status(self, storage: str, key: str, name: str) -> Optional[dict]:
        try:
            return self.client.get(f"nodes/{self.node}/storage/{storage}/status")
        except ApiError as exc:
            if exc.status != 500 and exc.status != 400:
                raise
            with_images = [s.get("storage") for s in self.cached(f"nodes/{self.node}/storage", enabled=1)]
            self.add(name, "fail", exc.message,
                     f"set pve-lab:lab.{key} to an existing storage (enabled on '{self.node}': "
                     f"{', '.join(sorted(filter(None, with_images))) or 'none visible'})")
            return None

    def check_storage(self) -> None:
        storage = self.spec.outer.storage
        name = f"storage {storage}"
        st = self.storage_status(storage, "outer.storage", name)
        if st is None:
            return
        problems, fixes = [], []
        content = _content(st)
        if "images" not in content:
            problems.append(f"content is {','.join(sorted(content)) or 'none'}, not 'images'")
            fixes.append(f"pvesm set {storage} --content {','.join(sorted(content | {'images'}))}")
        if not st.get("active", 1):
            problems.append("not active")
            fixes.append(f"check `pvesm status --storage {storage}` on the host")
        need, avail = self.requirement.disk_gib * GiB, int(st.get("avail") or 0)
        thin = self.classroom and st.get("type") in THIN_STORAGE_TYPES
        if need > avail and thin and not problems:
            self.add(name, "warn", f"{_gib(avail)} free on thin storage ({st.get('type')}), {_gib(need)} if every "
                                   f"disk of {self.requirement.label} filled up: overcommitted",
                     "fine while the nested nodes write less than that; watch the pool's usage, or free space")
            return
        if need > avail:
            problems.append(f"{_gib(avail)} free, {_gib(need)} needed for {self.requirement.label}")
            fixes.append("free space, choose another outer.storage, or smaller nodes.systemDiskGiB/cephDiskGiB")
        if problems:
            self.add(name, "fail", "; ".join(problems), "; ".join(fixes))
        else:
            self.add(name, "pass", f"content images, {_gib(avail)} free, {_gib(need)} needed")

    def check_image_storage(self) -> None:
        storage = self.spec.outer.image_storage
        file_id = self.spec.image.file_id
        name = f"image storage {storage}"
        st = self.storage_status(storage, "outer.imageStorage", name)
        if st is None:
            return
        content = _content(st)
        problems, fixes = [], []
        if "import" not in content:
            problems.append(f"content is {','.join(sorted(content)) or 'none'}, not 'import'")
            fixes.append(f"pvesm set {storage} --content {','.join(sorted(content | {'import'}))}")
        if file_id:
            image_store = file_id.split(":", 1)[0]
            vols = self.client.get(f"nodes/{self.node}/storage/{image_store}/content", content="import")
            if not any(v.get("volid") == file_id for v in vols):
                if self.spec.student is not None or self.classroom:
                    # the class-images stack downloads it as the first step of `classroom up`
                    self.add(f"class image {file_id}", "warn",
                             f"{file_id} is not on '{self.node}' yet: `classroom up` downloads it first (the "
                             f"class-images stack)", "nothing to do before the first `classroom up`; after it, "
                             "this means the class-images stack failed (see classroom-logs/)")
                else:
                    problems.append(f"image.fileId {file_id} is not on the host")
                    fixes.append("download it once (classroom up does) or remove image.fileId so the lab downloads it")
        else:
            avail = int(st.get("avail") or 0)
            if avail < IMAGE_DOWNLOAD_GIB * GiB:
                problems.append(f"{_gib(avail)} free, the cloud image needs about {IMAGE_DOWNLOAD_GIB} GiB")
                fixes.append(f"free space on {storage}")
        if problems:
            self.add(name, "fail", "; ".join(problems), "; ".join(fixes))
        else:
            self.add(name, "pass", "content import" + (f", {file_id} present" if file_id else ", room for the image"))

    def check_network(self) -> None:
        spec = self.spec
        student = spec.student
        if student is not None and student.network.mode == "sdn":
            zones = {z.get("zone"): z for z in self.client.get("cluster/sdn/zones")}
            zone = zones.get(student.network.zone)
            if zone is None:
                self.add("SDN zone", "fail", f"no SDN zone '{student.network.zone}' (zones: "
                                             f"{', '.join(sorted(filter(None, zones))) or 'none'})",
                         "create it (Datacenter > SDN > Zones, type vlan or vxlan) or fix student.network.zone")
            elif zone.get("type") not in ("vlan", "vxlan"):
                self.add("SDN zone", "fail", f"zone '{student.network.zone}' is of type {zone.get('type')}",
                         "use a zone of type vlan or vxlan")
            else:
                self.add("SDN zone", "pass", f"zone '{student.network.zone}' ({zone.get('type')})")
            return
        wanted = {spec.outer.bridge: "outer.bridge"}
        if spec.network.link1 is not None:
            wanted.setdefault(spec.network.link1.bridge, "network.link1.bridge")
        ifaces = self.client.get(f"nodes/{self.node}/network", type="any_bridge")
        bridges = {i.get("iface"): i for i in ifaces}
        for bridge, key in wanted.items():
            if bridge in bridges:
                self.add(f"bridge {bridge}", "pass", f"bridge {bridge} exists on '{self.node}'")
            else:
                self.add(f"bridge {bridge}", "fail", f"no bridge '{bridge}' on '{self.node}' (bridges: "
                                                     f"{', '.join(sorted(filter(None, bridges))) or 'none'})",
                         f"set pve-lab:lab.{key} to an existing bridge, or create it (System > Network)")

    def check_vmids(self) -> None:
        """Each VMID asked of /cluster/nextid?vmid=N (pve-manager PVE/API2/Cluster.pm nextid: 400 "VM N already
        exists" when the cluster's VM list has it; any user may ask). /cluster/resources only lists the guests the
        token may audit, so it alone would call a VMID free that a guest of someone else holds."""
        vmids = self.requirement.vmids or tuple(v.vmid for v in outer_vms(self.spec))
        visible = {int(r["vmid"]): r for r in self.client.get("cluster/resources", type="vm") if "vmid" in r}
        ours = dict(self.requirement.own_vms) or {v.vmid: v.hostname for v in outer_vms(self.spec)}
        clashes, own = [], []
        for vmid in vmids:
            if self.vmid_free(vmid):
                continue
            r = visible.get(vmid)
            if r is None:
                clashes.append(f"{vmid} (a guest this token may not audit)")
            elif ours.get(vmid) == r.get("name") and {NODE_TAG, QDEVICE_TAG} & set(str(r.get("tags", "")).split(";")):
                own.append(vmid)
            else:
                clashes.append(f"{vmid} ({r.get('type')} '{r.get('name', '')}' on {r.get('node')})")
        span = f"{min(vmids)}..{max(vmids)}" if vmids else "(none)"
        if clashes:
            self.add("VMIDs", "fail", f"VMIDs {span} are not free: {', '.join(clashes)}",
                     "set pve-lab:lab.vmidBase to a free block (or remove those guests)")
        elif own:
            self.add("VMIDs", "pass", f"VMIDs {span}: {len(own)} already this lab's VMs (built before)")
        else:
            self.add("VMIDs", "pass", f"VMIDs {span} are free")

    def vmid_free(self, vmid: int) -> bool:
        try:
            self.client.get("cluster/nextid", vmid=vmid)
        except ApiError as exc:
            if exc.status == 400 and "already exists" in exc.message:
                return False
            raise
        return True

    def needed_privileges(self) -> list[tuple[list[list[tuple[str, tuple[str, ...]]]], str]]:
        """(alternatives, why): it is enough that one alternative holds; an alternative is [(path, privs), ...]."""
        spec, o = self.spec, self.spec.outer
        pool = o.pool or (spec.student.pool if spec.student else None)
        vm_path = f"/pool/{pool}" if pool else f"/vms/{spec.vmid_base}"

        def one(path: str, *privs: str) -> list[list[tuple[str, tuple[str, ...]]]]:
            return [[(path, privs)]]

        need = [
            (one(vm_path, *VM_PRIVS), "create and run the node VMs"),
            (one(f"/storage/{o.storage}", "Datastore.AllocateSpace", "Datastore.Audit"), "VM disks"),
            (one(f"/storage/{o.image_storage}", "Datastore.AllocateTemplate", "Datastore.Audit"), "cloud image"),
            (one(f"/nodes/{o.node}", "Sys.Audit"), "read the node's status"),
        ]
        if spec.image.file_id is None:
            need.append((one(f"/nodes/{o.node}", "Sys.AccessNetwork") + one("/", "Sys.Audit", "Sys.Modify"),
                         "download the cloud image (download-url)"))
        if spec.student is not None and spec.student.network.mode == "sdn":
            need.append((one(f"/sdn/zones/{spec.student.network.zone}", "SDN.Use", "SDN.Allocate"), "student VNet"))
            # pve-network API2/Network/SDN.pm reload: check => ['perm', '/sdn', ['SDN.Allocate']]
            need.append((one("/sdn", "SDN.Allocate"), "apply the SDN configuration"))
        else:
            bridges = {o.bridge} | ({spec.network.link1.bridge} if spec.network.link1 else set())
            for b in sorted(bridges):
                need.append((one(f"/sdn/zones/localnetwork/{b}", "SDN.Use"), f"attach VMs to {b}"))
        if spec.student is not None or self.classroom:
            if pool:
                need.append((one(f"/pool/{pool}", "Pool.Allocate"), "create the student's pool"))
            student = spec.student
            if student is None or stack_owns_user(student.user, student.pool):
                # pve-access-control API2/User.pm create_user: Realm.AllocateUser on the user's realm and
                # User.Modify on /access/groups (no groups given)
                realm = PASSWORD_REALM if student is None else realm_of(student.user)
                need.append((one(f"/access/realm/{realm}", "Realm.AllocateUser"), f"create users in realm {realm}"))
                need.append((one("/access/groups", "User.Modify"), "create student users"))
            need.append((one("/", "Permissions.Modify"), "grant students their consoles"))
        return need

    def check_privileges(self) -> None:
        held: dict[str, set[str]] = {}

        def privs(path: str) -> set[str]:
            if path not in held:
                answer = self.client.get("access/permissions", path=path) or {}
                held[path] = {p for entry in answer.values() for p in (entry or {})}
            return held[path]

        missing, lacking = [], set()
        for alternatives, why in self.needed_privileges():
            lacks = [[(priv, path) for path, ps in alt for priv in ps if priv not in privs(path)]
                     for alt in alternatives]
            if all(lacks):
                missing.append(" or ".join(", ".join(f"{priv} on {path}" for priv, path in lack) for lack in lacks)
                               + f" ({why})")
                lacking |= {priv for priv, _ in lacks[0]}
        auth = self.client.auth
        tokenid = getattr(auth, "tokenid", auth.user)
        if missing:
            self.add("API token privileges", "fail", f"{tokenid} lacks: " + "; ".join(missing),
                     f"e.g. pveum role add PveLab --privs '{','.join(sorted(lacking))}' and pveum acl modify / "
                     f"--roles PveLab --tokens '{tokenid}' (a token made with --privsep 0 has its user's "
                     f"privileges: grant them with --users '{auth.user}' instead); README 'Prerequisites'")
        else:
            self.add("API token privileges", "pass", f"{tokenid} holds every privilege the lab needs")


def _content(status: dict) -> set[str]:
    return {c for c in re.split(r"[\s,;]+", str(status.get("content") or "")) if c}


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GiB:.1f} GiB"


def run_preflight(spec: LabSpec, client: PveClient, requirement: Optional[Requirement] = None,
                  classroom: bool = False) -> list[Check]:
    """Every check against the outer host; `requirement` replaces the stack's own (classroom: the whole class)."""
    return Preflight(spec, client, requirement or requirement_for(spec), classroom).run()


def failed(results: list[Check]) -> bool:
    return any(r.status == "fail" for r in results)


def render_text(results: list[Check], header: str = "") -> str:
    lines = [header] if header else []
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        lines.append(f"  {r.status.upper():4}  {r.name.ljust(width)}  {r.detail}")
        if r.fix and r.status in ("fail", "warn"):
            lines.append(f"  {'':4}  {'':{width}}  fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("pass", "fail", "warn", "skip")}
    summary = f"{counts['pass']} of {len(results)} checks passed"
    extra = [f"{counts[s]} {w}" for s, w in (("fail", "failed"), ("warn", "warning(s)"), ("skip", "skipped"))
             if counts[s]]
    lines.append(summary + ("; " + "; ".join(extra) if extra else "") + ".")
    return "\n".join(lines)


def render_json(results: list[Check]) -> str:
    return json.dumps({"ok": not failed(results), "checks": [asdict(r) for r in results]}, indent=2)

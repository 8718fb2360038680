"""The HA test VMs' tiny OS (ha.testVmImage): where the image goes and which addresses the guests get.

Pure logic (no Pulumi): the component (components/ha.py), the validator (spec.validate), the drills' default
`--ping` address and the tests share it. With the option off (the default) the test VMs keep an empty disk
and none of this applies.

How the image reaches Ceph, each fact from its source:
- PVE downloads it itself (POST /nodes/{node}/storage/{storage}/download-url, pve-storage
  src/PVE/API2/Storage/Status.pm): the storage must allow content `import`, the file name must end in
  .qcow2/.raw/.vmdk, and the file is checked as an untrusted image of that format
  (`file_size_info(..., $image_format, 1)`) and against the given digest before it is kept.
- The nested nodes' `local` storage does not allow `import`: when storage.cfg has no `local` entry, pve-storage
  src/PVE/Storage/Plugin.pm parse_config makes one with backup, images, iso, rootdir, snippets, vztmpl only.
  So the lab adds its own directory storage with content `import`, on the one node that downloads
  (IMPORT_STORAGE_ID), and leaves `local` alone.
- qemu-server src/PVE/API2/Qemu.pm accepts `import-from` volumes of type images or import (not iso), and only
  where the creating node can read them: the VM is created on the node that holds the image, and HA moves it
  to its preferred node (the node-affinity rule, failback on).
- The address comes by cloud-init from a drive on Ceph (it moves with the VM), in PVE's default format for a
  Linux guest, nocloud (qemu-server src/PVE/QemuServer/Cloudinit.pm get_cloudinit_format; nocloud_network
  writes a v1 network-config matched by MAC address), as for the lab's own Debian VMs. So the image must
  run cloud-init: Debian or Ubuntu "genericcloud"/cloud images do. CirrOS does not: 0.6.3 takes its
  address only by DHCP (cirros src/etc/init.d/S40network runs `dhcpcd -w -t 180`; its config-drive and
  nocloud readers, src/lib/cirros/ds/, apply no network config), so on a lab network without a DHCP server
  it would have no address (and wait 3 minutes for one at every boot).
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .spec import LabSpec

IMPORT_STORAGE_ID = "pvelab-import"  # a directory storage with content import, on the downloading node only
IMPORT_STORAGE_PATH = "/var/lib/pvelab-import"
CLOUD_INIT_TYPE = "nocloud"
DOWNLOAD_TIMEOUT_S = 1800  # a ~400 MB cloud image on a slow link, as the outer image (components/lab.py)
EMPTY_DISK = "empty disk"  # the replacement trigger of a test VM without an OS


def image_on(spec: "LabSpec") -> bool:
    """True when the HA test VMs boot an OS (ha.testVmImage set on a lab with HA test VMs)."""
    return spec.ha.enabled and spec.ha.test_vms > 0 and spec.ha.test_vm_image is not None


def boot_disk_key(spec: "LabSpec") -> str:
    """What the test VMs' disk is made from: a new value replaces them (bpg imports an image only when it creates
    a disk: proxmoxtf/resource/vm/disk/disk.go "Never re-import existing disks")."""
    img = spec.ha.test_vm_image
    if not image_on(spec) or img is None:
        return EMPTY_DISK
    digest = hashlib.sha256(f"{img.url}\n{img.checksum_algorithm}:{img.checksum}\n{img.file_name}".encode())
    return f"image {img.file_name} {digest.hexdigest()[:12]}"


def taken_addresses(spec: "LabSpec") -> dict[ipaddress.IPv4Address, str]:
    """Every lab-network address something else of the lab uses, with what uses it (for messages)."""
    from .node_template import builder_ip

    net = spec.network
    taken: dict[ipaddress.IPv4Address, str] = {}
    first = ipaddress.ip_address(net.first_address)
    for i in range(spec.nodes.count):
        taken[first + i] = f"node {spec.cluster.hostname_prefix}{i + 1}"
    if spec.nodes.qdevice:
        taken[first + spec.nodes.count] = "the QDevice VM"
    if spec.nodes.source == "template" and spec.template.vm_id is None:
        taken.setdefault(ipaddress.ip_address(builder_ip(spec)), "the template builder")
    taken.setdefault(ipaddress.ip_address(net.gateway), "the gateway")
    for dns in net.dns:
        try:
            taken.setdefault(ipaddress.ip_address(dns), "a DNS server")
        except ValueError:
            pass
    if spec.apt_proxy:
        try:
            taken.setdefault(ipaddress.ip_address(urlsplit(spec.apt_proxy).hostname or ""), "the apt proxy")
        except ValueError:
            pass  # a host name: not an address of the lab network we could collide with
    return taken


def _allocate(spec: "LabSpec") -> tuple[list[ipaddress.IPv4Address], Optional[str]]:
    """The test VMs' addresses and, when they do not fit or collide, why (naming the key)."""
    from .spec import _key

    net = ipaddress.ip_network(spec.network.cidr, strict=False)
    hosts_lo, hosts_hi = net.network_address + 1, net.broadcast_address - 1
    taken, count = taken_addresses(spec), spec.ha.test_vms
    given = spec.ha.test_vm_address
    if given is not None:
        start = ipaddress.ip_address(given)
        wanted = [start + i for i in range(count)] if int(start) + count - 1 <= int(hosts_hi) else []
        if not wanted or not hosts_lo <= start:
            return [], (f"{_key('ha.testVmAddress')}: the {count} test VM address(es) from {start} do not fit in "
                        f"{net} (usable hosts {hosts_lo}..{hosts_hi})")
        for addr in wanted:
            if addr in taken:
                return [], (f"{_key('ha.testVmAddress')}: {addr} is taken by {taken[addr]}; give a free address of "
                            f"{net} (the test VMs take {count} in a row from it)")
        return wanted, None
    # Default: the first free host addresses after the nodes (and what follows them), scanning upwards.
    found: list[ipaddress.IPv4Address] = []
    addr = ipaddress.ip_address(spec.network.first_address)
    while addr <= hosts_hi and len(found) < count:
        if addr not in taken:
            found.append(addr)
        addr += 1
    if len(found) < count:
        return [], (f"{_key('ha.testVmAddress')}: no free address left for {count} test VM(s) in {net} after the "
                    f"nodes, QDevice VM and builder; set ha.testVmAddress to a free address or use a larger "
                    f"network.cidr")
    return found, None


def guest_addresses(spec: "LabSpec") -> list[str]:
    """The test VMs' lab addresses (vm:<testVmidBase + i> gets the i-th); empty when they boot no OS."""
    if not image_on(spec):
        return []
    addresses, _ = _allocate(spec)
    return [str(a) for a in addresses]


def default_ping_address(spec: "LabSpec") -> Optional[str]:
    """What the drills ping unless told otherwise: the first HA test VM's address, when it runs an OS."""
    addresses = guest_addresses(spec)
    return addresses[0] if addresses else None


def validate_guest(spec: "LabSpec") -> list[str]:
    """The rules across the ha.testVmImage keys and ha.testVmAddress (their shapes are in spec.FIELD_RULES)."""
    from .formats import CHECKSUM_HEX_LEN, HEX_RE, TEST_VM_CHECKSUMS
    from .spec import _key

    ha, img, problems = spec.ha, spec.ha.test_vm_image, []
    if img is None:
        if ha.test_vm_address is not None:
            problems.append(f"{_key('ha.testVmAddress')}: only used with ha.testVmImage (a test VM without an OS has "
                            f"no address); remove it or set ha.testVmImage")
        return problems
    if not ha.enabled or ha.test_vms == 0:
        problems.append(f"{_key('ha.testVmImage')}: boots the HA test VMs, and this lab has none (ha.enabled: "
                        f"{str(ha.enabled).lower()}, ha.testVms: {ha.test_vms}); remove ha.testVmImage")
        return problems
    # An absent url, checksum or fileName is reported by its field rule (spec.FIELD_RULES), like a bad one.
    want = CHECKSUM_HEX_LEN.get(img.checksum_algorithm)
    if (want and img.checksum_algorithm in TEST_VM_CHECKSUMS and HEX_RE.fullmatch(img.checksum)
          and len(img.checksum) in (64, 128) and len(img.checksum) != want):
        problems.append(f"{_key('ha.testVmImage.checksum')}: {len(img.checksum)} hex digits, but "
                        f"ha.testVmImage.checksumAlgorithm is {img.checksum_algorithm} ({want} digits); set the "
                        f"algorithm the digest was made with (sha256: 64, sha512: 128)")
    try:
        ipaddress.ip_network(spec.network.cidr, strict=False)
        ipaddress.ip_address(spec.network.first_address)
        ipaddress.ip_address(spec.network.gateway)
        if ha.test_vm_address is not None:
            ipaddress.IPv4Address(ha.test_vm_address)
    except ValueError:
        return problems  # a malformed address or network is reported by its own rule
    _, problem = _allocate(spec)
    if problem:
        problems.append(problem)
    return problems

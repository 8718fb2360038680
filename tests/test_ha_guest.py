"""ha.testVmImage: the HA test VMs boot a tiny OS with a lab address (issue 15 item 3).

Config rules (one message per bad key), the address allocation, and the graph on the mock runtime: the
import storage, the download and the VM checked against the provider's own input types, their order,
the node they land on, the resource options that keep day two consistent, and the option off = today's graph.
"""
from __future__ import annotations

import pytest
from harness import VM, deep_merge, evaluate_lab, lab_raw

from pvelab.ha_guest import (EMPTY_DISK, IMPORT_STORAGE_ID, boot_disk_key, default_ping_address, guest_addresses,
                             taken_addresses)
from pvelab.evaluate import MOCK_PUBLIC_KEY
from pvelab.provider_types import check_all
from pvelab.spec import SpecError, parse_spec

IMAGE = "proxmoxve:download/fileLegacy:FileLegacy"
STORAGE = "proxmoxve:storage/directoryLegacy:DirectoryLegacy"
FILE = "debian-13-genericcloud-amd64-20260101-0000.qcow2"
GUEST = {"url": f"https://cloud.debian.org/images/cloud/trixie/20260101-0000/{FILE}",
         "checksum": "0123456789abcdef" * 8, "checksumAlgorithm": "sha512",  # a made-up digest (nothing is downloaded)
         "fileName": FILE}
ON = {"ha": {"testVmImage": GUEST}}


def spec_of(overrides):
    return parse_spec(deep_merge(lab_raw(), overrides))


def problems_of(overrides) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec_of(overrides)
    return err.value.problems


@pytest.fixture(scope="module")
def guest_lab():
    ev = evaluate_lab(ON)
    assert ev.error is None, ev.error
    return ev


# ------------------------------------------------------------------ config


def test_off_by_default_and_no_address():
    spec = spec_of({})
    assert spec.ha.test_vm_image is None and guest_addresses(spec) == [] and default_ping_address(spec) is None
    assert boot_disk_key(spec) == EMPTY_DISK


def test_default_address_is_the_first_free_one_after_the_nodes():
    assert guest_addresses(spec_of(ON)) == ["10.10.10.14"]
    # after the QDevice VM on an even lab; and each test VM gets its own
    qdev = spec_of(deep_merge(ON, {"nodes": {"count": 4, "qdevice": True}, "ha": {"testVms": 2}}))
    assert guest_addresses(qdev) == ["10.10.10.16", "10.10.10.17"]
    # the template builder's, the gateway's and a DNS server's addresses are skipped too
    tpl = spec_of(deep_merge(ON, {"nodes": {"source": "template"}, "network": {"dns": ["10.10.10.15"]}}))
    assert taken_addresses(tpl)[__import__("ipaddress").ip_address("10.10.10.14")] == "the template builder"
    assert guest_addresses(tpl) == ["10.10.10.16"]
    assert default_ping_address(spec_of(deep_merge(ON, {"ha": {"testVmAddress": "10.10.10.99"}}))) == "10.10.10.99"


BAD = [
    ("no-checksum", {"ha": {"testVmImage": {"url": GUEST["url"], "fileName": GUEST["fileName"]}}},
     "pve-lab:lab.ha.testVmImage.checksum: '' is not a sha256 or sha512 digest (64 or 128 lower-case hex digits); "
     "give the image's digest as its publisher lists it: an unverified image never boots in the lab"),
    ("checksum-not-hex", {"ha": {"testVmImage": {**GUEST, "checksum": "Z" * 128}}},
     "pve-lab:lab.ha.testVmImage.checksum: 'ZZZZ"),
    ("checksum-wrong-algorithm", {"ha": {"testVmImage": {**GUEST, "checksumAlgorithm": "sha256"}}},
     "pve-lab:lab.ha.testVmImage.checksum: 128 hex digits, but ha.testVmImage.checksumAlgorithm is sha256 "
     "(64 digits)"),
    ("md5", {"ha": {"testVmImage": {**GUEST, "checksumAlgorithm": "md5"}}},
     "pve-lab:lab.ha.testVmImage.checksumAlgorithm: 'md5' is not allowed (allowed: sha256, sha512)"),
    ("plain-http", {"ha": {"testVmImage": {**GUEST, "url": "http://cloud.debian.org/x.qcow2"}}},
     "pve-lab:lab.ha.testVmImage.url: 'http://cloud.debian.org/x.qcow2' uses plain http://; use https://"),
    ("no-url", {"ha": {"testVmImage": {k: v for k, v in GUEST.items() if k != "url"}}},
     "pve-lab:lab.ha.testVmImage.url: missing; an https:// URL of a cloud image that runs cloud-init"),
    ("img-file-name", {"ha": {"testVmImage": {**GUEST, "fileName": "debian-13-genericcloud-amd64.img"}}},
     "pve-lab:lab.ha.testVmImage.fileName: 'debian-13-genericcloud-amd64.img' is not allowed: 1-200 characters, a plain "
     "file name ending in .qcow2, .raw or .vmdk"),
    ("unknown-image-key", {"ha": {"testVmImage": {**GUEST, "sha256": "x"}}},
     "pve-lab:lab.ha.testVmImage.sha256: unknown key"),
    ("image-without-test-vms", {"ha": {"testVmImage": GUEST, "testVms": 0}},
     "pve-lab:lab.ha.testVmImage: boots the HA test VMs, and this lab has none (ha.enabled: true, ha.testVms: 0)"),
    ("address-without-image", {"ha": {"testVmAddress": "10.10.10.40"}},
     "pve-lab:lab.ha.testVmAddress: only used with ha.testVmImage"),
    ("address-not-ipv4", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.10"}},
     "pve-lab:lab.ha.testVmAddress: '10.10.10' is not allowed"),
    ("address-of-a-node", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.10.12"}},
     "pve-lab:lab.ha.testVmAddress: 10.10.10.12 is taken by node pve2; give a free address of 10.10.10.0/24"),
    ("address-of-the-gateway", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.10.1"}},
     "pve-lab:lab.ha.testVmAddress: 10.10.10.1 is taken by the gateway"),
    ("address-of-the-qdevice", {"nodes": {"count": 4, "qdevice": True}, "ha": {"testVmImage": GUEST,
                                                                                "testVmAddress": "10.10.10.15"}},
     "pve-lab:lab.ha.testVmAddress: 10.10.10.15 is taken by the QDevice VM"),
    ("address-outside", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.11.20"}},
     "pve-lab:lab.ha.testVmAddress: the 1 test VM address(es) from 10.10.11.20 do not fit in 10.10.10.0/24"),
    ("addresses-overflow", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.10.254", "testVms": 2}},
     "pve-lab:lab.ha.testVmAddress: the 2 test VM address(es) from 10.10.10.254 do not fit in 10.10.10.0/24"),
    ("second-address-taken", {"ha": {"testVmImage": GUEST, "testVmAddress": "10.10.10.10", "testVms": 2}},
     "pve-lab:lab.ha.testVmAddress: 10.10.10.11 is taken by node pve1"),
    ("no-free-address", {"network": {"cidr": "10.10.10.8/29", "gateway": "10.10.10.9", "dns": ["10.10.10.13", "10.10.10.14"],
                                     "firstAddress": "10.10.10.10"},
                         "ha": {"testVmImage": GUEST}},
     "pve-lab:lab.ha.testVmAddress: no free address left for 1 test VM(s) in 10.10.10.8/29"),
]


@pytest.mark.parametrize("case,overrides,message", BAD, ids=[c[0] for c in BAD])
def test_each_bad_input_gives_one_message_naming_its_key(case, overrides, message):
    problems = problems_of(overrides)
    assert [p for p in problems if p.startswith(message)], problems
    assert len(problems) == 1, problems  # one clear line, no echo of the same mistake


def test_a_bad_image_stops_the_program_before_any_resource():
    ev = evaluate_lab({"ha": {"testVmImage": {**GUEST, "checksum": ""}}})
    assert ev.error is not None and "ha.testVmImage.checksum" in ev.error
    assert [r for r in ev.records if r.custom] == []


# ------------------------------------------------------------------ graph


def test_option_off_is_todays_graph(default_lab, guest_lab):
    assert not default_lab.of_type(STORAGE)
    assert [r.name for r in default_lab.of_type(IMAGE)] == ["lab-image"]  # the outer Debian image only
    vm = default_lab.named("lab-ha-vm-100")
    assert vm.plain("nodeName") == "pve1" and "initialization" not in vm.inputs and "bootOrders" not in vm.inputs
    assert vm.plain("disks") == [{"interface": "scsi0", "datastoreId": "vmpool", "size": 4, "fileFormat": "raw",
                                  "iothread": True}]
    assert "haTestVmAddresses" not in default_lab.stack_outputs
    # the same resources with the option on, plus exactly the storage and the download
    extra = {r.name for r in guest_lab.records} - {r.name for r in default_lab.records}
    assert extra == {"lab-ha-import-storage", "lab-ha-image"}


def test_every_input_matches_the_provider_types(guest_lab):
    assert check_all(guest_lab.records) == []


def test_the_image_is_downloaded_once_on_the_api_node_into_its_own_import_storage(guest_lab):
    ev = guest_lab
    inner = ev.named("lab-inner")
    storage, image = ev.named("lab-ha-import-storage"), ev.named("lab-ha-image")
    assert ev.provider_of(storage) is inner and ev.provider_of(image) is inner
    assert storage.plain("resourceId") == IMPORT_STORAGE_ID and storage.plain("contents") == ["import"]
    assert storage.plain("nodes") == ["pve2"] and storage.plain("shared") is False  # the node the API is reached on
    assert image.plain("nodeName") == "pve2" and image.plain("datastoreId") == IMPORT_STORAGE_ID
    assert image.plain("contentType") == "import" and image.plain("url") == GUEST["url"]
    assert image.plain("fileName") == GUEST["fileName"]
    assert image.plain("checksum") == GUEST["checksum"] and image.plain("checksumAlgorithm") == "sha512"
    assert image.plain("overwrite") is False and image.plain("uploadTimeout") == 1800
    assert ev.depends_on(image, storage) and ev.depends_on(storage, ev.named("lab-cluster-quorum"))
    # the download overlaps the Ceph steps (only the VM needs the pool)
    assert not ev.depends_on(image, ev.named("lab-ceph-pool"))
    # the outer host's Debian image stays the only download there
    assert [r.name for r in ev.of_type(IMAGE) if ev.provider_of(r).name == "outer"] == ["lab-image"]


def test_the_vm_boots_the_image_from_ceph_with_its_address_by_cloud_init(guest_lab):
    ev = guest_lab
    vm, image, pool = ev.named("lab-ha-vm-100"), ev.named("lab-ha-image"), ev.named("lab-ceph-pool")
    # created where the image is (import-from reads it on the creating node); HA moves it to pve1
    assert vm.plain("nodeName") == "pve2" and vm.options["ignoreChanges"] == ["nodeName", "started"]
    disk = vm.plain("disks")[0]
    assert disk["interface"] == "scsi0" and disk["datastoreId"] == "vmpool" and disk["size"] == 4
    assert disk["importFrom"] == f"{IMPORT_STORAGE_ID}:import/{GUEST['fileName']}"
    assert vm.plain("bootOrders") == ["scsi0"]
    init = vm.plain("initialization")
    # PVE's own format for a Linux guest (Cloudinit.pm), read by the image's cloud-init; the drive moves with the VM
    assert init["type"] == "nocloud" and init["datastoreId"] == "vmpool"
    assert init["userAccount"] == {"username": "root", "keys": [MOCK_PUBLIC_KEY]} and init["upgrade"] is False
    assert init["ipConfigs"] == [{"ipv4": {"address": "10.10.10.14/24", "gateway": "10.10.10.1"}}]
    assert init["dns"] == {"domain": "lab.internal", "servers": ["10.10.10.1"]}
    assert vm.plain("networkDevices") == [{"bridge": "vmbr0", "model": "virtio", "firewall": False}]
    # HA starts and moves it; an update never stops it
    assert vm.plain("started") is False and vm.plain("rebootAfterUpdate") is False
    assert ev.depends_on(vm, image) and ev.depends_on(vm, pool)
    res, rule = ev.named("lab-ha-ha-100"), ev.named("lab-ha-rule")
    assert ev.depends_on(res, vm) and ev.depends_on(rule, res)
    assert ev.stack_outputs["haTestVmAddresses"].value == ["10.10.10.14"]


def test_day_two_options_keep_the_vm_its_ha_resource_and_rule_together(default_lab, guest_lab):
    cluster = guest_lab.named("lab-cluster-create")
    for ev in (default_lab, guest_lab):
        vm, res, rule = (ev.named(n) for n in ("lab-ha-vm-100", "lab-ha-ha-100", "lab-ha-rule"))
        # a new image (or none, or on/off, or a new address) is a new VM: bpg imports only on create
        assert vm.options["replaceOnChanges"] == ["initialization"] and vm.options["deleteBeforeReplace"]
        # deleting the VM (purge) drops its HA resource and rule entry in PVE: they are made again with it
        assert res.options["replaceWith"] == [vm.urn] and res.options["deleteBeforeReplace"]
        assert rule.options["replaceWith"] == [res.urn] and rule.options["deleteBeforeReplace"]
    assert default_lab.named("lab-ha-vm-100").options["replacementTrigger"] == EMPTY_DISK
    key = guest_lab.named("lab-ha-vm-100").options["replacementTrigger"]
    assert key.startswith(f"image {FILE} ")
    # a new digest (a new image at the same name) is a new key; the same config is the same key (up twice)
    other = spec_of({"ha": {"testVmImage": {**GUEST, "checksum": "0" * 128}}})
    assert boot_disk_key(other) != key and boot_disk_key(spec_of(ON)) == key
    # destroy on a broken lab: no call to the nested API for the new objects either
    for name in ("lab-ha-import-storage", "lab-ha-image"):
        assert guest_lab.named(name).options["deletedWith"] == cluster.urn


def test_two_test_vms_get_two_addresses():
    ev = evaluate_lab(deep_merge(ON, {"ha": {"testVms": 2, "testVmAddress": "10.10.10.40"}}))
    assert ev.error is None, ev.error
    addresses = [ev.named(f"lab-ha-vm-{v}").plain("initialization")["ipConfigs"][0]["ipv4"]["address"]
                 for v in (100, 101)]
    assert addresses == ["10.10.10.40/24", "10.10.10.41/24"]
    assert len(ev.of_type(IMAGE)) == 2  # the outer image + one download for both VMs
    assert len([r for r in ev.of_type(VM) if r.name.startswith("lab-ha-vm-")]) == 2


def test_pve8_downloads_the_same_way():
    ev = evaluate_lab(deep_merge(ON, {
        "pveVersion": 8, "ceph": {"release": "reef"},
        "image": {"url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                  "fileName": "debian-12-genericcloud-amd64.qcow2"},
        "repository": {"keyringUrl": "https://enterprise.proxmox.com/debian/proxmox-release-bookworm.gpg",
                       "keyringSha256": "a" * 64}}))
    assert ev.error is None, ev.error
    assert ev.named("lab-ha-image").plain("contentType") == "import"
    assert check_all(ev.records) == []


def test_policy_pack_counts_nothing_of_the_guest_against_the_outer_host(guest_lab):
    from pvelab.policy_rules import ClassLimits, check_all as policy_check

    limits = ClassLimits(allowed_nodes=("pve",), allowed_storages=("local-lvm", "local"))
    # the import storage and the download live in the nested cluster (its provider): no class limit applies
    assert policy_check(guest_lab.records, limits) == []
    assert policy_check(guest_lab.records) == []


def test_plan_shows_the_download_with_its_estimate_and_source(guest_lab):
    from pvelab.plan.durations import STEP_DURATIONS
    from pvelab.plan.model import build_plan

    steps = {s.id: s for s in build_plan(guest_lab).steps}
    image, vm = steps["lab-ha-image"], steps["lab-ha-vm-100"]
    assert image.kind == "image:inner" and image.phase == "ha" and not image.estimate_is_default
    assert image.title == f"download {FILE} on pve2"
    assert image.estimate_s == STEP_DURATIONS["image:inner"].seconds and "genericcloud" in image.estimate_source
    assert vm.kind == "vm:inner@image" and f"boots {FILE}" in vm.title
    assert not steps["lab-ha-import-storage"].estimate_is_default
    assert build_plan(guest_lab).policy == []


def test_the_commented_example_in_the_stack_file_is_valid_once_filled_in():
    import re
    from pathlib import Path

    from pvelab.safeyaml import load_yaml

    text = (Path(__file__).resolve().parents[1] / "Pulumi.lab.yaml").read_text()
    block = re.search(r"\n( +)# testVmImage:.*?\n(?:\1#.*\n)+", text)
    assert block, "Pulumi.lab.yaml shows ha.testVmImage as a commented example"
    indent = block.group(1)
    lines = [line.replace(f"{indent}# ", indent, 1) for line in block.group(0).splitlines()]
    filled = "\n".join(line for line in lines if not line.strip().startswith("#"))
    filled = filled.replace("<128 hex digits>", "ab" * 64).replace("<build>", "20260101-0000")
    doc = load_yaml(text.replace(block.group(0), filled + "\n"), "Pulumi.lab.yaml")
    spec = parse_spec(doc["config"]["pve-lab:lab"])
    assert spec.ha.test_vm_image.file_name.startswith("debian-13-genericcloud-amd64-")
    assert guest_addresses(spec) == ["10.10.10.20"]


def test_what_the_engine_compares_when_the_option_or_the_address_changes(default_lab, guest_lab):
    """replaceOnChanges ["initialization"] fires on a diff under that key: on/off adds or removes it, a new
    address changes it (also for a lab recorded before the replacement trigger existed: no trigger to compare)."""
    off, on = default_lab.named("lab-ha-vm-100"), guest_lab.named("lab-ha-vm-100")
    assert "initialization" not in off.inputs and "initialization" in on.inputs
    moved = evaluate_lab(deep_merge(ON, {"ha": {"testVmAddress": "10.10.10.30"}}))
    assert moved.error is None, moved.error
    vm = moved.named("lab-ha-vm-100")
    assert vm.plain("initialization") != on.plain("initialization")
    assert vm.options["replacementTrigger"] == on.options["replacementTrigger"]  # same image: only the address
    assert moved.stack_outputs["haTestVmAddresses"].value == ["10.10.10.30"]


def test_memory_and_disk_sums_are_the_same_with_the_option(default_lab, guest_lab):
    """The test VM keeps its size (the image is imported into the same 4 GiB disk): the outer host's totals
    and the nodes' memory budget (spec sizing, preflight) do not change."""
    from pvelab.plan.model import build_plan

    off, on = build_plan(default_lab).totals, build_plan(guest_lab).totals
    assert (on.vcpu, on.memory_mib, on.disk_gib, on.inner_vm_memory_mib) == (
        off.vcpu, off.memory_mib, off.disk_gib, off.inner_vm_memory_mib)
    assert guest_lab.named("lab-ha-vm-100").plain("memory") == default_lab.named("lab-ha-vm-100").plain("memory")

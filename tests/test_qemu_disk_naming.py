"""How a nested node sees its Ceph data disk, booted for real: Debian's kernel and udev in a QEMU guest
(software emulation), with the disk options qemu-server gives the lab's VM on an outer host.

qemu-server (src/PVE/QemuServer/DriveDevice.pm, print_drivedevice_full) adds `device_id=drive-scsiN` to a
scsi-hd for machine versions from 10.0 (the switch to -blockdev), and `serial=` when the disk has one. The
VM's disks and controller come from the program (the default lab, evaluated on the mock runtime). The guest
runs `GUEST_DISK_FACTS` in its initramfs (udev settled) and powers off; the facts the OSD step's disk
discovery relies on are asserted from its output. The guest boots in the background from the session's
start (tests/containers/early.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from containers import early
from containers.fixtures import container_host, qemu_host  # noqa: F401 (fixtures)
from containers.image import ensure_guest_kernel
from harness import VM, evaluate_lab
from pvelab.evaluate import unwrap

# The guest-side command: what the guest knows about its disks. Kept apart so it can become a call of the
# OSD step's own discovery (components/scripts/lib/) once that exists. Runs under bash in the initramfs.
GUEST_DISK_FACTS = r"""
for link in /dev/disk/by-id/*; do echo "by-id $(basename "$link") $(readlink -f "$link")"; done
lsblk -dno PATH,SERIAL | sed 's/^/lsblk /'
for dev in /dev/sd?; do
    echo "udev $dev $(udevadm info --query=property --name="$dev" | grep -E '^ID_(SCSI_SERIAL|SERIAL)=' | tr '\n' ' ')"
done
"""
GUEST_TIMEOUT_S = 300  # software emulation: about 25 s on an idle 2-core machine, 2 min and more when it is busy


def drive_device(disk: dict, machine_10: bool) -> str:
    """qemu-server's -device for a scsi disk on a virtio-scsi-single controller (DriveDevice.pm)."""
    index = int(disk["interface"][len("scsi"):])
    device = f"scsi-hd,bus=virtioscsi{index}.0,channel=0,scsi-id=0,lun={index},drive=drive-scsi{index},id=scsi{index}"
    if machine_10:
        device += f",device_id=drive-scsi{index}"
    if disk.get("ssd"):
        device += ",rotation_rate=1"
    if disk.get("serial"):
        device += f",serial={disk['serial']}"
    if machine_10:
        device += ",write-cache=on"
    return device


def qemu_args(disks: list[tuple[dict, bool]], folder: Path) -> list[str]:
    """Controller, drive and device options per disk, each disk with its machine version (< or >= 10.0)."""
    args = []
    for disk, machine_10 in disks:
        index = int(disk["interface"][len("scsi"):])
        image = folder / f"{disk['interface']}.raw"
        with image.open("wb") as f:
            f.truncate(64 << 20)
        controller = f"virtio-scsi-pci,id=virtioscsi{index}"
        if disk.get("iothread"):
            args += ["-object", f"iothread,id=iothread-virtioscsi{index}"]
            controller += f",iothread=iothread-virtioscsi{index}"
        args += ["-device", controller,
                 "-drive", f"file={image},if=none,id=drive-scsi{index},format=raw,discard=on",
                 "-device", drive_device(disk, machine_10)]
    return args


def cpio_newc(files: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed newc cpio archive; appended to the initramfs, the kernel unpacks it over it."""
    out = bytearray()
    for ino, (name, (data, mode)) in enumerate([*files.items(), ("TRAILER!!!", (b"", 0))], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def prepare(hosts, image) -> tuple:
    """Main thread: the VM's disks as the program declares them, with two Ceph data disks (scsi1, scsi2)."""
    ev = evaluate_lab({"nodes": {"cephDisks": 2}})
    assert ev.error is None, ev.error
    vm = ev.of_type(VM)[0]
    return image, vm.inputs.get("scsiHardware"), unwrap(vm.inputs["disks"])


def run_guest(prepared: tuple) -> dict:
    """Background thread: one boot (software emulation is slow): scsi1 as on a machine version below 10.0,
    scsi0 and scsi2 as from 10.0. Each device's identity comes only from its own options, so one guest
    shows both cases."""
    image, scsi_hardware, lab_disks = prepared
    assert scsi_hardware == "virtio-scsi-single"
    if not shutil.which("qemu-system-x86_64"):
        raise RuntimeError("qemu-system-x86_64 is missing")
    guest_kernel = ensure_guest_kernel(image)
    disks = [(d, d["interface"] != "scsi1") for d in lab_disks]
    folder = Path(tempfile.mkdtemp(prefix="pve-lab-qemu-"))
    try:
        return facts(boot_guest(guest_kernel, disks, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


early.register(__name__, prepare, run_guest)


@pytest.fixture(scope="module")
def guest_facts(qemu_host) -> dict:
    return early.result(__name__)


def boot_guest(guest_kernel, disks: list[tuple[dict, bool]], folder: Path) -> str:
    initrd = folder / "initrd.img"
    check = "#!/bin/bash\n" + GUEST_DISK_FACTS
    # An uncompressed cpio archive in front of the initramfs: the kernel unpacks both, ours first.
    initrd.write_bytes(cpio_newc({"pvelab-check.sh": (check.encode(), 0o100755)}) + guest_kernel.initrd.read_bytes())
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "512", "-smp", "1",
           "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
           "-kernel", str(guest_kernel.kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 quiet", *qemu_args(disks, folder)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=GUEST_TIMEOUT_S)
    output = proc.stdout.replace("\r", "")
    (folder / "console.log").write_text(output + proc.stderr)
    assert "PVELAB-CHECK-END rc=0" in output, f"guest check did not finish: {output[-3000:]}{proc.stderr}"
    print(f"guest boot and check: {time.monotonic() - started:.1f}s")
    return output.split("PVELAB-CHECK-BEGIN", 1)[1].split("PVELAB-CHECK-END", 1)[0]


def facts(output: str) -> dict:
    by_id = dict(re.findall(r"^by-id (\S+) (\S+)$", output, re.M))
    lsblk = dict(re.findall(r"^lsblk (\S+) *(\S*)$", output, re.M))
    udev = dict(re.findall(r"^udev (\S+) (.*)$", output, re.M))
    return {"by_id": by_id, "lsblk": lsblk, "udev": udev}


def data_disk(guest_facts: dict, serial: str) -> str:
    """The guest device whose serial (lsblk, from udev's ID_SCSI_SERIAL) is SERIAL."""
    found = [dev for dev, s in guest_facts["lsblk"].items() if s == serial]
    assert len(found) == 1, guest_facts
    assert f"ID_SCSI_SERIAL={serial}" in guest_facts["udev"][found[0]], guest_facts
    return found[0]


def links_to(guest_facts: dict, dev: str) -> list[str]:
    return sorted(name for name, target in guest_facts["by_id"].items() if target == dev)


def test_below_machine_10_the_by_id_link_names_the_serial(guest_facts):
    dev = data_disk(guest_facts, "pvelab-osd0")  # scsi1, without device_id
    assert links_to(guest_facts, dev) == ["scsi-0QEMU_QEMU_HARDDISK_pvelab-osd0"], guest_facts


def test_from_machine_10_only_the_serial_finds_the_disk(guest_facts):
    dev = data_disk(guest_facts, "pvelab-osd1")  # scsi2, with device_id=drive-scsi2
    # device_id replaces the serial in VPD page 0x83, which names the by-id link; the serial stays in 0x80
    assert links_to(guest_facts, dev) == ["scsi-0QEMU_QEMU_HARDDISK_drive-scsi2"], guest_facts
    assert not any("pvelab-osd1" in name for name in guest_facts["by_id"]), guest_facts
    # the system disk (no serial) is named after its drive id too
    assert "scsi-0QEMU_QEMU_HARDDISK_drive-scsi0" in guest_facts["by_id"], guest_facts

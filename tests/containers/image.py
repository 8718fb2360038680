"""The Debian 13 (trixie) test image the container tests boot, built once per machine and cached.

`ensure_image()` returns a `TrixieImage`: a zstd tarball of a debootstrap (minbase) root with systemd, and an
offline Debian mirror (the real, signed trixie index plus the .deb files the install steps fetch later), so
tests never reach Debian's registry. Built into the cache folder (`$PVE_LAB_TEST_CACHE`, else
`$XDG_CACHE_HOME/pve-lab-test`, else `~/.cache/pve-lab-test`) under a file lock, so two test processes never
build at once; a folder named after the recipe's hash, so a changed recipe builds anew.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEBIAN_MIRROR = os.environ.get("PVE_LAB_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"
# What a Debian 13 genericcloud VM has that the scripts use, and python3 for the stand-ins that remain.
IMAGE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "ca-certificates", "curl", "python3", "iproute2",
                  "openssl", "procps", "openssh-server"]
# What the node steps later install from Debian (with their dependencies): install-pve.sh's packages, perl
# for pve-manager, and gdisk and nvme-cli, which `pveceph install` installs beside the Ceph packages
# (pve-manager PVE/CLI/pveceph.pm). Kept in the offline mirror.
MIRROR_PACKAGES = ["chrony", "postfix", "open-iscsi", "qemu-guest-agent", "perl", "gdisk", "nvme-cli"]
# The guest of the QEMU disk test: Debian's kernel and an initramfs with udev, lsblk and bash.
KERNEL_PACKAGES = ["linux-image-amd64", "initramfs-tools", "busybox", "util-linux", "udev"]
RECIPE = repr((SUITE, IMAGE_PACKAGES, MIRROR_PACKAGES, 3))


def cache_root() -> Path:
    explicit = os.environ.get("PVE_LAB_TEST_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pve-lab-test"


@dataclass
class TrixieImage:
    folder: Path

    @property
    def tarball(self) -> Path:
        return self.folder / "rootfs.tar.zst"

    @property
    def mirror(self) -> Path:
        """dists/trixie/{InRelease,main/binary-amd64/Packages} and pool/<file>.deb, served as deb.debian.org."""
        return self.folder / "debian-mirror"

    def unpack(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "--zstd", "-xpf", str(self.tarball), "-C", str(target)], check=True)


def _run(cmd: list[str], log: Path, **kw) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    if proc.returncode:
        raise RuntimeError(f"building the trixie test image failed: {' '.join(cmd[:3])}... exit "
                           f"{proc.returncode}; see {log}")


def _in_root(root: Path, log: Path, *cmd: str) -> None:
    """Run a command inside the (not booted) root with nspawn, with the host's network (build time only)."""
    _run(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(root), *cmd], log)


@contextmanager
def _build_lock(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process building waits here, then finds the result
        yield


def _remove_tree(path: Path) -> None:
    """rm -rf of a build folder, after unmounting what an interrupted debootstrap left mounted in it."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(path, ignore_errors=True)


def ensure_image() -> TrixieImage:
    """The cached image; built first when missing (a one-off per machine, about a minute)."""
    cache = cache_root()
    image = TrixieImage(cache / f"trixie-{hashlib.sha256(RECIPE.encode()).hexdigest()[:12]}")
    if image.tarball.exists():
        return image
    with _build_lock(cache):
        if not image.tarball.exists():
            _build_image(image)
    return image


def _build_image(image: TrixieImage) -> None:
    work = Path(str(image.folder) + ".build")
    _remove_tree(work)
    work.mkdir(parents=True)
    log = work / "build.log"
    root = work / "root"
    started = time.monotonic()
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}", SUITE, str(root),
          DEBIAN_MIRROR], log)
    # The Debian packages later steps install, fetched now with debootstrap's signed index, kept for the
    # offline mirror; then the image's apt state is emptied as on a fresh cloud VM.
    _in_root(root, log, "apt-get", "clean")
    _in_root(root, log, "apt-get", "-q", "update")  # adds the Translation-en index apt asks for later
    _in_root(root, log, "apt-get", "install", "-y", "-q", "--download-only", *MIRROR_PACKAGES)
    mirror = work / "debian-mirror"
    lists = root / "var/lib/apt/lists"
    host = DEBIAN_MIRROR.split("://", 1)[1].rstrip("/").replace("/", "_")
    dists = mirror / "dists" / SUITE
    (dists / "main/binary-amd64").mkdir(parents=True)
    shutil.copy2(lists / f"{host}_dists_{SUITE}_InRelease", dists / "InRelease")
    shutil.copy2(lists / f"{host}_dists_{SUITE}_main_binary-amd64_Packages", dists / "main/binary-amd64/Packages")
    (dists / "main/i18n").mkdir()
    shutil.copy2(lists / f"{host}_dists_{SUITE}_main_i18n_Translation-en", dists / "main/i18n/Translation-en")
    pool = mirror / "pool"
    pool.mkdir()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        shutil.move(str(deb), pool / deb.name)
    _in_root(root, log, "apt-get", "clean")
    for f in lists.iterdir():
        if f.is_file():
            f.unlink()
    (root / "etc/hostname").write_text("localhost\n")
    _run(["tar", "--zstd", "-cpf", str(work / "rootfs.tar.zst"), "-C", str(root), "."], log)
    shutil.rmtree(root)
    (work / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    shutil.rmtree(image.folder, ignore_errors=True)
    work.rename(image.folder)


@dataclass
class GuestKernel:
    folder: Path

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"


# initramfs-tools hook and script: the initramfs gets bash and lsblk, and, before it would mount a root,
# runs /pvelab-check.sh (appended by the test as an extra cpio archive) and powers off.
INITRAMFS_HOOK = """#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
copy_exec /bin/bash /bin
copy_exec /usr/bin/lsblk /bin
copy_exec /usr/bin/udevadm /bin
"""
GUEST_MODULES = ["virtio_pci", "virtio_scsi", "scsi_mod", "sd_mod"]
INITRAMFS_SCRIPT = """#!/bin/sh
[ "$1" = prereqs ] && exit 0
if [ -x /pvelab-check.sh ]; then
    udevadm settle --timeout=20
    echo PVELAB-CHECK-BEGIN
    /pvelab-check.sh
    echo "PVELAB-CHECK-END rc=$?"
    echo o > /proc/sysrq-trigger
fi
"""


def ensure_guest_kernel(image: TrixieImage) -> GuestKernel:
    """Debian's kernel and an initramfs that runs a check in the guest, built once from the image."""
    guest = GuestKernel(image.folder.parent / f"{image.folder.name}-guest-kernel-{hashlib.sha256((INITRAMFS_HOOK + INITRAMFS_SCRIPT + repr((KERNEL_PACKAGES, GUEST_MODULES))).encode()).hexdigest()[:8]}")
    if guest.initrd.exists():
        return guest
    with _build_lock(cache_root()):
        if guest.initrd.exists():
            return guest
        work = Path(str(guest.folder) + ".build")
        _remove_tree(work)
        root = work / "root"
        log = work / "build.log"
        image.unpack(root)
        (root / "etc/initramfs-tools/hooks").mkdir(parents=True, exist_ok=True)
        hook = root / "etc/initramfs-tools/hooks/pvelab-check"
        hook.write_text(INITRAMFS_HOOK)
        hook.chmod(0o755)
        script = root / "etc/initramfs-tools/scripts/init-premount/pvelab-check"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(INITRAMFS_SCRIPT)
        script.chmod(0o755)
        # Only the modules the guest needs: a small initramfs unpacks fast under software emulation.
        (root / "etc/initramfs-tools/conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/initramfs-tools/conf.d/pvelab.conf").write_text("MODULES=list\nBUSYBOX=y\n")
        (root / "etc/initramfs-tools/modules").write_text("\n".join(GUEST_MODULES) + "\n")
        _in_root(root, log, "apt-get", "update", "-q")
        _in_root(root, log, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                 "-o", "Dpkg::Options::=--force-confold", "--no-install-recommends", *KERNEL_PACKAGES)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise RuntimeError(f"the guest kernel build left no vmlinuz/initrd in /boot; see {log}")
        shutil.copy2(kernels[-1], work / "vmlinuz")
        shutil.copy2(initrds[-1], work / "initrd.img")
        shutil.rmtree(root)
        shutil.rmtree(guest.folder, ignore_errors=True)
        work.rename(guest.folder)
    return guest

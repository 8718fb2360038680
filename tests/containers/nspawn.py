"""Boot the trixie test image as a systemd-nspawn container and run commands in it as root over "SSH".

A `Container` is one nested node: its own copy of the image (unpacked from the cached tarball), booted with
real systemd (`systemd-nspawn --boot`), on a private network (only loopback, plus a link into the test's own
lab network when one is given). `run(command, stdin)` plays the part of the command provider's SSH session:
a login shell's environment and `bash -c COMMAND`, entered with nsenter (the host need not run systemd).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from node_runner import Result  # what a command gave: the same shape as the stand-in tests' runs

REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container rebooted (systemd-nspawn(1))
BOOT_TIMEOUT_S = 60
SESSION_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8"}


def container_support() -> Optional[str]:
    """None when this machine can boot containers, else why not (for a skip message)."""
    if os.geteuid() != 0:
        return "container tests need root (systemd-nspawn, debootstrap)"
    for tool in ("systemd-nspawn", "debootstrap", "zstd", "nsenter", "dpkg-deb", "dpkg-scanpackages", "gpg", "openssl"):
        if not shutil.which(tool):
            return f"container tests need {tool} (apt-get install systemd-container debootstrap zstd gnupg dpkg-dev openssl)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "container tests need a cgroup file system at /sys/fs/cgroup"
    return None


@dataclass
class Container:
    name: str
    root: Path
    hostname: str
    binds: Sequence[str] = ()  # "--bind=HOST:CONTAINER" style options
    log: Path = field(init=False)
    process: Optional[subprocess.Popen] = field(default=None, init=False)
    leader: int = field(default=0, init=False)

    def __post_init__(self):
        self.log = self.root.parent / f"{self.name}.console.log"

    # --- life cycle ------------------------------------------------------------------------------
    def boot(self) -> None:
        cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive", "-q",
               "--private-network", f"--machine={self.name}", f"--hostname={self.hostname}",
               "-D", str(self.root), *self.binds]
        out = self.log.open("a")
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        out.close()
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not self.leader:
            self.leader = self._find_leader()
            if self.process.poll() is not None:
                raise RuntimeError(f"container {self.name} exited at boot ({self.process.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {self.name}: no init process after {BOOT_TIMEOUT_S}s; see {self.log}")
            time.sleep(0.05)
        while True:  # systemd answers once its private socket is up; then wait for the boot to finish
            state = self.run("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT_S)
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {self.name} did not finish booting: {state.output.strip()}; "
                                   f"see {self.log}")
            time.sleep(0.05)

    def _find_leader(self) -> int:
        assert self.process is not None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except FileNotFoundError:
            return 0
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except FileNotFoundError:
                continue
        return 0

    def wait_exit(self, timeout: float) -> int:
        """Wait for the container to stop by itself (a reboot exits REBOOT_EXIT); its exit status."""
        assert self.process is not None
        try:
            rc = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"container {self.name} still running after {timeout}s") from None
        self.leader = 0
        return rc

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.leader:
            os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: power off
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.leader = 0

    # --- inside ------------------------------------------------------------------------------------
    def nsenter(self, *namespaces: str) -> list[str]:
        assert self.leader, f"container {self.name} is not running"
        return ["nsenter", "-t", str(self.leader), *(namespaces or ("-a",))]

    def run(self, command: str, stdin: str = "", timeout: float = 120, env: Optional[dict] = None) -> Result:
        """`bash -c COMMAND` as root in the container, with an SSH session's environment."""
        session = {**SESSION_ENV, **(env or {})}
        # The session starts in HOME, as over SSH; then bash -c COMMAND.
        cmd = [*self.nsenter(), "env", "-i", *(f"{k}={v}" for k, v in session.items()),
               "bash", "-c", 'cd "$HOME" && exec bash -c "$1"', "session", command]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def file(self, path: str) -> Path:
        """A path in the container's file tree, as seen from the host."""
        return self.root / path.lstrip("/")


class LabNetwork:
    """A private network the test creates: a bridge in a network namespace of its own (held by a sleeping
    process, no name in /run/netns), and one veth link per container, named eth0 inside it. Nothing of it
    touches the host's network namespace."""

    def __init__(self) -> None:
        # The bridge is made inside the new namespace before the holder sleeps: never in the host's.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link add br0 type bridge && ip link set br0 up && "
             "ip link set lo up && echo ready && exec sleep infinity"], stdout=subprocess.PIPE, text=True)
        self._links = 0
        if self.holder.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("could not make the lab network (unshare --net, ip link add br0 type bridge)")
        self.holder.stdout.close()

    def _ip(self, *args: str) -> None:
        subprocess.run(["nsenter", "-t", str(self.holder.pid), "-n", "ip", *args], check=True, capture_output=True)

    def attach(self, container: Container, address: str) -> None:
        """Give the running container eth0 with ADDRESS (a.b.c.d/nn) on this network."""
        self._links += 1
        port = f"vh{self._links}"
        self._ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", str(container.leader))
        self._ip("link", "set", port, "master", "br0", "up")
        for args in (["addr", "add", address, "dev", "eth0"], ["link", "set", "eth0", "up"]):
            subprocess.run([*container.nsenter("-n"), "ip", *args], check=True, capture_output=True)

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()

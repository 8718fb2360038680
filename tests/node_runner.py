"""Run node scripts for real, the way the command provider runs them, against the stand-ins.

A `FakeNode` is one nested node: its own HOME (where the script is written), its own file tree
(`PVE_LAB_ROOT`), and PATH starting with tests/standins/bin. Stand-ins keep their state under
`STANDIN_STATE` (shared by the nodes of one fake cluster) and know which node they run on from
`STANDIN_NODE`. Faults are injected with files under STANDIN_STATE (see tests/standins/README.md).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pvelab.node_script import REMOTE_DIR, bundle_command, bundle_run_line, run_command

STANDIN_BIN = Path(__file__).resolve().parent / "standins" / "bin"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class FakeNode:
    name: str
    state: Path  # shared by all nodes of one fake cluster
    home: Path = field(init=False)
    root: Path = field(init=False)
    extra_env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.home = self.state / "nodes" / self.name / "home"
        self.root = self.state / "nodes" / self.name / "root"
        self.home.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        env = {
            "PATH": f"{STANDIN_BIN}:/usr/bin:/bin",
            "HOME": str(self.home),
            "PVE_LAB_ROOT": str(self.root),
            "STANDIN_STATE": str(self.state),
            "STANDIN_NODE": self.name,
            "LANG": "C.UTF-8",
        }
        env.update(self.extra_env)
        return env

    def run_script(self, name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   stdin: str = "", timeout: float = 60) -> Result:
        """Run a script with the one-line command a node step runs (after the node's bundle step)."""
        return self.run(run_command(name, args, env), stdin=stdin, timeout=timeout)

    def install_scripts(self) -> Result:
        """What the node's bundle step does: write every script and lib/common.sh to $HOME/pve-lab/."""
        result = self._bash(bundle_run_line(), bundle_command(), 60)
        assert result.returncode == 0, result.output
        return result

    def run(self, command: str, stdin: str = "", timeout: float = 60) -> Result:
        """Run a step's `create` text; the scripts are shipped first, as the bundle step runs before every step."""
        if not (self.home / REMOTE_DIR.removeprefix("$HOME/") / "lib/common.sh").exists():
            self.install_scripts()
        return self._bash(command, stdin, timeout)

    def _bash(self, command: str, stdin: str, timeout: float) -> Result:
        # The command provider hands `create` to the remote user's shell as one string.
        proc = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True,
                              env=self.env(), timeout=timeout, cwd=self.home)
        return Result(proc.returncode, proc.stdout, proc.stderr)


def standin_log(state: Path) -> list[str]:
    """Every stand-in call, in order: 'node: tool args...'."""
    log = state / "calls.log"
    return log.read_text().splitlines() if log.exists() else []

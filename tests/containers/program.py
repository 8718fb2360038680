"""The node commands exactly as the Pulumi program builds them (its `remote.Command` create texts), taken
from the program evaluated on the mock runtime, so the container tests follow any change of the command
contract (pvelab/node_script.py) or of the environment the components pass.
"""
from __future__ import annotations

import shlex

from harness import COMMAND, command_text, evaluate_lab
from pvelab.evaluate import unwrap


class NodeCommands(dict):
    """Resource name (e.g. 'lab-pve1-prepare') -> the command text the command provider runs over SSH;
    `stdin[name]` is what it sends on that command's stdin (the scripts step ships the scripts that way)."""

    def __init__(self, texts: dict[str, str], stdin: dict[str, str]):
        super().__init__(texts)
        self.stdin = stdin


def node_commands(overrides: dict | None = None) -> NodeCommands:
    ev = evaluate_lab(overrides or {})
    assert ev.error is None, ev.error
    records = [r for r in ev.records if r.type == COMMAND]
    return NodeCommands({r.name: command_text(r) for r in records},
                        {r.name: unwrap(r.inputs.get("stdin")) or "" for r in records})


def scripts_step(overrides: dict | None = None, node: str = "pve1") -> tuple[str, str]:
    """The create line and stdin of the program's step that ships the node scripts to NODE."""
    ev = evaluate_lab(overrides or {})
    assert ev.error is None, ev.error
    record = next(r for r in ev.records if r.type == COMMAND and r.name == f"lab-{node}-scripts")
    return command_text(record), unwrap(record.inputs.get("stdin")) or ""


def run_env(command: str) -> dict[str, str]:
    """The variables of a command's run line (its last line: `env A=1 B=2 bash "$HOME/pve-lab/x.sh" ...`)."""
    words = shlex.split(command.rstrip("\n").rsplit("\n", 1)[-1])
    return dict(w.split("=", 1) for w in words[1:] if words[0] == "env" and "=" in w and not w.startswith("-"))

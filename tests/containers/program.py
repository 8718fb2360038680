"""The node commands exactly as the Pulumi program builds them (its `remote.Command` create texts), taken
from the program evaluated on the mock runtime, so the container tests follow any change of the command
contract (pvelab/node_script.py) or of the environment the components pass.
"""
from __future__ import annotations

from harness import COMMAND, command_text, evaluate_lab


def node_commands(overrides: dict | None = None) -> dict[str, str]:
    """Resource name (e.g. 'lab-pve1-prepare') -> the command text the command provider runs over SSH."""
    ev = evaluate_lab(overrides or {})
    assert ev.error is None, ev.error
    return {r.name: command_text(r) for r in ev.records if r.type == COMMAND}

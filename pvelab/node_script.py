"""Build the shell command that installs a node script on a nested node and runs it.

Pure Python: the components use it to build `remote.Command.create`, and the tests run the very same
string with `bash -c` against the stand-ins (see components/scripts/README.md for the contract).
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping, Sequence

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "components" / "scripts"
HEREDOC_MARK = "PVE_LAB_EOF"
REMOTE_DIR = '"$HOME/pve-lab"'


def script_text(name: str) -> str:
    path = SCRIPTS_DIR / f"{name}.sh"
    text = path.read_text()
    if any(line.strip() == HEREDOC_MARK for line in text.splitlines()):
        raise ValueError(f"{path}: a line equal to {HEREDOC_MARK} would end the heredoc early")
    return text


def script_command(name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """The command that writes `components/scripts/<name>.sh` to the node and runs it."""
    text = script_text(name)
    if not text.endswith("\n"):
        text += "\n"
    target = f'"$HOME/pve-lab/{name}.sh"'
    assigns = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted((env or {}).items()) if v is not None)
    run = " ".join(["env", assigns, "bash", target, *map(shlex.quote, args)]) if assigns else " ".join(
        ["bash", target, *map(shlex.quote, args)]
    )
    return (
        f"mkdir -p {REMOTE_DIR} && cat > {target} <<'{HEREDOC_MARK}'\n"
        f"{text}{HEREDOC_MARK}\n"
        f"{run}\n"
    )

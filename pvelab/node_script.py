"""Build the shell command that installs a node script on a nested node and runs it.

Pure Python: the components use it to build `remote.Command.create`, and the tests run the very same
string with `bash -c` against the stand-ins (see components/scripts/README.md for the contract).
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping, Sequence

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "components" / "scripts"
# The helpers every script sources from its own folder; written next to the script on the node.
LIBRARY = "lib/common.sh"
HEREDOC_MARK = "PVE_LAB_EOF"
REMOTE_DIR = "$HOME/pve-lab"  # on the node; quoted where used, the shell expands $HOME


def _heredoc_safe_text(path: Path) -> str:
    text = path.read_text()
    if any(line.strip() == HEREDOC_MARK for line in text.splitlines()):
        raise ValueError(f"{path}: a line equal to {HEREDOC_MARK} would end the heredoc early")
    return text if text.endswith("\n") else text + "\n"


def script_text(name: str) -> str:
    return _heredoc_safe_text(SCRIPTS_DIR / f"{name}.sh")


def library_text() -> str:
    return _heredoc_safe_text(SCRIPTS_DIR / LIBRARY)


def _write_file(target: str, text: str) -> str:
    return f"cat > {target} <<'{HEREDOC_MARK}'\n{text}{HEREDOC_MARK}\n"


def script_command(name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """The command that writes `components/scripts/<name>.sh` and its library to the node and runs it."""
    library = f'"{REMOTE_DIR}/{LIBRARY}"'
    target = f'"{REMOTE_DIR}/{name}.sh"'
    assigns = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted((env or {}).items()) if v is not None)
    run = " ".join(["env", assigns, "bash", target, *map(shlex.quote, args)]) if assigns else " ".join(
        ["bash", target, *map(shlex.quote, args)]
    )
    # The script sources the library from its own folder, so both are written before the run line (last).
    return (
        f'mkdir -p "{REMOTE_DIR}/{Path(LIBRARY).parent}" && '
        + _write_file(library, library_text())
        + _write_file(target, script_text(name))
        + f"{run}\n"
    )

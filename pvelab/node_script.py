"""Build the shell command that installs a node script on a nested node and runs it.

Pure Python: the components use it to build `remote.Command.create`, and the tests run the very same
string with `bash -c` against the stand-ins (see components/scripts/README.md for the contract).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Mapping, Sequence

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "components" / "scripts"
# The helpers every script sources from its own folder; written next to the script on the node.
LIBRARY = "lib/common.sh"
# Other libraries (lib/disks.sh) are written only next to the scripts that source them.
SOURCED_LIBRARY_RE = re.compile(r'^\s*source\s+"\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/(lib/[A-Za-z0-9_-]+\.sh)"', re.M)
HEREDOC_MARK = "PVE_LAB_EOF"
REMOTE_DIR = "$HOME/pve-lab"  # on the node; quoted where used, the shell expands $HOME


def _heredoc_safe_text(path: Path) -> str:
    text = path.read_text()
    if any(line.strip() == HEREDOC_MARK for line in text.splitlines()):
        raise ValueError(f"{path}: a line equal to {HEREDOC_MARK} would end the heredoc early")
    return text if text.endswith("\n") else text + "\n"


def script_text(name: str) -> str:
    return _heredoc_safe_text(SCRIPTS_DIR / f"{name}.sh")


def library_text(library: str = LIBRARY) -> str:
    return _heredoc_safe_text(SCRIPTS_DIR / library)


def libraries_of(text: str) -> list[str]:
    """lib/common.sh, then every other lib/*.sh the script sources, in the order it sources them."""
    return [LIBRARY] + [lib for lib in dict.fromkeys(SOURCED_LIBRARY_RE.findall(text)) if lib != LIBRARY]


def _write_file(target: str, text: str) -> str:
    return f"cat > {target} <<'{HEREDOC_MARK}'\n{text}{HEREDOC_MARK}\n"


def script_command(name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """The command that writes `components/scripts/<name>.sh` and its library to the node and runs it."""
    target = f'"{REMOTE_DIR}/{name}.sh"'
    text = script_text(name)
    assigns = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted((env or {}).items()) if v is not None)
    run = " ".join(["env", assigns, "bash", target, *map(shlex.quote, args)]) if assigns else " ".join(
        ["bash", target, *map(shlex.quote, args)]
    )
    # The script sources its libraries from its own folder, so all are written before the run line (last).
    return (
        f'mkdir -p "{REMOTE_DIR}/{Path(LIBRARY).parent}" && '
        + "".join(_write_file(f'"{REMOTE_DIR}/{lib}"', library_text(lib)) for lib in libraries_of(text))
        + _write_file(target, text)
        + f"{run}\n"
    )

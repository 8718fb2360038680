"""Build the shell commands that ship the node scripts to a nested node and run one of them.

Pure Python: the components use it to build `remote.Command.create`, and the tests run the very same
strings with `bash -c` against the stand-ins (see components/scripts/README.md for the contract).

Two kinds of steps per node:
- the scripts step: `create` is `bundle_run_line()` (`bash -s -- pve-lab-scripts <digest>`), and its stdin is
  `bundle_command()`, which writes every script and every lib/*.sh to `$HOME/pve-lab/` (one step per node,
  re-run when a script changes; stdin is streamed, so the bundle's size is no SSH packet limit);
- every other step: `run_command(name, args, env)`, one short line, `env K=V bash "$HOME/pve-lab/NAME.sh" ARGS`.
pulumi-command prints a failed step's whole command text before its output
(pulumi-command provider/pkg/provider/remote/commandOutputs.go: `running %q`), so the steps that can fail
carry only that line, not the script text.
`script_command()` (the libraries a script sources + the script + its run line in one command) stays for running a script by hand.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Mapping, Sequence

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "components" / "scripts"
# The helpers every script sources from its own folder; written next to the scripts on the node.
LIBRARY = "lib/common.sh"
# Other libraries (lib/disks.sh): the scripts step ships every lib/*.sh; `script_command` writes only those a
# script sources.
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


def bundle_files() -> dict[str, str]:
    """{path under $HOME/pve-lab: text} of every node script and every lib/*.sh, sorted by path."""
    files = {}
    for path in sorted((SCRIPTS_DIR / "lib").glob("*.sh")):
        files[f"lib/{path.name}"] = _heredoc_safe_text(path)
    for path in sorted(SCRIPTS_DIR.glob("*.sh")):
        files[path.name] = _heredoc_safe_text(path)
    return dict(sorted(files.items()))


def bundle_version(files: Mapping[str, str] | None = None) -> str:
    """A short digest of the bundle's content (shown by the bundle step, changes with any script)."""
    digest = hashlib.sha256()
    for path, text in sorted((files or bundle_files()).items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:12]


def _write_file(target: str, text: str) -> str:
    return f"cat > {target} <<'{HEREDOC_MARK}'\n{text}{HEREDOC_MARK}\n"


def _write_file_atomically(relative: str, text: str) -> str:
    # A step cut off mid-copy (SSH dropped) never leaves a half-written script behind for the next run.
    target = f'"{REMOTE_DIR}/{relative}"'
    tmp = f'"{REMOTE_DIR}/{relative}.tmp"'
    return _write_file(tmp, text) + f"mv -f {tmp} {target}\n"


def bundle_command(files: Mapping[str, str] | None = None) -> str:
    """The command that writes every script and every lib/*.sh to the node's `$HOME/pve-lab/` folder."""
    files = dict(files or bundle_files())
    folders = sorted({str(Path(p).parent) for p in files if str(Path(p).parent) != "."})
    mkdirs = " ".join(f'"{REMOTE_DIR}/{d}"' for d in folders) or f'"{REMOTE_DIR}"'
    body = "".join(_write_file_atomically(path, text) for path, text in files.items())
    return f"set -e\nmkdir -p {mkdirs}\n{body}echo 'pve-lab scripts {bundle_version(files)} in {REMOTE_DIR}'\n"


BUNDLE_RUN_PREFIX = "bash -s -- pve-lab-scripts "


def bundle_run_line(files: Mapping[str, str] | None = None) -> str:
    """The scripts step's `create`: bash runs the bundle from its stdin (the digest shows which bundle)."""
    return BUNDLE_RUN_PREFIX + bundle_version(files)


def run_command(name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """One line that runs `$HOME/pve-lab/<name>.sh` (shipped by the bundle step) with `env` and `args`."""
    if not (SCRIPTS_DIR / f"{name}.sh").is_file():
        raise ValueError(f"no node script components/scripts/{name}.sh")
    target = f'"{REMOTE_DIR}/{name}.sh"'
    assigns = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted((env or {}).items()) if v is not None)
    words = ["bash", target, *map(shlex.quote, args)]
    return " ".join(["env", assigns, *words] if assigns else words)


def script_command(name: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """One self-contained command: writes `<name>.sh` and the libraries it sources, then runs it (last line)."""
    target = f'"{REMOTE_DIR}/{name}.sh"'
    text = script_text(name)
    # The script sources its libraries from its own folder, so all are written before the run line (last).
    return (
        f'mkdir -p "{REMOTE_DIR}/{Path(LIBRARY).parent}" && '
        + "".join(_write_file(f'"{REMOTE_DIR}/{lib}"', library_text(lib)) for lib in libraries_of(text))
        + _write_file(target, text)
        + run_command(name, args, env) + "\n"
    )

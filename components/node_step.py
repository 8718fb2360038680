"""node_step(): one remote.Command that runs one node script over SSH (not a component, a helper).

All node commands go through here so that they share one way of quoting, of hiding secrets, and of
surviving destroy: no `delete` command is ever set, so destroying the lab never dials a node (a broken
or powered-off node cannot block `pulumi destroy`; the node's VM is deleted on the outer host anyway).
`node_scripts()` ships every script to a node once (one bundle step per node VM); each step's `create` is
then one short line. No step sends its previous output back as environment variables
(`add_previous_output_in_env` is on by default in pulumi-command: sshd refuses those variables, and a long
apt log can exceed an SSH packet, failing every re-run).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_command.remote as remote

from pvelab.node_script import bundle_command, bundle_run_line, run_command


@dataclass
class NodeConnection:
    """How to reach one nested node over SSH."""

    hostname: str
    ip: str
    private_key: pulumi.Output[str]
    # After a reboot the node is unreachable for a while: dial again this many times (per_dial_timeout each).
    dial_error_limit: int = 30
    per_dial_timeout: int = 10
    # The node's bundle step (node_scripts): every step on this node runs after it.
    scripts: Optional[pulumi.Resource] = None
    # Something new for every VM instance (its MAC address): steps keyed on it re-run on a rebuilt VM.
    instance: pulumi.Input[str] = ""

    def args(self) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(
            host=self.ip, user="root", private_key=self.private_key,
            dial_error_limit=self.dial_error_limit, per_dial_timeout=self.per_dial_timeout,
        )


def node_step(
    name: str,
    conn: NodeConnection,
    script: str,
    *,
    parent: pulumi.Resource,
    args: Sequence[str] = (),
    env: Optional[Mapping[str, pulumi.Input[object]]] = None,
    secret_stdin: Optional[pulumi.Input[str]] = None,
    depends_on: Sequence[pulumi.Resource] = (),
    triggers: Sequence[pulumi.Input] = (),
    dial_error_limit: Optional[int] = None,
) -> remote.Command:
    """One script run on one node. `env` values may be Outputs (e.g. another step's stdout).

    A secret (the root password) never goes into the command text, where `ps` on the node would show it:
    it is sent as the command's stdin (a Pulumi secret), and the script reads it as its first line.
    """
    if dial_error_limit is not None:
        conn = replace(conn, dial_error_limit=dial_error_limit)
    keys = sorted((env or {}).keys())

    def build(values: list) -> str:
        plain_env = {k: str(v) for k, v in zip(keys, values) if v is not None and v != ""}
        return run_command(script, args, plain_env)

    values = [(env or {})[k] for k in keys]
    if any(isinstance(v, pulumi.Output) for v in values):
        create: pulumi.Input[str] = pulumi.Output.all(*values).apply(build)
    else:
        create = build(values)
    stdin = None
    if secret_stdin is not None:
        stdin = pulumi.Output.secret(pulumi.Output.from_input(secret_stdin).apply(lambda s: f"{s}\n"))
    return remote.Command(
        name,
        connection=conn.args(),
        create=create,
        stdin=stdin,
        logging=remote.Logging.STDOUT_AND_STDERR,
        add_previous_output_in_env=False,
        triggers=list(triggers) or None,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=_with_scripts(conn, depends_on)),
    )


def _with_scripts(conn: NodeConnection, depends_on: Sequence[pulumi.Resource]) -> list[pulumi.Resource]:
    deps = list(depends_on)
    if conn.scripts is not None and conn.scripts not in deps:
        deps.append(conn.scripts)
    return deps


def node_scripts(
    name: str,
    conn: NodeConnection,
    *,
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
    triggers: Sequence[pulumi.Input] = (),
    dial_error_limit: Optional[int] = None,
) -> remote.Command:
    """The step that writes every node script and every lib/*.sh (common.sh, disks.sh) to `$HOME/pve-lab/` on one node.

    The scripts' text is the step's stdin (its `create` is one line with the bundle's digest), so editing a
    script re-runs it (an update) on the next `up`: the node gets the new scripts, and the steps that already
    succeeded do not re-run (their lines are unchanged).
    """
    if dial_error_limit is not None:
        conn = replace(conn, dial_error_limit=dial_error_limit)
    return remote.Command(
        name,
        connection=conn.args(),
        create=bundle_run_line(),
        stdin=bundle_command(),
        logging=remote.Logging.STDERR,
        add_previous_output_in_env=False,
        triggers=list(triggers) or None,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )

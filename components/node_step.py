"""node_step(): one remote.Command that runs one node script over SSH (not a component, a helper).

All node commands go through here so that they share one way of quoting, of hiding secrets, and of
surviving destroy: no `delete` command is ever set, so destroying the lab never dials a node (a broken
or powered-off node cannot block `pulumi destroy`; the node's VM is deleted on the outer host anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_command.remote as remote

from pvelab.node_script import script_command


@dataclass
class NodeConnection:
    """How to reach one nested node over SSH."""

    hostname: str
    ip: str
    private_key: pulumi.Output[str]
    # After a reboot the node is unreachable for a while: dial again this many times (per_dial_timeout each).
    dial_error_limit: int = 30
    per_dial_timeout: int = 10

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
    env: Optional[Mapping[str, object]] = None,
    secret_env: Optional[Mapping[str, pulumi.Input[str]]] = None,
    depends_on: Sequence[pulumi.Resource] = (),
    triggers: Sequence[pulumi.Input] = (),
    dial_error_limit: Optional[int] = None,
) -> remote.Command:
    plain_env = {k: str(v) for k, v in (env or {}).items() if v is not None and v != ""}
    if dial_error_limit is not None:
        conn = NodeConnection(conn.hostname, conn.ip, conn.private_key, dial_error_limit, conn.per_dial_timeout)
    if secret_env:
        keys = sorted(secret_env)
        # The command text embeds the secret, so the text itself is a secret and nothing is logged.
        create = pulumi.Output.secret(
            pulumi.Output.all(*[secret_env[k] for k in keys]).apply(
                lambda values: script_command(script, args, {**plain_env, **dict(zip(keys, values))})
            )
        )
        logging = remote.Logging.NONE
        secret_outputs = ["stdout", "stderr"]
    else:
        create = script_command(script, args, plain_env)
        logging = remote.Logging.STDOUT_AND_STDERR
        secret_outputs = []
    return remote.Command(
        name,
        connection=conn.args(),
        create=create,
        logging=logging,
        triggers=list(triggers) or None,
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=list(depends_on),
            additional_secret_outputs=secret_outputs or None,
        ),
    )

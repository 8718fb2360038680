"""apt_proxy_step(): every node's and builder's first step, pointing apt at `aptProxy` (or at nothing).

Always present (not only when aptProxy is set), so that removing aptProxy from the config removes the
node's apt.conf.d file on the next `up` (a step has no delete command: see node_step).
"""
from __future__ import annotations

from typing import Optional, Sequence

import pulumi

from pvelab.spec import LabSpec

from .node_step import NodeConnection, node_step


def apt_proxy_step(name: str, conn: NodeConnection, spec: LabSpec, *, parent: pulumi.Resource,
                   depends_on: Sequence[pulumi.Resource], triggers: Sequence[pulumi.Input],
                   dial_error_limit: Optional[int] = None) -> pulumi.Resource:
    return node_step(f"{name}-apt-proxy", conn, "apt-proxy", parent=parent, env={"APT_PROXY": spec.apt_proxy or ""},
                     depends_on=depends_on, triggers=triggers, dial_error_limit=dial_error_limit)

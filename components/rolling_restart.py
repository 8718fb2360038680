"""RollingRestart: apply the node VMs' pending changes one node at a time, never all at once.

The node VMs never reboot on an update (`reboot_after_update=False`): a change to memory or cores stays
pending on the outer host. Per node, in order, chained: `apply-<node>` (on the machine running pulumi:
reboots that VM through the outer API only if it has pending changes; pvelab/ops/apply_pending.py), then
`back-<node>` (on a neighbour: waits until the node is back, the cluster quorate with every node, Ceph
HEALTH_OK and the node's HA LRM active; components/scripts/node-restart-wait.sh). The next node's apply
waits for that. Both are keyed on the node sizes (`triggers`), so they re-run, in that chain, after a
change; on a first build they find nothing pending and only check health.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pulumi
import pulumi_command.local as local
import pulumi_command.remote as remote

from pvelab.spec import LabSpec

from .nested_node import NestedPveNode
from .node_step import node_step

PROJECT_DIR = Path(__file__).resolve().parent.parent
POLL_S = 5
APPLY_DEADLINE_S = 600  # one VM reboot through the outer API (shutdown + start)
BACK_DEADLINE_S = 1200  # the node back, quorum, Ceph recovered after its OSDs were down


def restart_inputs(spec: LabSpec) -> list[object]:
    """The node VM settings whose change needs a restart to take effect (the steps re-run when they change)."""
    n = spec.nodes
    return [f"cores={n.cores}", f"memory={n.memory_mib}", f"bios={n.bios}", f"disks={n.ceph_disks}x{n.ceph_disk_gib}",
            f"system={n.system_disk_gib}"]


@dataclass
class RollingRestartArgs:
    spec: LabSpec
    nodes: Sequence[NestedPveNode]
    outer_api_token: pulumi.Input[str]
    after: Sequence[pulumi.Resource] = ()  # the lab is complete (first build: nothing to restart before)


class RollingRestart(pulumi.ComponentResource):
    def __init__(self, name: str, args: RollingRestartArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:RollingRestart", name, None, opts)
        spec, nodes = args.spec, list(args.nodes)
        triggers = restart_inputs(spec)
        token = pulumi.Output.secret(args.outer_api_token)
        previous: list[pulumi.Resource] = list(args.after)
        self.applies: list[local.Command] = []
        self.waits: list[remote.Command] = []
        for i, node in enumerate(nodes):
            host = node.plan.hostname
            neighbour = nodes[(i + 1) % len(nodes)]
            apply = local.Command(
                f"{name}-apply-{host}",
                create=f"{shlex.quote(sys.executable)} -m pvelab.ops.apply_pending",
                dir=str(PROJECT_DIR),
                environment={
                    "PVE_LAB_OUTER_ENDPOINT": spec.outer.endpoint, "PVE_LAB_OUTER_NODE": spec.outer.node,
                    "PVE_LAB_VMID": str(node.plan.vmid), "PVE_LAB_OUTER_INSECURE": "1" if spec.outer.insecure else "0",
                    "PVE_LAB_OUTER_API_TOKEN": token, "DEADLINE_S": str(APPLY_DEADLINE_S), "POLL_S": "2",
                },
                logging=local.Logging.STDOUT_AND_STDERR,
                add_previous_output_in_env=False,
                triggers=triggers,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*previous, node.vm]),
            )
            wait = node_step(
                f"{name}-back-{host}", neighbour.connection, "node-restart-wait", parent=self,
                env={"NODE_NAME": host, "EXPECTED_NODES": len(nodes), "DEADLINE_S": BACK_DEADLINE_S,
                     "POLL_S": POLL_S},
                depends_on=[apply], triggers=triggers)
            self.applies.append(apply)
            self.waits.append(wait)
            previous = [wait]
        self.register_outputs({"nodes": [n.plan.hostname for n in nodes]})

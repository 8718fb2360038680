"""PveCluster: `pvecm create` on the first node, then the other nodes join one at a time, then a quorum wait.

The joins form a chain in the dependency graph (no two can run at once: a join takes the cluster lock and
raises the expected votes). Every script checks membership first, so re-runs are no-ops.
Shrinking a running lab is refused: the quorum step fails while the cluster still has more members than
nodes.count, and Pulumi deletes removed VMs only after all updates succeed, so nothing is torn down.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi

from pvelab.spec import LabSpec

from .node_step import NodeConnection, node_step

POLL_S = 5


@dataclass
class ClusterMember:
    connection: NodeConnection
    ready: pulumi.Resource  # the node's install finished and its API answers
    link1_ip: Optional[str] = None


@dataclass
class PveClusterArgs:
    spec: LabSpec
    members: Sequence[ClusterMember]
    root_password: pulumi.Output[str]


class PveCluster(pulumi.ComponentResource):
    quorate: pulumi.Resource
    status_text: pulumi.Output[str]

    def __init__(self, name: str, args: PveClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:PveCluster", name, None, opts)
        spec, members = args.spec, list(args.members)
        first = members[0]
        deadline = spec.timeouts.quorum_s
        self.create = node_step(
            f"{name}-create", first.connection, "cluster-create", parent=self,
            env={"CLUSTER_NAME": spec.cluster.name, "LINK0": first.connection.ip, "LINK1": first.link1_ip,
                 "DEADLINE_S": deadline, "POLL_S": POLL_S},
            depends_on=[first.ready],
        )
        self.fingerprint_step = node_step(
            f"{name}-fingerprint", first.connection, "cluster-fingerprint", parent=self,
            env={"DEADLINE_S": deadline, "POLL_S": POLL_S}, depends_on=[self.create])
        fingerprint = self.fingerprint_step.stdout.apply(lambda s: (s or "").strip())

        previous: pulumi.Resource = self.fingerprint_step
        self.joins, self.evictions = [], []
        for position, member in enumerate(members[1:], start=2):
            # A rebuilt VM (new instance) is still listed with its old membership: remove that first, from the
            # first node; a no-op for a node joining for the first time (README "Day two").
            evict = node_step(
                f"{name}-evict-{member.connection.hostname}", first.connection, "node-evict", parent=self,
                env={"NODE_NAME": member.connection.hostname, "INSTANCE": member.connection.instance,
                     "DEADLINE_S": deadline, "POLL_S": POLL_S},
                depends_on=[previous, member.ready], triggers=[member.connection.instance])
            self.evictions.append(evict)
            join = node_step(
                f"{name}-join-{member.connection.hostname}", member.connection, "cluster-join", parent=self,
                env={"CLUSTER_NAME": spec.cluster.name, "FIRST_IP": first.connection.ip,
                     "LINK0": member.connection.ip, "LINK1": member.link1_ip, "FINGERPRINT": fingerprint,
                     "EXPECTED_NODES": position, "DEADLINE_S": deadline, "POLL_S": POLL_S},
                # `pvecm add` reads the first node's root password from stdin; never on the command line.
                secret_stdin=args.root_password,
                # Strictly one after another, and only once this node itself is installed.
                depends_on=[evict, member.ready],
                # A rebuilt VM joins again.
                triggers=[member.connection.instance],
            )
            self.joins.append(join)
            previous = join
        if len(members) > 1:
            previous = self._first_node_rejoin(name, args, previous)

        self.quorate = node_step(
            f"{name}-quorum", first.connection, "cluster-quorum", parent=self,
            env={"EXPECTED_NODES": len(members), "DEADLINE_S": deadline, "POLL_S": POLL_S},
            depends_on=[previous],
            # Re-check whenever the membership changes (a node added, or a VM rebuilt).
            triggers=[len(members), *(m.connection.instance for m in members)],
        )
        self.status_text = self.quorate.stdout.apply(lambda s: (s or "").strip())
        self.cluster_name = pulumi.Output.from_input(spec.cluster.name)
        self.members = [m.connection.hostname for m in members]
        self.register_outputs({"cluster_name": spec.cluster.name, "members": self.members,
                               "status": self.status_text})

    def _first_node_rejoin(self, name: str, args: PveClusterArgs, previous: pulumi.Resource) -> pulumi.Resource:
        """Node 1 rebuilt: it must not `pvecm create` again (a second cluster of the same name), so node 2
        removes its old membership and it joins again through node 2. On a first build both steps find node 1
        a live member and change nothing (README "Day two")."""
        first, second = args.members[0], args.members[1]
        deadline = args.spec.timeouts.quorum_s
        # node 2's API certificate, for the rejoin; read again when node 2 itself was rebuilt
        self.second_fingerprint_step = node_step(
            f"{name}-fingerprint-{second.connection.hostname}", second.connection, "cluster-fingerprint",
            parent=self, env={"DEADLINE_S": deadline, "POLL_S": POLL_S}, depends_on=[previous],
            triggers=[second.connection.instance])
        second_fingerprint = self.second_fingerprint_step.stdout.apply(lambda s: (s or "").strip())
        evict = node_step(
            f"{name}-evict-{first.connection.hostname}", second.connection, "node-evict", parent=self,
            env={"NODE_NAME": first.connection.hostname, "INSTANCE": first.connection.instance,
                 "DEADLINE_S": deadline, "POLL_S": POLL_S},
            depends_on=[self.second_fingerprint_step, first.ready], triggers=[first.connection.instance])
        self.evictions.insert(0, evict)
        self.first_rejoin = node_step(
            f"{name}-join-{first.connection.hostname}", first.connection, "cluster-join", parent=self,
            env={"CLUSTER_NAME": args.spec.cluster.name, "FIRST_IP": second.connection.ip,
                 "LINK0": first.connection.ip, "LINK1": first.link1_ip, "FINGERPRINT": second_fingerprint,
                 "EXPECTED_NODES": len(args.members), "DEADLINE_S": deadline, "POLL_S": POLL_S},
            secret_stdin=args.root_password,
            depends_on=[evict, first.ready], triggers=[first.connection.instance])
        return self.first_rejoin

"""CephCluster: Ceph on the nested cluster, after quorum, and a replicated pool registered as VM storage.

install (every node, right after its PVE install: in parallel with cluster formation, it needs no cluster)
-> init (first node, once the cluster is quorate) -> MON+MGR (one node at a time: concurrent monitor
creation hits the ceph_conf lock) ; OSDs (every node in parallel, one per data disk, as soon as the first
monitor is in quorum: `ceph-volume` only needs a monitor for the bootstrap-osd key and the OSD map) ->
the pool, through the provider pointed at the nested cluster's API (not shell), as soon as the last monitor
is in quorum and every OSD is up, alongside the health wait (after the same steps), which the HA test VMs
wait for. Every node's steps are keyed on its VM instance: a rebuilt node gets them again.
The pool lives inside the nested cluster: it is deleted with the cluster (deleted_with), so destroying the
lab never waits on a nested API that may be down; it dies with the nested nodes' VMs (README "Destroy").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_proxmoxve as proxmoxve

from pvelab.spec import LabSpec

from .cluster import ClusterMember
from .nested_node import osd_serials
from .node_step import node_step

POLL_S = 5
MIB = 1024 * 1024
STEP_DEADLINE_S = 600


@dataclass
class CephClusterArgs:
    spec: LabSpec
    members: Sequence[ClusterMember]
    quorate: pulumi.Resource  # the PVE cluster is formed and quorate
    inner_provider: proxmoxve.Provider
    endpoint_node: Optional[str] = None  # the node whose API the inner provider uses (default: the first)
    deleted_with: Optional[pulumi.Resource] = None  # the pool goes away with this (the cluster), no API call


class CephCluster(pulumi.ComponentResource):
    healthy: pulumi.Resource
    pool: proxmoxve.ceph.Pool
    storage_id: pulumi.Output[str]

    def __init__(self, name: str, args: CephClusterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pve-lab:index:CephCluster", name, None, opts)
        spec, members, ceph = args.spec, list(args.members), args.spec.ceph
        first = members[0]
        installs = [
            node_step(f"{name}-install-{m.connection.hostname}", m.connection, "ceph-install", parent=self,
                      env={"CEPH_RELEASE": ceph.release, "CEPH_REPOSITORY": ceph.repository,
                           "NODE_NAME": m.connection.hostname, "DEADLINE_S": spec.timeouts.install_s},
                      depends_on=[m.ready], triggers=[m.connection.instance])
            for m in members
        ]
        cluster_network = None
        if ceph.cluster_network == "link1" and spec.network.link1 is not None:
            cluster_network = spec.network.link1.cidr
        osd_memory = ceph.osd_memory_target_mib * MIB
        init = node_step(f"{name}-init", first.connection, "ceph-init", parent=self,
                         env={"CEPH_NETWORK": spec.ceph_network, "CEPH_CLUSTER_NETWORK": cluster_network,
                              "NODE_NAME": first.connection.hostname, "DEADLINE_S": STEP_DEADLINE_S},
                         depends_on=[*installs, args.quorate])
        # osd_memory_target goes to the monitors' config database, so the monitor step sets it (init has none yet).
        previous: pulumi.Resource = init
        self.monitors = []
        for m in members:
            mon = node_step(f"{name}-mon-{m.connection.hostname}", m.connection, "ceph-mon", parent=self,
                            env={"NODE_NAME": m.connection.hostname, "OSD_MEMORY_TARGET_BYTES": osd_memory,
                                 "DEADLINE_S": STEP_DEADLINE_S, "POLL_S": POLL_S},
                            # A rebuilt node (its old monitor removed by node-evict) gets a new one.
                            depends_on=[previous], triggers=[m.connection.instance])
            self.monitors.append(mon)
            previous = mon
        serials = " ".join(osd_serials(spec))
        self.osds = [
            node_step(f"{name}-osd-{m.connection.hostname}", m.connection, "ceph-osd", parent=self,
                      env={"NODE_NAME": m.connection.hostname, "OSD_SERIALS": serials,
                           "DEADLINE_S": STEP_DEADLINE_S, "POLL_S": POLL_S},
                      depends_on=[self.monitors[0]], triggers=[m.connection.instance])
            for m in members
        ]
        self.healthy = node_step(
            f"{name}-health", first.connection, "ceph-health", parent=self,
            env={"EXPECTED_OSDS": len(members) * spec.nodes.ceph_disks, "EXPECTED_MONS": len(members),
                 "DEADLINE_S": ceph.health_timeout_s, "POLL_S": POLL_S, "NODE_NAME": first.connection.hostname},
            depends_on=[*self.osds, self.monitors[-1]],
            triggers=[m.connection.instance for m in members],
        )
        self.health_text = self.healthy.stdout.apply(lambda s: (s or "").strip())
        pool = ceph.pool
        self.pool = proxmoxve.ceph.Pool(
            f"{name}-pool",
            name=pool.name,
            # Only where the API call is dispatched; bpg replaces the pool when it changes, so a lab built
            # with another node keeps its pool (ignore_changes).
            node_name=args.endpoint_node or first.connection.hostname,
            size=pool.size,
            min_size=pool.min_size,
            pg_num=pool.pg_num,
            application="rbd",
            add_storages=True,
            # Only needs the monitor quorum and the OSDs up (both steps wait for that), not the health gate,
            # which runs alongside (pveceph pool create: mon commands only, pve-manager PVE/API2/Ceph/Pool.pm).
            opts=pulumi.ResourceOptions(parent=self, provider=args.inner_provider,
                                        depends_on=[self.monitors[-1], *self.osds],
                                        deleted_with=args.deleted_with, ignore_changes=["nodeName"]),
        )
        # `add_storages` registers an RBD storage named after the pool.
        self.storage_id = self.pool.name
        self.register_outputs({"health": self.health_text, "pool": self.pool.name})

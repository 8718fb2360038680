"""pve-lab: a nested Proxmox VE 9 cluster with Ceph and HA, as one Pulumi stack."""
import pulumi
import pulumi_proxmoxve as proxmoxve

from components.lab import PveLab, PveLabArgs
from components.settings import load_settings

settings = load_settings()
spec = settings.spec

outer = proxmoxve.Provider(
    "outer",
    endpoint=spec.outer.endpoint,
    api_token=settings.outer_api_token,
    insecure=spec.outer.insecure,
)
lab = PveLab("lab", PveLabArgs(spec=spec, credentials=settings.credentials, outer_api_token=settings.outer_api_token),
             opts=pulumi.ResourceOptions(providers=[outer]))

pulumi.export("clusterName", spec.cluster.name)
pulumi.export("nodeCount", spec.nodes.count)
pulumi.export("nodes", [
    {"name": p.hostname, "fqdn": p.fqdn, "ip": p.ip, "vmid": p.vmid, "webUrl": p.web_url, "ssh": p.ssh_command}
    for p in spec.node_plans
])
pulumi.export("pveVersions", {n.plan.hostname: n.pveversion for n in lab.nodes})
pulumi.export("clusterMembers", lab.cluster.members)
pulumi.export("clusterStatus", lab.cluster.status_text)
pulumi.export("rootPassword", lab.credentials.root_password)
pulumi.export("sshPrivateKey", lab.credentials.ssh_private_key)
if lab.ceph is not None:
    pulumi.export("cephHealth", lab.ceph.health_text)
    pulumi.export("cephPool", lab.ceph.pool.name)
if lab.ha is not None:
    pulumi.export("haResources", lab.ha.resource_ids)
    pulumi.export("haPreferredNode", lab.ha.preferred_node)
    if lab.ha.addresses:  # ha.testVmImage: the guests boot an OS with these lab addresses (the drills ping the first)
        pulumi.export("haTestVmAddresses", lab.ha.addresses)
if lab.student_access is not None:  # a classroom stack: what to hand the student
    student = spec.student
    pulumi.export("student", {"id": student.id, "name": student.name, "user": student.user, "pool": student.pool})
    if lab.student_access.password is not None:
        pulumi.export("studentPassword", lab.student_access.password)  # a secret: --show-secrets

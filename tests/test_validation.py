"""Bad configs: each gives one clear message naming the key, before any resource exists."""
from __future__ import annotations

import pytest
from harness import evaluate_lab, lab_raw

from pvelab.spec import SpecError, parse_spec

# (case id, overrides merged into the default lab, the message expected in the error)
BAD_CONFIGS = [
    ("bad-cidr", {"network": {"cidr": "10.10.10.0/33"}}, "pve-lab:lab.network.cidr: '10.10.10.0/33' is not a valid network CIDR"),
    ("cidr-host-bits", {"network": {"cidr": "10.10.10.5/24"}}, "pve-lab:lab.network.cidr: '10.10.10.5/24' is not a valid network CIDR"),
    ("ipv6-cidr", {"network": {"cidr": "fd00::/64"}}, "pve-lab:lab.network.cidr: 'fd00::/64' is IPv6"),
    ("gateway-outside", {"network": {"gateway": "10.10.11.1"}}, "pve-lab:lab.network.gateway: 10.10.11.1 is outside 10.10.10.0/24"),
    ("first-outside", {"network": {"firstAddress": "10.10.9.11"}}, "pve-lab:lab.network.firstAddress: 10.10.9.11 is outside 10.10.10.0/24"),
    ("collides-gateway", {"network": {"firstAddress": "10.10.10.0"}}, "do not fit in 10.10.10.0/24"),
    ("nodes-collide-gateway", {"network": {"gateway": "10.10.10.12"}}, "pve-lab:lab.network.firstAddress: node addresses 10.10.10.11..10.10.10.13 collide with the gateway 10.10.10.12"),
    ("range-overflows", {"network": {"firstAddress": "10.10.10.253"}}, "pve-lab:lab.network.firstAddress: the 3 node addresses 10.10.10.253..10.10.10.255 do not fit in 10.10.10.0/24 (usable hosts 10.10.10.1..10.10.10.254)"),
    ("bad-dns", {"network": {"dns": ["dns.example"]}}, "pve-lab:lab.network.dns[0]: 'dns.example' is not an IPv4 address"),
    ("vmid-low", {"vmidBase": 50}, "pve-lab:lab.vmidBase: 50 is out of range"),
    ("vmid-high", {"vmidBase": 999_999_998}, "pve-lab:lab.vmidBase: 999999998 is out of range"),
    ("ram-too-small", {"nodes": {"memoryMiB": 4096}}, "pve-lab:lab.nodes.memoryMiB: 4096 MiB is too little for PVE + Ceph (1 OSD x 1536 MiB + MON/MGR) + 1 HA test VM(s); need at least 5120 MiB"),
    ("even-count", {"nodes": {"count": 4}}, "pve-lab:lab.nodes.count: 4 is even"),
    ("two-nodes", {"nodes": {"count": 2}}, "pve-lab:lab.nodes.count: 2 node(s) cannot keep quorum"),
    ("unknown-key", {"nodes": {"memory": 8192}}, "pve-lab:lab.nodes.memory: unknown key; did you mean 'memoryMiB'?"),
    ("unknown-top-key", {"clustr": {}}, "pve-lab:lab.clustr: unknown key; did you mean 'cluster'?"),
    ("wrong-type", {"nodes": {"cores": "many"}}, "pve-lab:lab.nodes.cores: expected an integer, got 'many'"),
    ("secret-in-object", {"outer": {"apiToken": "x"}}, "pve-lab:lab.outer.apiToken: secrets do not belong in the lab object"),
    ("no-endpoint", {"outer": {"endpoint": ""}}, "pve-lab:lab.outer.endpoint: missing"),
    ("bad-endpoint", {"outer": {"endpoint": "pve.example:8006"}}, "pve-lab:lab.outer.endpoint: 'pve.example:8006' is not an API base URL"),
    ("cluster-name-long", {"cluster": {"name": "a-very-long-cluster-name"}}, "pve-lab:lab.cluster.name: 'a-very-long-cluster-name' is not allowed: 1-15 characters"),
    ("hostname-prefix", {"cluster": {"hostnamePrefix": "PVE_"}}, "pve-lab:lab.cluster.hostnamePrefix: 'PVE_' is not allowed"),
    ("pool-size-gt-nodes", {"ceph": {"pool": {"size": 4}}}, "pve-lab:lab.ceph.pool.size: 4 replicas need 4 nodes with OSDs, the lab has 3"),
    ("min-size-gt-size", {"ceph": {"pool": {"size": 2, "minSize": 3}}}, "pve-lab:lab.ceph.pool.minSize: 3 is larger than ceph.pool.size 2"),
    ("min-size-one", {"ceph": {"pool": {"minSize": 1}}}, "pve-lab:lab.ceph.pool.minSize: 1 risks data loss"),
    ("no-osd-disks", {"nodes": {"cephDisks": 0}}, "pve-lab:lab.nodes.cephDisks: Ceph is enabled but the nodes have no data disks"),
    ("ha-without-ceph", {"ceph": {"enabled": False}}, "pve-lab:lab.ha.enabled: HA needs shared storage for the VM disk"),
    ("ceph-release", {"ceph": {"release": "quincy"}}, "pve-lab:lab.ceph.release: 'quincy' is not offered on PVE 9 (allowed: squid, tentacle)"),
    ("pg-num", {"ceph": {"pool": {"pgNum": 30}}}, "pve-lab:lab.ceph.pool.pgNum: 30 must be a power of two"),
    ("preferred-node", {"ha": {"preferredNode": "pve9"}}, "pve-lab:lab.ha.preferredNode: 'pve9' is not a lab node (nodes: pve1, pve2, pve3)"),
    ("pve-version", {"pveVersion": 7}, "pve-lab:lab.pveVersion: 7 is not supported"),
    ("link1-overlap", {"network": {"link1": {"cidr": "10.10.10.0/25", "firstAddress": "10.10.10.21"}}}, "pve-lab:lab.network.link1.cidr: 10.10.10.0/25 overlaps the lab network"),
    ("link1-missing-first", {"network": {"link1": {"cidr": "10.10.20.0/24"}}}, "pve-lab:lab.network.link1.firstAddress: missing"),
    ("cluster-network-needs-link1", {"ceph": {"clusterNetwork": "link1"}}, "pve-lab:lab.ceph.clusterNetwork: 'link1' needs network.link1"),
    ("osd-memory", {"ceph": {"osdMemoryTargetMiB": 512}}, "pve-lab:lab.ceph.osdMemoryTargetMiB: 512 is below Ceph's minimum (896)"),
    ("bios", {"nodes": {"bios": "uefi"}}, "pve-lab:lab.nodes.bios: 'uefi' is not allowed (allowed: seabios, ovmf)"),
    ("vlan", {"outer": {"vlanTag": 5000}}, "pve-lab:lab.outer.vlanTag: 5000 is out of range (allowed: 1..4094)"),
    ("image-file-id", {"image": {"fileId": "debian.qcow2"}}, "pve-lab:lab.image.fileId: 'debian.qcow2' is not a volume id"),
    ("pve8-needs-keyring", {"pveVersion": 8, "ceph": {"release": "reef"}}, "pve-lab:lab.repository.keyringSha256: PVE 8 needs repository.keyringUrl and repository.keyringSha256"),
    ("image-vs-version", {"pveVersion": 8, "ceph": {"release": "reef"}}, "pve-lab:lab.image.url: this image does not match pveVersion 8"),
    ("not-a-mapping", {"nodes": 3}, "pve-lab:lab.nodes: expected a mapping, got int"),
]


@pytest.mark.parametrize("case,overrides,message", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_gives_its_message(case, overrides, message):
    raw = lab_raw()
    from harness import deep_merge

    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(raw, overrides))
    text = err.value.render()
    assert message in text
    assert "Traceback" not in text


@pytest.mark.parametrize("case,overrides,message",
                         [c for c in BAD_CONFIGS if c[0] in ("bad-cidr", "even-count", "ha-without-ceph", "unknown-key")],
                         ids=lambda v: v if isinstance(v, str) and " " not in v else "")
def test_program_stops_before_any_resource(case, overrides, message):
    ev = evaluate_lab(overrides)
    assert ev.error is not None and message in ev.error
    assert [r for r in ev.records if r.custom] == [], "a bad config must not start building anything"


def test_all_problems_are_reported_together():
    from harness import deep_merge

    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(lab_raw(), {"network": {"gateway": "10.10.11.1"}, "vmidBase": 5, "nodes": {"count": 4}}))
    assert len(err.value.problems) == 3
    assert err.value.render().startswith("3 problem(s) in the lab config:")


def test_acknowledged_even_count_is_accepted():
    raw = lab_raw()
    from harness import deep_merge

    spec = parse_spec(deep_merge(raw, {"nodes": {"count": 4, "acknowledgeEvenCount": True}}))
    assert [p.hostname for p in spec.node_plans] == ["pve1", "pve2", "pve3", "pve4"]


def test_numbers_given_as_strings_by_config_set_path_are_accepted():
    from harness import deep_merge

    spec = parse_spec(deep_merge(lab_raw(), {"nodes": {"cores": "6"}, "ceph": {"enabled": "true"}}))
    assert spec.nodes.cores == 6 and spec.ceph.enabled is True


@pytest.mark.parametrize("secrets,message", [
    ({"pve-lab:outerApiToken": None}, "pve-lab:outerApiToken: missing; set it with `pulumi config set --secret"),
    ({"pve-lab:outerApiToken": "not-a-token"}, "pve-lab:outerApiToken: not of the form 'user@realm!tokenid=uuid' (value hidden)"),
    ({"pve-lab:rootPassword": "short"}, "pve-lab:rootPassword: must be 12 to 64 characters (value hidden)"),
    ({"pve-lab:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"},
     "give both or neither"),
])
def test_secret_problems_are_named_and_never_echoed(secrets, message):
    ev = evaluate_lab(secrets=secrets)
    assert ev.error is not None and message in ev.error
    for value in secrets.values():
        if value:
            assert value not in ev.error
    assert [r for r in ev.records if r.custom] == []


def test_missing_lab_object():
    from harness import API_TOKEN

    from pvelab.evaluate import evaluate_config
    ev = evaluate_config({"pve-lab:outerApiToken": API_TOKEN}, ["pve-lab:outerApiToken"])
    assert ev.error is not None and "pve-lab:lab: missing" in ev.error

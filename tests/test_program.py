"""The Pulumi program on the mock runtime: what `pulumi up -s lab` would create, and in what order."""
from __future__ import annotations

import re

import pytest
from harness import COMMAND, PROVIDER, VM, command_text, evaluate_lab, is_secret_input, leaked_secrets

from pvelab.evaluate import MOCK_FINGERPRINT, MOCK_PUBLIC_KEY, MOCK_ROOT_PASSWORD, plaintext_strings, unwrap
from pvelab.provider_types import check_all

NODES = ["pve1", "pve2", "pve3"]


def outer_vms(ev):
    return [r for r in ev.of_type(VM) if ev.provider_of(r) and ev.provider_of(r).name == "outer"]


# ------------------------------------------------------------------ what is built


def test_default_stack_builds_three_nested_nodes(default_lab):
    vms = sorted(outer_vms(default_lab), key=lambda r: r.plain("vmId"))
    assert [v.plain("name") for v in vms] == NODES
    assert [v.plain("vmId") for v in vms] == [9100, 9101, 9102]
    for vm, ip in zip(vms, ["10.10.10.11", "10.10.10.12", "10.10.10.13"]):
        cpu, mem = vm.plain("cpu"), vm.plain("memory")
        assert cpu["type"] == "host" and cpu["cores"] == 4  # nested virtualization
        assert mem["dedicated"] == 8192
        assert vm.plain("nodeName") == "pve" and vm.plain("machine") == "q35"
        disks = vm.plain("disks")
        assert disks[0]["interface"] == "scsi0" and disks[0]["size"] == 32
        assert disks[0]["importFrom"] == "local:import/debian-13-genericcloud-amd64.qcow2"
        assert [d["serial"] for d in disks[1:]] == ["pvelab-osd0"]
        assert vm.plain("networkDevices") == [{"model": "virtio", "bridge": "vmbr0", "firewall": False}]
        init = vm.plain("initialization")
        assert init["ipConfigs"][0]["ipv4"] == {"address": f"{ip}/24", "gateway": "10.10.10.1"}
        assert init["dns"] == {"domain": "lab.internal", "servers": ["10.10.10.1"]}
        assert init["userAccount"]["username"] == "root"
        assert init["upgrade"] is False  # prepare upgrades; cloud-init must not hold the dpkg lock meanwhile
        assert init["userAccount"]["keys"] == [MOCK_PUBLIC_KEY]
        assert vm.plain("agent")["enabled"] is True
        assert vm.plain("serialDevices") == [{"device": "socket"}]
        assert vm.plain("stopOnDestroy") is True


def test_every_input_matches_the_provider_types(default_lab):
    assert check_all(default_lab.records) == []


def test_provider_type_check_catches_a_misspelled_nested_key(default_lab):
    import copy

    vm = copy.deepcopy(outer_vms(default_lab)[0])
    vm.inputs["disks"][0]["sizeGb"] = 10
    vm.inputs["cpu"]["cores"] = "four"
    problems = check_all([vm])
    assert any("disks[0].sizeGb: not an argument of VmLegacyDisk" in p for p in problems)
    assert any("cpu.cores: expected int" in p for p in problems)


def test_cloud_image_is_downloaded_once(default_lab):
    images = default_lab.of_type("proxmoxve:download/fileLegacy:FileLegacy")
    assert len(images) == 1
    img = images[0]
    assert img.plain("contentType") == "import" and img.plain("datastoreId") == "local"
    assert img.plain("url").endswith("debian-13-genericcloud-amd64.qcow2")


def test_components_and_naming(default_lab):
    ev = default_lab
    lab = ev.named("lab")
    assert lab.type == "pve-lab:index:PveLab"
    assert {c.name for c in ev.children(lab.urn)} >= {"lab-credentials", "lab-pve1", "lab-pve2", "lab-pve3",
                                                      "lab-cluster", "lab-ceph", "lab-ha", "lab-image", "lab-inner"}
    for r in ev.records:
        if r.name in ("outer", "lab"):
            continue
        parent = ev.by_urn()[r.parent]
        assert r.name.startswith(parent.name + "-"), f"{r.name} is not named from its parent {parent.name}"


def test_outer_provider_is_passed_once_and_inherited(default_lab):
    ev = default_lab
    assert ev.named("lab").providers.get("proxmoxve", "").startswith(ev.named("outer").urn)
    for vm in outer_vms(ev) + ev.of_type("proxmoxve:download/fileLegacy:FileLegacy"):
        assert ev.provider_of(vm).name == "outer"


# ------------------------------------------------------------------ the graph


def test_vms_are_created_in_parallel(default_lab):
    vms = outer_vms(default_lab)
    for a in vms:
        for b in vms:
            if a is not b:
                assert not default_lab.depends_on(a, b), f"{a.name} waits for {b.name}"


@pytest.mark.parametrize("node", NODES)
def test_install_steps_depend_only_on_their_own_vm(default_lab, node):
    ev = default_lab
    steps = [ev.named(f"lab-{node}-{s}") for s in ("prepare", "reboot", "finish", "ready")]
    for earlier, later in zip(steps, steps[1:]):
        assert ev.depends_on(later, earlier)
    own_vm = ev.named(f"lab-{node}-vm")
    assert ev.depends_on(steps[0], own_vm)
    for other in NODES:
        if other != node:
            for step in steps:
                assert not ev.depends_on(step, ev.named(f"lab-{other}-vm"))
    for step in steps:
        assert step.plain("connection")["host"] == own_vm.plain("initialization")["ipConfigs"][0]["ipv4"]["address"].split("/")[0]
        assert f'install-pve.sh" {step.name.rsplit("-", 1)[1]}' in command_text(step)


@pytest.mark.parametrize("node", NODES)
def test_the_node_network_step_follows_the_install_and_everything_else_waits_for_it(default_lab, node):
    ev = default_lab
    network, installed = ev.named(f"lab-{node}-network"), ev.named(f"lab-{node}-ready")
    assert ev.depends_on(network, installed)
    run = command_text(network).splitlines()[-1]
    ip = f"10.10.10.1{NODES.index(node) + 1}"
    assert run == (f"env DNS_SERVERS=10.10.10.1 GATEWAY=10.10.10.1 NODE_IP={ip} NODE_PREFIX=24 "
                   'SEARCH_DOMAIN=lab.internal bash "$HOME/pve-lab/node-network.sh"')
    assert network.plain("triggers") == installed.plain("triggers")  # a replaced VM gets its bridge again
    first_cluster_step = ev.named("lab-cluster-create" if node == "pve1" else f"lab-cluster-join-{node}")
    assert ev.depends_on(first_cluster_step, network)


def test_the_ha_test_vm_has_a_nic_on_the_nodes_bridge(default_lab):
    vm = default_lab.named("lab-ha-vm-100")
    assert vm.plain("networkDevices") == [{"bridge": "vmbr0", "model": "virtio", "firewall": False}]


def test_install_re_runs_when_the_vm_is_replaced(default_lab):
    step = default_lab.named("lab-pve2-prepare")
    # the VMID alone stays the same for a VM re-created outside Pulumi: its MAC address is new
    from pvelab.evaluate import mock_mac

    mac = mock_mac("lab-pve2-vm", 0)
    assert unwrap(step.inputs["triggers"]) == [f"9101/{mac}"]


def test_cluster_joins_form_a_chain_after_create(default_lab):
    ev = default_lab
    create, fp = ev.named("lab-cluster-create"), ev.named("lab-cluster-fingerprint")
    j2, j3, quorum = (ev.named(n) for n in ("lab-cluster-join-pve2", "lab-cluster-join-pve3", "lab-cluster-quorum"))
    assert ev.depends_on(fp, create) and ev.depends_on(j2, fp) and ev.depends_on(j3, j2)
    assert ev.depends_on(quorum, j3)
    # nothing more than needed: create waits for pve1 only; a join waits for its own node
    assert ev.depends_on(create, ev.named("lab-pve1-ready"))
    assert not ev.depends_on(create, ev.named("lab-pve2-ready"))
    assert ev.depends_on(j2, ev.named("lab-pve2-ready")) and not ev.depends_on(j2, ev.named("lab-pve3-ready"))
    assert create.plain("connection")["host"] == "10.10.10.11"
    assert j2.plain("connection")["host"] == "10.10.10.12" and j3.plain("connection")["host"] == "10.10.10.13"
    text = command_text(j3)
    assert "FIRST_IP=10.10.10.11" in text and "EXPECTED_NODES=3" in text and f"FINGERPRINT={MOCK_FINGERPRINT}" in text
    assert "EXPECTED_NODES=2" in command_text(j2)
    assert "CLUSTER_NAME=pve-lab" in command_text(create) and "LINK0=10.10.10.11" in command_text(create)


def test_ceph_install_overlaps_cluster_forming_and_osds_follow_the_first_monitor(default_lab):
    ev = default_lab
    quorum, create = ev.named("lab-cluster-quorum"), ev.named("lab-cluster-create")
    for n in NODES:
        install = ev.named(f"lab-ceph-install-{n}")
        assert ev.depends_on(install, ev.named(f"lab-{n}-ready"))
        # pveceph install needs no cluster: it runs while the cluster forms
        assert not ev.depends_on(install, quorum) and not ev.depends_on(install, create)
    init = ev.named("lab-ceph-init")
    assert ev.depends_on(init, quorum) and all(ev.depends_on(init, ev.named(f"lab-ceph-install-{n}")) for n in NODES)
    mons = [ev.named(f"lab-ceph-mon-{n}") for n in NODES]
    assert ev.depends_on(mons[0], init)
    assert ev.depends_on(mons[1], mons[0]) and ev.depends_on(mons[2], mons[1])
    osds = [ev.named(f"lab-ceph-osd-{n}") for n in NODES]
    for a in osds:
        assert ev.depends_on(a, mons[0])
        assert not ev.depends_on(a, mons[1]), "OSDs start once the first monitor is in quorum"
        for b in osds:
            if a is not b:
                assert not ev.depends_on(a, b), "OSDs on different nodes can be created at once"
    health, pool = ev.named("lab-ceph-health"), ev.named("lab-ceph-pool")
    assert all(ev.depends_on(health, o) for o in osds) and ev.depends_on(health, mons[2])
    # the pool needs the monitor quorum and the OSDs up, not the health gate; the HA test VM waits for both
    assert not ev.depends_on(pool, health) and not ev.depends_on(health, pool)
    assert ev.depends_on(pool, mons[2]) and all(ev.depends_on(pool, o) for o in osds)
    ha_vm = ev.named("lab-ha-vm-100")
    assert ev.depends_on(ha_vm, pool) and ev.depends_on(ha_vm, health)
    assert "OSD_SERIALS=pvelab-osd0" in command_text(osds[0])
    # ceph-osd finds disks by serial: lib/disks.sh reaches every node in its scripts step, before the OSD step;
    # the OSD step itself is the one run line (no script text in a step that can fail).
    for n, osd in zip(NODES, osds):
        bundle = ev.named(f"lab-{n}-scripts")
        assert 'cat > "$HOME/pve-lab/lib/disks.sh.tmp"' in unwrap(bundle.inputs["stdin"])
        assert ev.depends_on(osd, bundle)
    assert command_text(osds[0]).endswith('bash "$HOME/pve-lab/ceph-osd.sh"')
    assert 'lib/disks.sh' not in command_text(osds[0]) and 'lib/disks.sh' not in command_text(mons[0])
    assert "EXPECTED_OSDS=3" in command_text(health)


def test_pool_and_ha_chain_use_the_inner_provider_only(default_lab):
    ev = default_lab
    inner, outer = ev.named("lab-inner"), ev.named("outer")
    assert ev.depends_on(inner, ev.named("lab-cluster-quorum")), "inner provider is made only after quorum"
    # not pve1: the HA test VM prefers it, and the HA drill stops it by default
    assert inner.plain("endpoint") == "https://10.10.10.12:8006/" and inner.plain("username") == "root@pam"
    assert is_secret_input(inner, "password")
    pool, vm, res, rule = (ev.named(n) for n in ("lab-ceph-pool", "lab-ha-vm-100", "lab-ha-ha-100", "lab-ha-rule"))
    for r in (pool, vm, res, rule):
        assert ev.provider_of(r) is inner, f"{r.name} must use the nested cluster's provider"
    for r in outer_vms(ev):
        assert ev.provider_of(r) is outer
    assert pool.plain("size") == 3 and pool.plain("minSize") == 2 and pool.plain("addStorages") is True
    assert ev.depends_on(vm, pool) and ev.depends_on(res, vm) and ev.depends_on(rule, res)
    assert vm.plain("disks")[0]["datastoreId"] == "vmpool"
    assert res.plain("resourceId") == "vm:100" and res.plain("state") == "started"
    assert rule.plain("type") == "node-affinity" and rule.plain("resources") == ["vm:100"]
    assert rule.plain("nodes") == {"pve1": 2, "pve2": 1, "pve3": 1} and rule.plain("strict") is False


# ------------------------------------------------------------------ secrets and destroy


def test_secrets_never_appear_in_plain_text(default_lab):
    assert leaked_secrets(default_lab) == []
    outputs = default_lab.stack_outputs
    assert outputs["rootPassword"].secret and outputs["sshPrivateKey"].secret


def test_the_join_password_goes_on_stdin_never_into_the_command(default_lab):
    ev = default_lab
    for name in ("lab-cluster-join-pve2", "lab-cluster-join-pve3", "lab-cluster-join-pve1"):
        join = ev.named(name)
        # `ps` on the node shows the command line; the password travels on stdin, a Pulumi secret.
        assert is_secret_input(join, "stdin")
        assert unwrap(join.inputs["stdin"]) == MOCK_ROOT_PASSWORD + "\n"
        assert not is_secret_input(join, "create")
        run_line = command_text(join).rstrip("\n").rsplit("\n", 1)[-1]
        assert run_line.startswith("env ") and "ROOT_PASSWORD" not in run_line
        assert MOCK_ROOT_PASSWORD not in command_text(join)
    for r in ev.of_type(COMMAND):
        if r.name.endswith("-scripts"):  # the node scripts travel on stdin: no secret in them
            assert not is_secret_input(r, "stdin") and "pve-lab" in r.plain("stdin")
        elif not r.name.startswith("lab-cluster-join-"):
            assert "stdin" not in r.inputs, f"{r.name} needs no secret"
        assert is_secret_input(r, "connection") or isinstance(r.inputs["connection"].get("privateKey"), dict)


def test_leak_detector_would_catch_a_plain_password(default_lab):
    import copy

    from pvelab.evaluate import MOCK_ROOT_PASSWORD, Evaluation

    rec = copy.deepcopy(default_lab.named("lab-cluster-create"))
    rec.inputs["create"] = f"echo {MOCK_ROOT_PASSWORD}"
    assert leaked_secrets(Evaluation([rec], {}, None, [])) != []


def test_destroy_never_needs_a_nested_node_or_the_nested_api(default_lab):
    ev = default_lab
    inner = ev.named("lab-inner")
    for r in ev.records:
        if r.type in (COMMAND, "command:local:Command"):
            assert "delete" not in r.inputs, f"{r.name} would run a command on destroy"
    cluster = ev.named("lab-cluster-create")
    assert "triggers" not in cluster.inputs  # never replaced: what is deleted with it is never replaced with it
    for r in ev.records:
        if r.custom and ev.provider_of(r) is inner:
            # no Delete call when the cluster goes too (destroy); a real delete when only this object goes
            assert r.options["deletedWith"] == cluster.urn, f"{r.name} lives in the nested cluster"
            assert not r.options["retainOnDelete"], f"{r.name}: removing it alone must delete it"
    # what destroy actually calls a provider for: outer-host objects, generated credentials, nothing else
    touched = {r.type for r in ev.records if r.custom and not r.options["deletedWith"]
               and r.type not in (COMMAND, "command:local:Command") and not r.type.startswith("pulumi:providers:")}
    assert touched == {VM, "proxmoxve:download/fileLegacy:FileLegacy", "random:index/randomPassword:RandomPassword",
                       "tls:index/privateKey:PrivateKey"}
    assert all(ev.provider_of(r).name == "outer" for r in ev.records if r.type == VM and not r.options["deletedWith"])


def test_stack_outputs_for_the_reader(default_lab):
    out = default_lab.stack_outputs
    nodes = out["nodes"].value
    assert [n["name"] for n in nodes] == NODES
    assert nodes[0] == {"name": "pve1", "fqdn": "pve1.lab.internal", "ip": "10.10.10.11", "vmid": 9100,
                        "webUrl": "https://10.10.10.11:8006/", "ssh": "ssh root@10.10.10.11"}
    assert "Quorate:          Yes" in out["clusterStatus"].value
    assert out["clusterName"].value == "pve-lab" and out["cephPool"].value == "vmpool"
    assert out["clusterMembers"].value == NODES
    assert out["haResources"].value == ["vm:100"] and out["haPreferredNode"].value == "pve1"


# ------------------------------------------------------------------ variants


def test_link1_adds_a_second_nic_and_corosync_link():
    ev = evaluate_lab({"network": {"link1": {"cidr": "10.10.20.0/24", "firstAddress": "10.10.20.11", "bridge": "vmbr1"}}})
    assert ev.error is None, ev.error
    vm = ev.named("lab-pve2-vm")
    assert [n["bridge"] for n in vm.plain("networkDevices")] == ["vmbr0", "vmbr1"]
    assert vm.plain("initialization")["ipConfigs"][1] == {"ipv4": {"address": "10.10.20.12/24"}}
    assert "LINK1=10.10.20.11" in command_text(ev.named("lab-cluster-create"))
    assert "LINK1=10.10.20.13" in command_text(ev.named("lab-cluster-join-pve3"))
    # node-network.sh keeps the link1 NIC as a static interface beside vmbr0.
    assert "LINK1_IP=10.10.20.12 LINK1_PREFIX=24" in command_text(ev.named("lab-pve2-network"))


def test_five_nodes_extend_the_join_chain():
    ev = evaluate_lab({"nodes": {"count": 5, "memoryMiB": 8192}, "ceph": {"pool": {"size": 3}}})
    assert ev.error is None, ev.error
    joins = [ev.named(f"lab-cluster-join-pve{i}") for i in range(2, 6)]
    for a, b in zip(joins, joins[1:]):
        assert ev.depends_on(b, a)
    assert "EXPECTED_NODES=5" in command_text(ev.named("lab-cluster-quorum"))


def test_ha_off_and_ceph_off():
    ev = evaluate_lab({"ha": {"enabled": False}})
    assert ev.error is None, ev.error
    assert not any(r.type.startswith("proxmoxve:index/ha") for r in ev.records)
    assert ev.of_type("proxmoxve:ceph/pool:Pool")
    ev = evaluate_lab({"ha": {"enabled": False}, "ceph": {"enabled": False}})
    assert ev.error is None, ev.error
    assert not [r for r in ev.of_type(PROVIDER) if r.name == "lab-inner"]
    assert not [r for r in ev.of_type(COMMAND) if "-ceph-" in r.name]


def test_pve8_uses_an_ha_group_not_a_rule():
    ev = evaluate_lab({"pveVersion": 8, "ceph": {"release": "reef"},
                       "image": {"url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
                                 "fileName": "debian-12-genericcloud-amd64.qcow2"},
                       "repository": {"keyringUrl": "https://enterprise.proxmox.com/debian/proxmox-release-bookworm.gpg",
                                      "keyringSha256": "a" * 64}})
    assert ev.error is None, ev.error
    assert not ev.of_type("proxmoxve:index/harule:Harule")
    group, res = ev.of_type("proxmoxve:index/hagroup:Hagroup")[0], ev.named("lab-ha-ha-100")
    assert res.plain("group") == group.plain("group") and ev.depends_on(res, group)
    prepare = command_text(ev.named("lab-pve1-prepare"))
    assert "PVE_SUITE=bookworm" in prepare and "KEYRING_SHA256=" + "a" * 64 in prepare


def test_shared_image_means_no_download():
    ev = evaluate_lab({"image": {"fileId": "local:import/debian-13-class.qcow2"}})
    assert ev.error is None, ev.error
    assert not ev.of_type("proxmoxve:download/fileLegacy:FileLegacy")
    assert ev.named("lab-pve1-vm").plain("disks")[0]["importFrom"] == "local:import/debian-13-class.qcow2"


def test_given_credentials_are_used_instead_of_generated_ones():
    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGivenKey given"
    ev = evaluate_lab(
        secrets={"pve-lab:rootPassword": "Given-Password-123",
                 "pve-lab:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nZ2l2ZW4=\n-----END OPENSSH PRIVATE KEY-----"},
        plain={"pve-lab:sshPublicKey": pub})
    assert ev.error is None, ev.error
    assert not ev.of_type("random:index/randomPassword:RandomPassword")
    assert not ev.of_type("tls:index/privateKey:PrivateKey")
    assert ev.named("lab-pve1-vm").plain("initialization")["userAccount"]["keys"] == [pub]
    assert ev.stack_outputs["rootPassword"].value == "Given-Password-123" and ev.stack_outputs["rootPassword"].secret
    assert not any("Given-Password-123" in s for r in ev.records for s in plaintext_strings(r.inputs))
    assert not any("Z2l2ZW4=" in s for r in ev.records for s in plaintext_strings(r.inputs))


def test_node_names_and_commands_have_no_machine_paths(default_lab):
    for r in default_lab.of_type(COMMAND):
        text = command_text(r)
        assert not re.search(r"/work/|/home/|/tmp/", text), r.name

"""`preflight` against a fake outer PVE host (fakepve on 127.0.0.1): each check passes, and fails where it should."""
from __future__ import annotations

import copy

import pytest
import yaml

import pvelab.ops.cli as ops_cli
from ops_fixtures import (FAST, GiB, TOKEN, ca, closed_port_url, lab_raw, ops_servers, outer_fake,  # noqa: F401
                          serve, token_parts)
from pvelab.cli import main
from pvelab.ops.connect import outer_client
from pvelab.ops.preflight import Requirement, failed, render_text, requirement_for, run_preflight
from pvelab.qdevice import QDEVICE_MEMORY_MIB
from pvelab.spec import parse_spec
from pvelab.stackfile import load_stack

ALL_CHECKS = ["PVE version", "node", "nested virtualization", "CPU type host", "vCPUs", "memory",
              "storage local-lvm", "image storage local", "bridge vmbr0", "VMIDs", "API token privileges"]


def preflight(fake, ca, raw=None, **kw):
    spec = parse_spec(raw or lab_raw())
    client = outer_client(spec, fake.url, ca, FAST, token=TOKEN)
    return run_preflight(spec, client, **kw)


def by_name(results):
    return {r.name: r for r in results}


def test_healthy_host_passes_every_check(serve, ca):
    fake = serve(outer_fake())
    results = preflight(fake, ca)
    assert [r.name for r in results] == ALL_CHECKS
    assert {r.status for r in results} == {"pass"}, render_text(results)
    assert not failed(results)


def _raw(**changes):
    raw = lab_raw()
    for path, value in changes.items():
        node = raw
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def _no_vmx(fake):
    fake.nested_on = None
    fake.cpuinfo["flags"] = "fpu vme sse2"


def _grant_all_but(*missing):
    from fakepve.shapes import PRIVILEGES

    def apply(fake):
        fake.grant(token_parts()[0].split("!")[0], "/", *[p for p in PRIVILEGES if p not in missing])
    return apply


# (what breaks, how, the check that must fail, words its message or fix must contain)
BROKEN = [
    ("PVE too old", lambda f: setattr(f, "version", "8.3.5"), None, "PVE version", "8.4"),
    ("nesting off in KVM", lambda f: setattr(f, "nested_on", []), None, "nested virtualization", "nested=1"),
    ("no VT-x at all (older PVE)", _no_vmx, None, "nested virtualization", "neither vmx nor svm"),
    ("no CPU type host", lambda f: setattr(f, "cpu_models", ["kvm64"]), None, "CPU type host", "not offered"),
    ("more cores than the host", lambda f: f.cpuinfo.update(cpus=2), None, "vCPUs", "nodes.cores to 2"),
    ("not enough memory", lambda f: setattr(f, "memory_available", 8 * GiB), None, "memory", "short by 16.0 GiB"),
    ("storage without images", lambda f: f.storages["local-lvm"].update(content="rootdir"), None,
     "storage local-lvm", "pvesm set local-lvm --content images,rootdir"),
    ("storage too small", lambda f: f.storages["local-lvm"].update(avail=100 * GiB), None,
     "storage local-lvm", "195.0 GiB needed"),
    ("image storage without import", lambda f: f.storages["local"].update(content="iso,backup"), None,
     "image storage local", "pvesm set local --content backup,import,iso"),
    ("VMID taken", lambda f: f.add_vm(9101, "database", node="pve"), None, "VMIDs", "9101 (qemu 'database' on pve)"),
    ("token lacks VM.Allocate", _grant_all_but("VM.Allocate"), None, "API token privileges",
     "VM.Allocate on /vms/9100"),
    ("token lacks download rights", _grant_all_but("Sys.AccessNetwork", "Sys.Modify"), None, "API token privileges",
     "Sys.AccessNetwork on /nodes/pve or Sys.Modify on /"),
    ("unknown storage", None, {"outer.storage": "fast"}, "storage fast", "outer.storage"),
    ("unknown bridge", None, {"outer.bridge": "vmbr9"}, "bridge vmbr9", "bridges: vmbr0"),
    ("missing link1 bridge", None, {"network.link1": {"cidr": "10.10.20.0/24", "firstAddress": "10.10.20.11",
                                                      "bridge": "vmbr1"}}, "bridge vmbr1", "network.link1.bridge"),
    ("shared image not downloaded", None, {"image.fileId": "local:import/debian-13.qcow2"}, "image storage local",
     "not on the host"),
]


@pytest.mark.parametrize("what,breaker,changes,check,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_check_fails_where_it_should(serve, ca, what, breaker, changes, check, words):
    fake = serve(outer_fake())
    if breaker:
        breaker(fake)
    results = preflight(fake, ca, _raw(**(changes or {})))
    fails = [r for r in results if r.status == "fail"]
    assert [r.name for r in fails] == [check], render_text(results)
    assert words in fails[0].detail + " " + fails[0].fix
    assert failed(results)


def test_older_pve_with_vtx_warns_instead_of_guessing(serve, ca):
    fake = serve(outer_fake())
    fake.nested_on = None  # no cpu-flags answer: nesting cannot be confirmed through the API
    r = by_name(preflight(fake, ca))["nested virtualization"]
    assert r.status == "warn" and "/sys/module/kvm_intel/parameters/nested" in r.fix


def test_offline_node_fails_and_skips_node_checks(serve, ca):
    fake = serve(outer_fake())
    fake.set_node_offline("pve")
    results = by_name(preflight(fake, ca))
    assert results["node"].status == "fail" and "offline" in results["node"].detail
    assert results["memory"].status == "skip"
    assert results["VMIDs"].status == "pass"  # cluster-wide checks still run


def test_unknown_node_names_the_existing_ones(serve, ca):
    fake = serve(outer_fake())
    r = by_name(preflight(fake, ca, _raw(**{"outer.node": "pve9"})))["node"]
    assert r.status == "fail" and "outer.node to one of: pve" in r.fix


def test_lab_already_built_owns_its_vmids(serve, ca):
    fake = serve(outer_fake(lab_vms=True))
    r = by_name(preflight(fake, ca))["VMIDs"]
    assert r.status == "pass" and "already this lab's VMs" in r.detail


def test_shared_image_present_passes(serve, ca):
    fake = serve(outer_fake())
    fake.store_file("local", "debian-13.qcow2", 400 * 1024 ** 2, content="import")
    r = by_name(preflight(fake, ca, _raw(**{"image.fileId": "local:import/debian-13.qcow2"})))["image storage local"]
    assert r.status == "pass", r.detail


def test_student_sdn_zone_must_exist(serve, ca):
    fake = serve(outer_fake())
    raw = _raw(student={"id": "s01", "name": "Student 1", "user": "s01@pve", "pool": "lab-s01",
                        "network": {"mode": "sdn", "zone": "labs", "vnet": "s01", "vnetTag": 101}})
    assert by_name(preflight(fake, ca, copy.deepcopy(raw)))["SDN zone"].status == "fail"
    fake.sdn_zones["labs"] = "vxlan"
    assert by_name(preflight(fake, ca, raw))["SDN zone"].status == "pass"


def test_classroom_requirement_replaces_the_single_lab(serve, ca):
    fake = serve(outer_fake())
    spec = parse_spec(lab_raw())
    one = requirement_for(spec)
    assert by_name(preflight(fake, ca))["memory"].status == "pass"
    class_of_ten = Requirement(memory_mib=one.memory_mib * 10, disk_gib=one.disk_gib * 10, vcpus=one.vcpus * 10,
                               vms=30, max_vm_cores=one.max_vm_cores, vmids=tuple(range(9100, 9130)),
                               label="10 students")
    results = by_name(preflight(fake, ca, requirement=class_of_ten, classroom=True))
    assert results["memory"].status == "fail" and "10 students" in results["memory"].detail
    # local-lvm is an lvmthin pool: a class may overcommit it, with a warning (thick storage fails)
    assert results["storage local-lvm"].status == "warn" and "overcommitted" in results["storage local-lvm"].detail
    assert results["vCPUs"].status == "warn"
    assert "9100..9129" in results["VMIDs"].detail


def test_token_without_any_privilege_gets_clear_failures(serve, ca):
    fake = serve(outer_fake())
    fake.grant("someone@pve", "/", "Sys.Audit")  # turns permission checks on; the token holds nothing
    results = preflight(fake, ca)
    status = by_name(results)
    assert status["memory"].status == "fail" and "Permission check failed (/nodes/pve, Sys.Audit)" in \
        status["memory"].detail
    assert "grant the API token" in status["memory"].fix
    assert status["API token privileges"].status == "fail"


def test_transient_error_is_retried(serve, ca):
    fake = serve(outer_fake())
    fake.fail("GET", "/api2/json/nodes", 503, "Service Unavailable", times=1)
    results = preflight(fake, ca)
    assert not failed(results), render_text(results)
    assert sum(1 for m, p, _ in fake.requests if m == "GET" and p == "/api2/json/nodes") == 2


def test_unreachable_host_is_one_clear_failure(ca):
    results = preflight(type("F", (), {"url": closed_port_url()})(), ca)
    assert [(r.name, r.status) for r in results] == [("outer API", "fail")]
    assert "unreachable (Connection refused)" in results[0].detail and "gave up after 2" in results[0].detail


def test_wrong_token_secret(serve, ca):
    fake = serve(outer_fake())
    fake.apitokens[token_parts()[0]] = "something-else"
    (r,) = preflight(fake, ca)
    assert r.name == "outer API" and "401" in r.detail and "PVE_LAB_OUTER_API_TOKEN" in r.fix


# ---------------------------------------------------------------- the command line


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """A stack file `t` in a temporary project; the command reads it instead of the repository's stacks."""
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr(ops_cli, "load_stack", lambda name: load_stack(name, tmp_path))
    return "t"


def test_cli_passes_on_a_healthy_host(serve, ca, stack, monkeypatch, capsys):
    fake = serve(outer_fake())
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(["preflight", "-s", stack, "--outer-url", fake.url, "--outer-ca", ca, "--retries", "2"]) == 0
    out = capsys.readouterr().out
    assert "11 of 11 checks passed." in out
    assert token_parts()[1] not in out  # the token's secret is never printed


def test_cli_fails_with_the_fix(serve, ca, stack, monkeypatch, capsys):
    fake = serve(outer_fake())
    fake.nested_on = []
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(["preflight", "-s", stack, "--outer-url", fake.url, "--outer-ca", ca, "--format", "json"]) == 1
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    (nested,) = [c for c in report["checks"] if c["status"] == "fail"]
    assert nested["name"] == "nested virtualization" and "modprobe" in nested["fix"]


def test_cli_without_token_names_the_variable(stack, monkeypatch, capsys):
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN", raising=False)
    assert main(["preflight", "-s", stack, "--outer-url", closed_port_url()]) == 2
    assert "PVE_LAB_OUTER_API_TOKEN is not set" in capsys.readouterr().err


# ---------------------------------------------------------------- classroom stacks and tokens that see little


def _grant_except_vm_audit(fake, audit_paths=("/vms/9100",)):
    from fakepve.shapes import PRIVILEGES

    user = token_parts()[0].split("!")[0]
    fake.grant(user, "/", *[p for p in PRIVILEGES if p != "VM.Audit"])
    for path in audit_paths:
        fake.grant(user, path, "VM.Audit")


def test_a_vmid_held_by_a_guest_the_token_may_not_audit_is_not_free(serve, ca):
    """/cluster/resources lists only what the token may audit; /cluster/nextid?vmid=N answers for every guest."""
    fake = serve(outer_fake())
    _grant_except_vm_audit(fake)
    fake.add_vm(9101, "someone-elses", node="pve")
    r = by_name(preflight(fake, ca))["VMIDs"]
    assert r.status == "fail" and "9101 (a guest this token may not audit)" in r.detail


def test_the_qdevice_vm_is_counted_and_its_vmid_checked(serve, ca):
    """The QDevice VM takes the VMID after the nodes' (pvelab/qdevice.py): preflight counts it and its VMID."""
    raw = _raw(**{"nodes.count": 2, "nodes.qdevice": True, "ha.enabled": False, "ceph.enabled": False})
    spec = parse_spec(copy.deepcopy(raw))
    need = requirement_for(spec)
    assert need.vmids == (9100, 9101, 9102) and need.vms == 3
    assert need.memory_mib == 2 * spec.nodes.memory_mib + QDEVICE_MEMORY_MIB
    fake = serve(outer_fake())
    fake.add_vm(9102, "someone-elses", node="pve")
    r = by_name(preflight(fake, ca, raw))["VMIDs"]
    assert r.status == "fail" and "9102 (qemu 'someone-elses' on pve)" in r.detail


STUDENT = {"id": "s01", "name": "Student 1", "user": "c1-s01@pve", "pool": "c1-s01",
           "network": {"mode": "vlan", "vlanTag": 1100}}


def test_creating_the_class_account_needs_realm_allocate_user_on_its_realm(serve, ca):
    fake = serve(outer_fake())
    _grant_all_but("Realm.AllocateUser")(fake)
    r = by_name(preflight(fake, ca, _raw(student=dict(STUDENT))))["API token privileges"]
    assert r.status == "fail" and "Realm.AllocateUser on /access/realm/pve" in r.detail
    # an existing directory account is only granted ACLs: no user is created, so no Realm.AllocateUser
    ldap = dict(STUDENT, user="aiko@ldap")
    assert by_name(preflight(fake, ca, _raw(student=ldap)))["API token privileges"].status == "pass"


def test_an_sdn_class_needs_sdn_allocate_on_sdn_to_apply(serve, ca):
    fake = serve(outer_fake())
    fake.sdn_zones["labs"] = "vlan"
    user = token_parts()[0].split("!")[0]
    from fakepve.shapes import PRIVILEGES

    fake.grant(user, "/", *[p for p in PRIVILEGES if p != "SDN.Allocate"])
    fake.grant(user, "/sdn/zones/labs", "SDN.Allocate")
    sdn = dict(STUDENT, network={"mode": "sdn", "zone": "labs", "vnet": "s01", "vnetTag": 101})
    r = by_name(preflight(fake, ca, _raw(student=sdn)))["API token privileges"]
    assert r.status == "fail" and "SDN.Allocate on /sdn (apply the SDN configuration)" in r.detail


def test_the_class_image_missing_before_the_first_classroom_up_is_a_warning(serve, ca):
    fake = serve(outer_fake())
    raw = _raw(student=dict(STUDENT), **{"image.fileId": "local:import/ha101-debian-13.qcow2"})
    results = preflight(fake, ca, raw)
    assert not failed(results), render_text(results)
    (warn,) = [r for r in results if r.name.startswith("class image")]
    assert warn.status == "warn" and "`classroom up` downloads it first" in warn.detail

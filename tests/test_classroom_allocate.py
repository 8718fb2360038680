"""Classroom roster and allocation: stable slots, no collisions, placement by capacity, one clear line per mistake."""
from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest

from pvelab.classroom.allocate import allocate, allocation_path, load_allocation, save_allocation
from pvelab.classroom.roster import RosterError, load_roster, parse_roster
from pvelab.spec import ImageSpec, SpecError, parse_spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"
ENDPOINT = "https://pve.example.internal:8006/"


def roster_doc(n: int = 6, **extra) -> dict:
    doc = {
        "class": "ha101",
        "lab": {"outer": {"endpoint": ENDPOINT, "bridge": "vmbr1"},
                "nodes": {"count": 3, "cores": 2, "memoryMiB": 6144}},
        "allocation": {"vmidBase": 20000, "vmidBlock": 10, "supernet": "10.100.0.0/16", "subnetPrefix": 24,
                       "network": {"mode": "vlan", "tagBase": 1100}},
        "students": [{"id": f"s{i:03d}", "name": f"Student {i}"} for i in range(n)],
    }
    doc.update(extra)
    return doc


def roster(doc: dict, path: Path = Path("/nonexistent/class.yaml")):
    return parse_roster(copy.deepcopy(doc), path)


def problems_of(doc: dict, previous=None) -> list[str]:
    with pytest.raises(RosterError) as err:
        allocate(roster(doc), previous)
    return err.value.problems


# ------------------------------------------------------------------ the sample roster


def test_example_roster_plans_six_students_on_two_nodes():
    plan = allocate(load_roster(EXAMPLE))  # from scratch, whatever allocation file may sit next to it
    assert [s.stack for s in plan.students] == [f"ha101-s0{i}" for i in range(1, 7)]
    by_id = plan.by_id()
    assert by_id["s04"].outer_node == "pve2"  # pinned
    assert {s.outer_node for s in plan.students} == {"pve1", "pve2"}
    assert by_id["s06"].demand.memory_gib == 24  # its own override: 3 x 8 GiB
    for s in plan.students:
        spec = parse_spec(json.loads(s.config()["pve-lab:lab"]))
        assert spec.student.id == s.student_id and spec.outer.node == s.outer_node
        assert spec.image.file_id == f"local:import/ha101-{ImageSpec.file_name}"  # the class's own copy


# ------------------------------------------------------------------ no collisions


@pytest.mark.parametrize("mode", ["vlan", "sdn"])
def test_two_hundred_students_never_share_vmids_subnets_networks_or_names(mode):
    doc = roster_doc(200)
    if mode == "sdn":
        doc["allocation"]["network"] = {"mode": "sdn", "zone": "classes", "vnetPrefix": "ha", "tagBase": 1100}
    plan = allocate(roster(doc))
    assert len(plan.students) == 200 and plan.ok
    vmids = [v for s in plan.students for v in s.vmids]
    assert len(vmids) == len(set(vmids)) == 600
    subnets = [ipaddress.ip_network(s.lab["network"]["cidr"]) for s in plan.students]
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
    assert all(n.subnet_of(ipaddress.ip_network("10.100.0.0/16")) for n in subnets)
    nets = [s.student["network"] for s in plan.students]
    tags = [n["vlanTag"] if mode == "vlan" else n["vnetTag"] for n in nets]
    assert len(set(tags)) == 200 and max(tags) <= 4094
    if mode == "sdn":
        vnets = [n["vnet"] for n in nets]
        assert len(set(vnets)) == 200 and all(len(v) <= 8 for v in vnets)
    for key in ("pool", "user"):
        assert len({s.student[key] for s in plan.students}) == 200
    assert len({s.stack for s in plan.students}) == 200
    assert len({s.lab["cluster"]["name"] for s in plan.students}) == 200


# ------------------------------------------------------------------ stability


def test_adding_and_removing_students_never_moves_the_others(tmp_path):
    doc = roster_doc(8, outerNodes=[{"name": "pve1", "memoryGiB": 200}, {"name": "pve2", "memoryGiB": 200}])
    first = allocate(roster(doc))
    path = save_allocation(first, tmp_path / "class.alloc.yaml")
    before = {s.student_id: (s.slot, s.outer_node, s.lab) for s in first.students}

    removed = copy.deepcopy(doc)
    del removed["students"][2]  # s002 leaves
    removed["students"].insert(0, {"id": "new1", "name": "Newcomer"})  # listed first, still gets a free slot
    second = allocate(roster(removed), load_allocation(path))
    after = {s.student_id: (s.slot, s.outer_node, s.lab) for s in second.students}
    for sid, value in after.items():
        if sid in before:
            assert value == before[sid], f"{sid} moved"
    assert second.by_id()["new1"].slot == 8  # slot 2 stays retired: s002's lab may not be destroyed yet
    assert second.allocation.retired == {2: ("s002", before["s002"][1])}
    assert second.by_id()["new1"].status == "new" and second.by_id()["s000"].status == "kept"

    save_allocation(second, path)
    third = allocate(roster(doc), load_allocation(path))  # s002 comes back: same slot as before
    assert third.by_id()["s002"].slot == 2 and third.by_id()["s002"].lab == before["s002"][2]

    reuse = copy.deepcopy(removed)
    reuse["allocation"]["reuseRetiredSlots"] = True  # after `classroom down` of s002, its slot may go to new1
    assert allocate(roster(reuse), first.allocation).by_id()["new1"].slot == 2


def test_the_allocation_file_round_trips(tmp_path):
    plan = allocate(roster(roster_doc(3)))
    path = save_allocation(plan, tmp_path / "x.alloc.yaml")
    loaded = load_allocation(path)
    assert loaded.students == plan.allocation.students and loaded.class_id == "ha101"
    assert load_allocation(tmp_path / "missing.alloc.yaml") is None
    assert allocation_path("rosters/ha101.yaml") == Path("rosters/ha101.alloc.yaml")


def test_changing_the_slot_layout_of_an_allocated_class_is_refused():
    plan = allocate(roster(roster_doc(3)))
    doc = roster_doc(3)
    doc["allocation"]["vmidBase"] = 30000
    (problem,) = problems_of(doc, plan.allocation)
    assert problem.startswith("roster.allocation.vmidBase: 30000 differs from 20000") and "move every" in problem


# ------------------------------------------------------------------ placement


def test_placement_fills_nodes_within_capacity_and_honours_pins():
    nodes = [{"name": "pve1", "cores": 40, "memoryGiB": 64, "diskGiB": 2000},
             {"name": "pve2", "cores": 40, "memoryGiB": 40, "diskGiB": 2000}]
    doc = roster_doc(5, outerNodes=nodes)
    doc["students"][4]["node"] = "pve2"
    plan = allocate(roster(doc))  # each student: 6 vCPU, 18 GiB, 192 GiB
    for usage in plan.nodes:
        assert usage.used.memory_gib <= usage.node.memory_gib and usage.used.cores <= usage.node.cores
    assert plan.by_id()["s004"].outer_node == "pve2"
    assert sorted(len(u.students) for u in plan.nodes) == [2, 3]


def test_a_class_that_does_not_fit_names_the_student_and_the_shortfall():
    doc = roster_doc(4, outerNodes=[{"name": "pve1", "cores": 64, "memoryGiB": 40}])
    problems = problems_of(doc)
    assert len(problems) == 2  # s002 and s003 do not fit; s000 and s001 take 36 of 40 GiB
    assert problems[0].startswith("roster.students[2] (s002): the class does not fit: s002 needs 6 vCPU, 18 GiB RAM")
    assert "most free: pve1 with 52 vCPU, 4 GiB RAM, unlimited disk" in problems[0] and "short 14 GiB RAM" in problems[0]

    plan = allocate(roster(doc), strict=False)  # plan shows the others anyway
    assert [s.outer_node for s in plan.students] == ["pve1", "pve1", None, None]
    assert plan.by_id()["s002"].status == "no fit"


def test_a_pin_to_a_full_node_is_an_error_naming_the_node():
    doc = roster_doc(2, outerNodes=[{"name": "pve1", "memoryGiB": 100}, {"name": "pve2", "memoryGiB": 20}])
    doc["students"][0]["node"] = doc["students"][1]["node"] = "pve2"
    (problem,) = problems_of(doc)
    assert problem.startswith("roster.students[1].node: s001 is pinned to 'pve2', which lacks 16 GiB RAM")


def test_an_allocated_student_on_a_removed_node_is_not_moved_silently():
    doc = roster_doc(2, outerNodes=[{"name": "pve1"}, {"name": "pve2"}])
    doc["students"][1]["node"] = "pve2"
    plan = allocate(roster(doc))
    doc = roster_doc(2, outerNodes=[{"name": "pve1"}])
    (problem,) = problems_of(doc, plan.allocation)
    assert problem.startswith("roster.students[1] (s001): allocated on 'pve2', which is not in roster.outerNodes")


def test_slots_run_out_with_a_clear_message():
    doc = roster_doc(5)
    doc["allocation"]["supernet"] = "10.100.0.0/22"
    problems = problems_of(doc)
    assert problems == ["roster.students[4] (s004): no free slot: roster.allocation.supernet (10.100.0.0/22 holds "
                        "4 subnets of /24) allows 4 students; widen it"]


# ------------------------------------------------------------------ roster mistakes: one line each, naming the key


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["students"].append({"id": "s001", "name": "Twin"}),
     "roster.students[3].id: duplicate 's001' (also roster.students[1])"),
    (lambda d: d["students"][0].update(id="S 1"), "roster.students[0].id: 'S 1' is not allowed"),
    (lambda d: d["students"][0].update(nick="x"), "roster.students[0].nick: unknown key"),
    (lambda d: d.update({"class": "HA-101"}), "roster.class: 'HA-101' is not allowed"),
    (lambda d: d["allocation"].update(subnetPrefix=40), "roster.allocation.subnetPrefix: 40 is out of range"),
    (lambda d: d["allocation"]["network"].update(mode="vxlan"), "roster.allocation.network.mode: 'vxlan'"),
    (lambda d: d["allocation"].update(network={"mode": "sdn"}), "roster.allocation.network.zone: missing"),
    (lambda d: d["allocation"].update(role="Administrator"), "roster.allocation.role: 'Administrator' is not allowed"),
    (lambda d: d.update(outerNodes=[{"name": "pve1"}, {"name": "pve1"}]), "roster.outerNodes[1].name: duplicate 'pve1'"),
    (lambda d: d["students"][0].update(node="pve9") or d.update(outerNodes=["pve1"]),
     "roster.students[0].node: 'pve9' is not an outer node (roster.outerNodes: pve1)"),
    (lambda d: d.update(students=[]), "roster.students: give at least one student"),
])
def test_roster_mistakes_are_one_line_naming_the_key(change, expected):
    doc = roster_doc(3)
    change(doc)
    with pytest.raises(RosterError) as err:
        roster(doc)
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["students"][1].update(lab={"nodes": {"memoryMiB": 2048}}),
     "roster.students[1].lab.nodes.memoryMiB: 2048 MiB is too little"),
    (lambda d: d["lab"]["outer"].pop("endpoint"), "roster.lab.outer.endpoint: missing"),
    (lambda d: d["students"][0].update(lab={"vmidBase": 5}), "roster.students[0].lab.vmidBase: set by the allocation"),
    (lambda d: d["lab"].update(cluster={"name": "x"}), "roster.lab.cluster.name: set by roster.allocation.clusterName"),
    (lambda d: d["students"][2].update(lab={"nodes": {"count": 11}}),
     "roster.students[2].lab.nodes.count: 11 nested nodes need 11 VMIDs but roster.allocation.vmidBlock gives each student 10"),
    # the QDevice VM takes the VMID after the nodes' (pvelab/qdevice.py): it must fit in the student's block too
    (lambda d: (d["allocation"].update(vmidBlock=4), d["students"][1].update(
        lab={"nodes": {"count": 4, "qdevice": True}, "ha": {"enabled": False}, "ceph": {"enabled": False}})),
     "roster.students[1].lab.nodes.count: 4 nested nodes and the QDevice VM need 5 VMIDs but "
     "roster.allocation.vmidBlock gives each student 4"),
    (lambda d: d["allocation"].update(clusterName="{class}-{id}-cluster-long"),
     "roster.allocation (student s000, slot 0): lab.cluster.name:"),
])
def test_lab_mistakes_are_named_by_the_roster_key(change, expected):
    doc = roster_doc(3)
    change(doc)
    problems = problems_of(doc)
    assert any(p.startswith(expected) for p in problems), problems
    assert len(problems) == len(set(problems))  # a class-wide mistake is reported once, not per student


# ------------------------------------------------------------------ CSV rosters and shared images


def test_csv_roster_direct_and_referenced(tmp_path):
    header = "# class: ha101\n# lab: {outer: {endpoint: '" + ENDPOINT + "'}, nodes: {cores: 2, memoryMiB: 6144}}\n"
    rows = "id,name,node,lab.nodes.memoryMiB\ns01,Aiko Tanaka,,\ns02,\"Carter, Ben\",,8192\n"
    (tmp_path / "class.csv").write_text(header + rows)
    direct = load_roster(tmp_path / "class.csv")
    assert [(s.id, s.name) for s in direct.students] == [("s01", "Aiko Tanaka"), ("s02", "Carter, Ben")]
    assert direct.students[1].lab == {"nodes": {"memoryMiB": 8192}}

    (tmp_path / "students.csv").write_text(rows)
    (tmp_path / "class.yaml").write_text(f"class: ha101\nlab: {{outer: {{endpoint: '{ENDPOINT}'}}}}\nstudents: students.csv\n")
    referenced = load_roster(tmp_path / "class.yaml")
    assert [s.id for s in referenced.students] == ["s01", "s02"]

    example = allocate(load_roster(EXAMPLE.with_suffix(".csv")))
    assert [(s.stack, s.outer_node, s.student["user"]) for s in example.students] == [
        ("ha102-s01", "pve1", "ha102-s01@pve"), ("ha102-s02", "pve2", "ha102-s02@pve"), ("ha102-s03", "pve1", "chen@ldap")]
    assert example.by_id()["s03"].demand.memory_gib == 24

    (tmp_path / "bad.csv").write_text(header + "id,name,shoe\ns01,A,42\n")
    with pytest.raises(RosterError, match=r"unknown column 'shoe'"):
        load_roster(tmp_path / "bad.csv")


def test_the_class_image_is_downloaded_once_per_outer_node():
    doc = roster_doc(6, outerNodes=[{"name": "pve1", "memoryGiB": 60}, {"name": "pve2", "memoryGiB": 60,
                                                                        "imageStorage": "cephfs"}])
    doc["lab"]["image"] = {"checksum": "ab" * 64}
    plan = allocate(roster(doc))
    downloads = {d.node: d for d in plan.image_downloads}
    assert set(downloads) == {"pve1", "pve2"} and len(plan.image_downloads) == 2
    assert downloads["pve2"].file_id == f"cephfs:import/{plan.roster.class_id}-{ImageSpec.file_name}"
    assert downloads["pve2"].storage == "cephfs"
    assert downloads["pve1"].checksum == "ab" * 64 and downloads["pve1"].checksum_algorithm == "sha512"
    for s in plan.students:
        assert s.lab["image"]["fileId"] == downloads[s.outer_node].file_id


def test_the_spec_refuses_an_admin_role_for_a_student():
    plan = allocate(roster(roster_doc(1)))
    lab = copy.deepcopy(plan.students[0].lab)
    assert lab["student"]["role"] == "PVEVMUser"
    lab["student"]["role"] = "PVEAdmin"
    with pytest.raises(SpecError) as err:
        parse_spec(lab)
    assert err.value.problems[0].startswith("pve-lab:lab.student.role: 'PVEAdmin' is not allowed")

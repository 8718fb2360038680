"""`classroom up/down` beyond the roster: retired students' labs are destroyed on `down`, and a pin that would move
a student whose lab exists is refused. The real backends and Automation API drive the fake `pulumi` CLI."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import fake_pulumi
import pytest
import yaml

from pvelab.classroom import run_cli
from pvelab.classroom.allocate import allocation_path, plan_class, save_allocation
from pvelab.classroom.lifecycle import Move, moves, refused_moves, retired_stacks

TOKEN = "root@pam!pvelab=00000000-1111-2222-3333-444444444444"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    return fake_pulumi.install(tmp_path, monkeypatch)


@pytest.fixture
def roster(tmp_path):
    """The example roster, allocated once (as `classroom render` or a first `up` records it)."""
    path = tmp_path / "classroom.yaml"
    path.write_text(EXAMPLE.read_text())
    save_allocation(plan_class(path), allocation_path(path))
    return path


def edit_roster(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def run(action, roster, tmp_path, *extra):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    run_cli.add_run_commands(sub)
    flags = ["--no-preflight"] if action == "up" else []
    args = parser.parse_args([action, str(roster), "--log-dir", str(tmp_path / "logs"), "--project-dir", str(tmp_path),
                              "--backoff", "0", *flags, *extra])
    out, err = io.StringIO(), io.StringIO()
    return run_cli.run_command(action, args, out, err), out.getvalue(), err.getvalue()


def test_down_destroys_retired_students_labs_before_the_images(cli, monkeypatch, tmp_path, roster):
    for i in range(1, 7):
        cli.add_stack(f"ha101-s0{i}")
    cli.add_stack("ha101-images")
    edit_roster(roster, lambda lines: [ln for ln in lines if "id: s03" not in ln])  # s03 left the class
    plan = plan_class(roster)
    assert [(r.student_id, r.stack) for r in retired_stacks(plan)] == [("s03", "ha101-s03")]
    code, out, err = run("down", roster, tmp_path, "--yes", "--json")
    assert code == 0, err
    assert "retired student(s)" in err and "s03" in err
    destroyed = [a for a in cli.argvs() if a[:1] == ["destroy"]]
    stacks = [a[a.index("--stack") + 1] for a in destroyed]
    assert "ha101-s03" in stacks and stacks[-1] == "ha101-images"  # the images only after every student
    assert not any(s.startswith("ha101-s0") for s in cli.stacks)
    summary = json.loads(out)
    assert {s["student"]: s["state"] for s in summary["stacks"]}["s03"] == "destroyed"


def test_down_only_can_name_a_retired_student(cli, tmp_path, roster):
    cli.add_stack("ha101-s03")
    edit_roster(roster, lambda lines: [ln for ln in lines if "id: s03" not in ln])
    code, out, err = run("down", roster, tmp_path, "--yes", "--only", "s03")
    assert code == 0, err
    assert "ha101-s03" not in cli.stacks


def pin_s02_to_pve2(lines):
    return [ln.replace("{id: s02, name: Ben Carter}", "{id: s02, name: Ben Carter, node: pve2}") for ln in lines]


def test_up_refuses_to_move_a_pinned_student_whose_lab_exists(cli, monkeypatch, tmp_path, roster):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    recorded = yaml.safe_load(allocation_path(roster).read_text())["students"]["s02"]["node"]
    assert recorded == "pve1"
    cli.add_stack("ha101-s02", resources=9)
    before = allocation_path(roster).read_text()
    edit_roster(roster, pin_s02_to_pve2)
    code, out, err = run("up", roster, tmp_path)
    assert code == 2
    assert "refusing to start (nothing started)" in err
    assert "s02: allocated on 'pve1' and now pinned to 'pve2'" in err and "--only s02" in err
    assert not [a for a in cli.argvs() if a[:1] == ["up"]]
    assert allocation_path(roster).read_text() == before  # nothing recorded either


def test_a_moved_student_without_a_lab_is_simply_built_on_the_new_node(cli, monkeypatch, tmp_path, roster):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    edit_roster(roster, pin_s02_to_pve2)
    code, out, err = run("up", roster, tmp_path, "--only", "s02")
    assert code == 0, err
    assert [a[a.index("--stack") + 1] for a in cli.argvs() if a[:1] == ["up"]] == ["ha101-images", "ha101-s02"]
    assert yaml.safe_load(allocation_path(roster).read_text())["students"]["s02"]["node"] == "pve2"


def test_refused_moves_reads_cloud_stack_names_and_ignores_empty_stacks():
    found = [Move("s02", "ha101-s02", "pve1", "pve2"), Move("s05", "ha101-s05", "pve2", "pve1")]
    lines = refused_moves(found, {"acme/pve-lab/ha101-s02": 12, "ha101-s05": 0})
    assert len(lines) == 1 and lines[0].startswith("s02:") and "12 resources" in lines[0]


def test_moves_compares_with_the_recorded_node(roster):
    edit_roster(roster, pin_s02_to_pve2)
    plan = plan_class(roster)
    assert moves(plan, {"s02": "pve1", "s01": plan.by_id()["s01"].outer_node}) == [
        Move("s02", "ha101-s02", "pve1", "pve2")]


def test_the_class_image_is_the_classs_own_file(tmp_path):
    """A lone lab and another class on the same storage download the same Debian file name: the class's copy is
    named after the class, so neither collides with it nor loses it when the class's images are destroyed."""
    from pvelab.spec import ImageSpec

    one = tmp_path / "one.yaml"
    one.write_text(EXAMPLE.read_text())
    other = tmp_path / "other.yaml"
    other.write_text(EXAMPLE.read_text().replace("class: ha101", "class: net202"))
    ids = [{d.file_id for d in plan_class(p).image_downloads} for p in (one, other)]
    assert ids[0] == {f"local:import/ha101-{ImageSpec.file_name}"}
    assert ids[1] == {f"local:import/net202-{ImageSpec.file_name}"}
    assert f"local:import/{ImageSpec.file_name}" not in ids[0] | ids[1]  # the lone lab's own download


# ---------------------------------------------------------------- what the plan cannot check, the credentials sheet


def test_classroom_plan_says_what_it_cannot_check(roster, capsys):
    from pvelab.classroom import cli as classroom_cli
    from pvelab.classroom.preflight import CANNOT_CHECK

    parser = argparse.ArgumentParser()
    classroom_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["classroom", "plan", str(roster)])
    args.func(args)
    text = capsys.readouterr().out
    assert "not checked here" in text and "drop traffic between student subnets" in text
    args = parser.parse_args(["classroom", "plan", str(roster), "--format", "json"])
    args.func(args)
    assert json.loads(capsys.readouterr().out)["notChecked"] == list(CANNOT_CHECK)


def credentials(roster, tmp_path, *extra):
    from pvelab.classroom import cli as classroom_cli

    parser = argparse.ArgumentParser()
    classroom_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["classroom", "credentials", str(roster), "--project-dir", str(tmp_path), *extra])
    return args.func(args)


def test_credentials_sheet_without_secrets_needs_no_cli_and_shows_none(roster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no `pulumi` anywhere: not needed without --show-secrets
    assert credentials(roster, tmp_path, "--only", "s01") == 0
    text = capsys.readouterr().out
    assert "== s01: Aiko Tanaka (stack ha101-s01) ==" in text and "user: ha101-s01@pve" in text
    assert "https://pve.example.internal:8006/" in text and "https://10.100.0.11:8006/" in text
    assert text.count("(hidden: run with --show-secrets)") == 2  # student and nested root password
    assert "back up their VMs or insert an ISO" in text and "guest agent" in text
    assert "== s02" not in text


def test_credentials_with_secrets_reads_the_stack_outputs_through_the_cli(cli, roster, tmp_path, capsys):
    cli.add_stack("ha101-s01", outputs={"studentPassword": "Stud3ntPw", "rootPassword": "N3stedRoot"},
                  secrets={"studentPassword", "rootPassword"})
    assert credentials(roster, tmp_path, "--only", "s01", "--show-secrets", "--format", "json") == 0
    out = capsys.readouterr()
    (sheet,) = json.loads(out.out)
    assert sheet["password"] == "Stud3ntPw" and sheet["nested_root_password"] == "N3stedRoot"
    assert "hand each one to its student only" in out.err
    assert all("Stud3ntPw" not in json.dumps(c["argv"]) for c in cli.calls)
    assert [a for a in cli.argvs() if "--show-secrets" in a and a[:2] == ["stack", "output"]]


def test_credentials_for_a_directory_account_never_show_a_password(cli, roster, tmp_path, capsys):
    edit_roster(roster, lambda lines: [ln.replace("{id: s01, name: Aiko Tanaka}",
                                                  "{id: s01, name: Aiko Tanaka, user: aiko@ldap}") for ln in lines])
    cli.add_stack("ha101-s01", outputs={"rootPassword": "N3stedRoot"}, secrets={"rootPassword"})
    assert credentials(roster, tmp_path, "--only", "s01", "--show-secrets") == 0
    text = capsys.readouterr().out
    assert "user: aiko@ldap   realm: ldap" in text and "their own ldap password" in text
    assert "N3stedRoot" in text


def test_up_refuses_while_an_old_stack_still_manages_a_directory_account(cli, monkeypatch, tmp_path, roster):
    """Stacks made before accounts were owned by realm hold a UserLegacy for aiko@ldap: the program no longer declares
    it, so an `up` would delete the person's account. Refuse, and say how to forget it without touching it."""
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    edit_roster(roster, lambda lines: [ln.replace("{id: s01, name: Aiko Tanaka}",
                                                  "{id: s01, name: Aiko Tanaka, user: aiko@ldap}") for ln in lines])
    urn = ("urn:pulumi:ha101-s01::pve-lab::pve-lab:index:PveLab$pve-lab:index:StudentAccess$"
           "proxmoxve:index/userLegacy:UserLegacy::lab-student-user")
    cli.add_stack("ha101-s01", resources=9, state=[{"urn": urn, "type": "proxmoxve:index/userLegacy:UserLegacy"}])
    code, out, err = run("up", roster, tmp_path)
    assert code == 2
    assert "s01: stack ha101-s01 still manages the user account aiko@ldap" in err
    assert f"pulumi state delete -s ha101-s01 --target-dependents '{urn}'" in err
    assert not [a for a in cli.argvs() if a[:1] == ["up"]]

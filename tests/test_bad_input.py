"""Bad input of every kind (issue 14): one line naming the key or file and what is allowed, never a traceback.

One table per kind; each row is a mistake a user (or a hostile user) can make. The crash and race tests of
`classroom render` are in test_crash_safety.py, the generated cases in test_fuzz_input.py.
"""
from __future__ import annotations

import copy
import http.server
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from harness import deep_merge, lab_raw

from pvelab.classroom.allocate import allocate, load_allocation
from pvelab.classroom.roster import RosterError, load_roster, parse_roster
from pvelab.cli import main
from pvelab.formats import show
from pvelab.safeyaml import YamlInputError, load_yaml
from pvelab.spec import FIELD_RULES, SpecError, check_root_password, check_secrets, parse_spec
from pvelab.stackfile import load_stack

ROOT = Path(__file__).resolve().parent.parent
COMMON_SH = ROOT / "components" / "scripts" / "lib" / "common.sh"
TOKEN = "root@pam!pvelab=0123abcd-4567-89ab-cdef-0123456789ab"
TOKEN_SECRET = TOKEN.split("=", 1)[1]
ENDPOINT = "https://pve.example.internal:8006/"


def set_path(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    target = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value
    return raw


def spec_problems(raw) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    return err.value.problems


def assert_one_clean_line(text: str, *, secrets: tuple[str, ...] = ()) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    for secret in secrets:
        assert secret not in text


# A lab where every key of the field table is set to a valid value (the student part as `classroom render`
# writes it), so each key can be broken on its own.
FULL_LAB = deep_merge(lab_raw(), {
    "outer": {"vlanTag": 10, "pool": "labpool", "sshUser": "root"},
    "network": {"link1": {"cidr": "10.10.20.0/24", "firstAddress": "10.10.20.11", "bridge": "vmbr1", "vlanTag": 20}},
    "ha": {"ruleName": "lab-prefer", "testVmAddress": "10.10.10.60",
           "testVmImage": {"url": "https://cloud.debian.org/images/cloud/trixie/20260101-0000/"
                                  "debian-13-genericcloud-amd64-20260101-0000.qcow2",
                           "checksum": "c" * 128, "checksumAlgorithm": "sha512",
                           "fileName": "debian-13-genericcloud-amd64-20260101-0000.qcow2"}},
    "image": {"checksum": "ab" * 64, "checksumAlgorithm": "sha512",
              "fileId": "local:import/debian-13-genericcloud-amd64.qcow2"},
    "repository": {"keyringUrl": "https://enterprise.proxmox.com/debian/proxmox-archive-keyring-trixie.gpg",
                   "keyringSha256": "1" * 64},
    "ceph": {"clusterNetwork": "link1"},
    # the golden template and package cache keys (issue 13); nodes.source stays apt, so nothing is built
    "template": {"builderAddress": "10.10.10.50", "vmId": 9050, "sealTimeoutS": 600},
    "aptProxy": "http://10.10.10.5:3142",
    "tags": ["pve-lab", "ha101"],
    "student": {"id": "s01", "name": "Aiko", "user": "ha101-s01@pve", "pool": "ha101-s01", "role": "PVEVMUser",
                "network": {"mode": "vlan", "vlanTag": 1100}},
})
SDN_LAB = set_path(FULL_LAB, "student.network", {"mode": "sdn", "zone": "classes", "vnet": "lab0", "vnetTag": 1100})


def lab_value(lab, key):
    for part in key.split("."):
        lab = lab[part]
    return lab


def _field_cases():
    from pvelab.spec import _field_values

    cases = []
    for path in FIELD_RULES:
        lab = SDN_LAB if path in ("student.network.zone", "student.network.vnet", "student.network.vnetTag") else FULL_LAB
        key = path.replace("[]", "")
        ((_, value), *_) = _field_values(parse_spec(lab), path)  # the value as set, or the spec's default
        if path.endswith("[]"):
            value = lab_value(lab, key)
            cases.append((path, lab, f"{key}[0]", key, value[0], True))
        else:
            cases.append((path, lab, key, key, value, False))
    return cases


FIELD_CASES = _field_cases()


def test_the_full_lab_is_valid_and_every_field_rule_is_exercised():
    parse_spec(FULL_LAB)
    parse_spec(SDN_LAB)
    assert len(FIELD_CASES) == len(FIELD_RULES)


# ---------------------------------------------------------------- kind 2: a trailing newline never passes


@pytest.mark.parametrize("path,lab,named,key,value,is_list", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_every_validated_field_refuses_a_trailing_newline(path, lab, named, key, value, is_list):
    bad = f"{value}\n"
    raw = set_path(lab, key, [bad] + list(lab_value(lab, key)[1:]) if is_list else bad)
    problems = spec_problems(raw)
    assert any(p.startswith(f"pve-lab:lab.{named}: ") for p in problems), problems
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize("field,value", [
    ("role", "Administrator\n"), ("userRealm", "pve\n"), ("hostnamePrefix", "{id}-pve\n"),
    ("clusterName", "{class}-{id}\n"), ("supernet", "10.100.0.0/16\n"),
])
def test_roster_allocation_fields_refuse_a_trailing_newline(field, value):
    doc = roster_doc()
    doc["allocation"][field] = value
    with pytest.raises(RosterError) as err:
        parse_roster(doc, Path("/nonexistent/c.yaml"))
    assert any(p.startswith(f"roster.allocation.{field}: ") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("key,value", [("id", "s01\n"), ("name", "Aiko\nTanaka"), ("node", "pve1\n"),
                                       ("user", "aiko@pve\n")])
def test_roster_student_fields_refuse_a_trailing_newline(key, value):
    doc = roster_doc(outerNodes=[{"name": "pve1"}])
    doc["students"][0][key] = value
    with pytest.raises(RosterError) as err:
        parse_roster(doc, Path("/nonexistent/c.yaml"))
    assert any(p.startswith(f"roster.students[0].{key}: ") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("where,change", [
    ("roster.class", lambda d: d.update({"class": "ha101\n"})),
    ("roster.title", lambda d: d.update(title="Chapter 7\n")),
    ("roster.outerNodes[0].name", lambda d: d.update(outerNodes=[{"name": "pve1\n"}])),
    ("roster.outerNodes[0].storage", lambda d: d.update(outerNodes=[{"name": "pve1", "storage": "local\n"}])),
    ("roster.outerNodes[0].imageStorage", lambda d: d.update(outerNodes=[{"name": "pve1", "imageStorage": "local\n"}])),
    ("roster.limits.allowedNodes[0]", lambda d: d.update(limits={"allowedNodes": ["pve1\n"]})),
    ("roster.limits.allowedStorages[0]", lambda d: d.update(limits={"allowedStorages": ["local\n"]})),
    ("roster.allocation.network.bridge", lambda d: d["allocation"]["network"].update(bridge="vmbr1\n")),
    ("roster.allocation.network.zone", lambda d: d["allocation"].update(network={"mode": "sdn", "zone": "z1\n"})),
    ("roster.allocation.network.vnetPrefix", lambda d: d["allocation"].update(
        network={"mode": "sdn", "zone": "z1", "vnetPrefix": "lab\n"})),
    ("roster.allocation.network.mode", lambda d: d["allocation"]["network"].update(mode="vlan\n")),
])
def test_every_roster_text_field_refuses_a_trailing_newline(where, change):
    doc = roster_doc()
    change(doc)
    with pytest.raises(RosterError) as err:
        parse_roster(doc, Path("/nonexistent/c.yaml"))
    assert any(p.startswith(f"{where}: ") for p in err.value.problems), err.value.problems
    assert all("\n" not in p for p in err.value.problems)


def test_admin_role_with_a_newline_is_refused_by_the_spec():
    problems = spec_problems(set_path(FULL_LAB, "student.role", "Administrator\n"))
    assert problems[0].startswith("pve-lab:lab.student.role: 'Administrator\\n' is not allowed")


# ---------------------------------------------------------------- kind 3: secrets never in an error


@pytest.mark.parametrize("token", [TOKEN + "\n", TOKEN + " ", " " + TOKEN, TOKEN.replace("!", "\n!"), "r\u00f6ot" + TOKEN[4:],
                                   "root@pam!pvelab=" + "a" * 100, TOKEN + "\r\nX-Evil: 1"])
def test_a_malformed_token_is_refused_with_its_value_hidden(token, tmp_path, monkeypatch, capsys):
    assert check_secrets(token, None, None) == [
        "pve-lab:outerApiToken: not of the form 'user@realm!tokenid=uuid' (value hidden)"]
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab_raw()}}))
    monkeypatch.setattr("pvelab.ops.cli.load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", token)
    assert main(["preflight", "-s", "t", "--outer-url", "https://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert_one_clean_line(err, secrets=(TOKEN_SECRET, token.strip()))
    assert "value hidden" in err


@pytest.mark.parametrize("password,message", [
    ("short", "must be 12 to 64 characters"), ("a-long-password\n", "must be printable characters on one line"),
    ("tab\tinside-the-password", "printable"), ("x" * 65, "must be 12 to 64 characters"),
])
def test_a_bad_root_password_is_named_and_hidden(password, message):
    (problem,) = check_root_password(password)
    assert message in problem and password.strip() not in problem and "value hidden" in problem


@pytest.mark.parametrize("public_key", ["ssh-ed25519 AAAA\nssh-rsa BBBB", "not a key", "ssh-ed25519 AAAA@@@"])
def test_a_bad_public_key_is_refused_hidden(public_key):
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n-----END OPENSSH PRIVATE KEY-----"
    (problem,) = check_secrets(TOKEN, private, public_key)
    assert problem.startswith("pve-lab:sshPublicKey: ") and public_key not in problem


# ---------------------------------------------------------------- kind 4: YAML bombs and duplicate keys

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))

YAML_REFUSED = [
    ("bomb", BOMB, "anchor '&a' is not allowed"),
    ("alias-only", "a: *x\n", "alias '*x' is not allowed"),
    ("merge-key", "a: {x: 1}\nb:\n  <<: {y: 2}\n", "the tag !!merge is not allowed"),
    ("duplicate", "config:\n  pve-lab:lab: {}\n  pve-lab:lab: {}\n", "duplicate key 'pve-lab:lab' (also on line 2)"),
    ("binary", "a: !!binary aGVsbG8=\n", "the tag !!binary is not allowed"),
    ("set", "a: !!set {x, y}\n", "the tag !!set is not allowed"),
    ("python", "a: !!python/object/apply:os.system [id]\n", "is not allowed"),
    ("custom-tag", "a: !vault xyz\n", "the tag !vault is not allowed"),
    ("deep", "a: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 40 levels"),
    ("two-docs", "a: 1\n---\nb: 2\n", "not valid YAML"),
    ("broken", "a: [1\n", "not valid YAML"),
    ("huge-int", "a: " + "9" * 5000 + "\n", "f.yaml"),
    ("complex-key", "? [a]\n: 1\n", "a mapping key must be plain text"),
]


@pytest.mark.parametrize("case,text,message", YAML_REFUSED, ids=[c[0] for c in YAML_REFUSED])
def test_the_loader_refuses(case, text, message):
    with pytest.raises(YamlInputError) as err:
        load_yaml(text, "f.yaml")
    assert message in err.value.render()
    assert_one_clean_line(err.value.render())


@pytest.mark.parametrize("case,text,message", YAML_REFUSED[:5], ids=[c[0] for c in YAML_REFUSED[:5]])
def test_every_file_we_read_uses_the_loader(case, text, message, tmp_path):
    """Stack file, YAML roster, CSV roster header, allocation file: the same refusal, naming the file."""
    (tmp_path / "Pulumi.t.yaml").write_text(text)
    with pytest.raises(SpecError, match="Pulumi.t.yaml"):
        load_stack("t", tmp_path)
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(RosterError, match=r"roster \(c.yaml\)"):
        load_roster(tmp_path / "c.yaml")
    (tmp_path / "d.csv").write_text("".join(f"# {line}\n" for line in text.splitlines()) + "id,name\ns01,A\n")
    with pytest.raises(RosterError, match=r"roster \(d.csv"):
        load_roster(tmp_path / "d.csv")
    (tmp_path / "c.alloc.yaml").write_text(text)
    with pytest.raises(RosterError, match="c.alloc.yaml"):
        load_allocation(tmp_path / "c.alloc.yaml")


def test_dates_stay_text():
    assert load_yaml("d: 2026-01-31\nt: 2026-01-31 10:00:00\n", "f") == {"d": "2026-01-31", "t": "2026-01-31 10:00:00"}


# ---------------------------------------------------------------- kind 5: one line instead of a traceback


def write_stack(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "Pulumi.t.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


STACK_FILES = [
    ("list", "- a\n- b\n", "Pulumi.t.yaml: expected a mapping with a 'config' key, got list"),
    ("scalar", "hello\n", "Pulumi.t.yaml: expected a mapping with a 'config' key, got str"),
    ("config-list", "config: [1, 2]\n", "Pulumi.t.yaml: 'config' must be a mapping, got list"),
    ("config-int-key", "config: {1: 2}\n", "config key 1 is not text"),
    ("lab-list", "config: {pve-lab:lab: [1]}\n", "pve-lab:lab: expected a mapping, got list"),
    ("date", "config: {pve-lab:lab: {cluster: {domain: 2026-01-31}}}\n", "pve-lab:lab.cluster.domain: '2026-01-31'"),
    ("binary", "config: {pve-lab:lab: !!binary aGVsbG8=}\n", "Pulumi.t.yaml line 1: the tag !!binary is not allowed"),
    ("not-utf8", b"config:\n  pve-lab:lab: {outer: {node: \xff\xfe}}\n", "Pulumi.t.yaml: not UTF-8 text"),
    ("bool-domain", "config: {pve-lab:lab: {cluster: {domain: yes}}}\n", "pve-lab:lab.cluster.domain: expected a string, got True"),
    ("nan", "config: {pve-lab:lab: {nodes: {cores: .nan}}}\n", "pve-lab:lab.nodes.cores: expected an integer, got nan"),
    ("huge-string-int", "config: {pve-lab:lab: {nodes: {cores: '" + "9" * 5000 + "'}}}\n",
     "pve-lab:lab.nodes.cores: expected an integer"),
    ("newline-key", 'config: {pve-lab:lab: {"nodes\\nx": 1}}\n', "pve-lab:lab.'nodes\\nx': unknown key"),
    ("same-key-twice", "config: {lab: {}, pve-lab:lab: {}}\n", "Pulumi.t.yaml: pve-lab:lab is given twice"),
]


@pytest.mark.parametrize("case,text,message", STACK_FILES, ids=[c[0] for c in STACK_FILES])
def test_bad_stack_files_are_one_line_through_the_cli(case, text, message, tmp_path, monkeypatch, capsys):
    write_stack(tmp_path, text)
    monkeypatch.setattr("pvelab.ops.cli.load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    assert main(["preflight", "-s", "t"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert all(line.startswith(("pve-lab:", "Pulumi.t.yaml", "- ")) or "problem(s)" in line
               for line in err.splitlines() if line), err


def test_plan_reports_a_bad_stack_file_with_exit_2(tmp_path, capsys):
    write_stack(tmp_path, "config: {pve-lab:lab: &x {}}\n")
    assert main(["plan", "-s", "t", "--project-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert_one_clean_line(err)
    assert "anchor '&x' is not allowed" in err


def roster_doc(**extra) -> dict:
    doc = {"class": "ha101", "lab": {"outer": {"endpoint": ENDPOINT}},
           "allocation": {"vmidBase": 20000, "network": {"mode": "vlan", "tagBase": 1100}},
           "students": [{"id": "s01", "name": "Aiko"}, {"id": "s02", "name": "Ben"}]}
    doc.update(extra)
    return doc


ROSTER_MISTAKES = [
    ("students-not-list", {"students": "x: 1"}, "roster.students: the file 'x: 1' does not exist"),
    ("student-not-mapping", {"students": [["s01"]]}, "roster.students[0]: expected a mapping, got list"),
    ("id-int", {"students": [{"id": 7}]}, "roster.students[0].id: expected text, got 7 (put it in quotes"),
    ("name-bool", {"students": [{"id": "s01", "name": False}]}, "roster.students[0].name: expected text"),
    ("nan-memory", {"outerNodes": [{"name": "pve1", "memoryGiB": float("nan")}]},
     "roster.outerNodes[0].memoryGiB: expected a number, got nan"),
    ("inf-limit", {"limits": {"maxMemoryGiB": float("inf")}}, "roster.limits.maxMemoryGiB: expected a number, got inf"),
    ("node-name", {"outerNodes": [{"name": "pve_1"}]}, "roster.outerNodes[0].name: 'pve_1' is not allowed"),
    ("storage-id", {"outerNodes": [{"name": "pve1", "storage": "l"}]}, "roster.outerNodes[0].storage: 'l' is not allowed"),
    ("zone-id", {"allocation": {"network": {"mode": "sdn", "zone": "my-zone"}}},
     "roster.allocation.network.zone: 'my-zone' is not allowed"),
    ("bridge", {"allocation": {"network": {"mode": "vlan", "bridge": "vmbr0 x"}}},
     "roster.allocation.network.bridge: 'vmbr0 x' is not allowed"),
    ("template-attr", {"allocation": {"hostnamePrefix": "{id.real}"}}, "roster.allocation.hostnamePrefix:"),
    ("title-lines", {"title": "a\nb"}, "roster.title: 'a\\nb' is not allowed"),
    ("unknown-key-newline", {"x\ny": 1}, "roster.'x\\ny': unknown key"),
]


@pytest.mark.parametrize("case,changes,message", ROSTER_MISTAKES, ids=[c[0] for c in ROSTER_MISTAKES])
def test_roster_mistakes_are_one_line(case, changes, message):
    doc = roster_doc()
    for key, value in changes.items():
        doc[key] = deep_merge(doc.get(key), value) if isinstance(value, dict) and key != "students" else value
    with pytest.raises(RosterError) as err:
        parse_roster(doc, Path("/nonexistent/c.yaml"))
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems
    assert all("\n" not in p for p in err.value.problems)


ALLOCATION_FILES = [
    ("list", "- 1\n", "c.alloc.yaml: expected a mapping"),
    ("entry-list", "class: ha101\nstudents: {s01: [0, pve1]}\n", "c.alloc.yaml: students.s01: expected {slot"),
    ("entry-str", "class: ha101\nstudents: {s01: zero}\n", "c.alloc.yaml: students.s01: expected {slot"),
    ("slot-bool", "class: ha101\nstudents: {s01: {slot: true, node: pve1}}\n", "students.s01: expected"),
    ("students-list", "class: ha101\nstudents: [s01]\n", "c.alloc.yaml: students: expected a mapping"),
    ("retired-str", "class: ha101\nretired: s01\n", "c.alloc.yaml: retired: expected a list"),
    ("retired-entry", "class: ha101\nretired: [7]\n", "c.alloc.yaml: retired[0]: expected"),
    ("two-on-a-slot", "class: ha101\nstudents: {s01: {slot: 0, node: a}, s02: {slot: 0, node: a}}\n",
     "students.s02.slot: 0 is also the slot of 's01'"),
    ("class-newline", "class: \"ha101\\n\"\n", "c.alloc.yaml: class: 'ha101\\n' is not a class id"),
    ("empty", "", "c.alloc.yaml: the file is empty"),
    ("comments-only", "# nothing\n", "c.alloc.yaml: the file is empty"),
    ("not-utf8", b"class: \xff\n", "c.alloc.yaml: not UTF-8 text"),
]


@pytest.mark.parametrize("case,text,message", ALLOCATION_FILES, ids=[c[0] for c in ALLOCATION_FILES])
def test_bad_allocation_files_are_one_line(case, text, message, tmp_path):
    path = tmp_path / "c.alloc.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RosterError) as err:
        load_allocation(path)
    assert any(message in p for p in err.value.problems), err.value.problems
    assert all("\n" not in p for p in err.value.problems)


CSV_ROSTERS = [
    ("extra-cells", "id,name\ns01,Aiko,Tanaka\n", "roster (c.csv) row 2: 3 cells but the header has 2 columns"),
    ("not-utf8", b"id,name\ns01,\xff\n", "roster (c.csv): not UTF-8 text"),
    ("duplicate-column", "id,name,id\ns01,A,s02\n", "a column appears twice"),
    ("unknown-lab-column", "id,name,lab.nodes.memory\ns01,A,1\n", "unknown column 'lab.nodes.memory'"),
    ("bad-number", "id,name,lab.nodes.memoryMiB\ns01,A,8k\n", "column 'lab.nodes.memoryMiB': '8k' is not a whole number"),
    ("bad-bool", "id,name,lab.ceph.enabled\ns01,A,maybe\n", "column 'lab.ceph.enabled': 'maybe' is not true or false"),
    ("students-in-header", "# students: []\nid,name\ns01,A\n", "'students' comes from the CSV rows"),
    ("nul-byte", "id,name\ns01,A\x00B\n", "roster.students[0].name:"),
]


@pytest.mark.parametrize("case,text,message", CSV_ROSTERS, ids=[c[0] for c in CSV_ROSTERS])
def test_bad_csv_rosters_are_one_line(case, text, message, tmp_path, capsys):
    header = f"# class: ha101\n# lab: {{outer: {{endpoint: '{ENDPOINT}'}}}}\n".encode()
    (tmp_path / "c.csv").write_bytes(header + (text if isinstance(text, bytes) else text.encode()))
    assert main(["classroom", "plan", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_render_into_a_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    shutil.copy(ROOT / "examples" / "classroom.yaml", tmp_path / "c.yaml")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the project folder should be")
    assert main(["classroom", "render", str(tmp_path / "c.yaml"), "--project-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert_one_clean_line(err)
    assert "not-a-folder: not a folder" in err
    assert not (tmp_path / "c.alloc.yaml").exists()  # nothing half-written


def test_an_unwritable_file_is_one_line(tmp_path, capsys):
    shutil.copy(ROOT / "examples" / "classroom.yaml", tmp_path / "c.yaml")
    (tmp_path / "Pulumi.ha101-s01.yaml").mkdir()  # a folder where a stack file goes
    assert main(["classroom", "render", str(tmp_path / "c.yaml"), "--project-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert_one_clean_line(err)
    assert "Pulumi.ha101-s01.yaml" in err


def test_a_roster_path_that_is_a_folder_is_one_line(tmp_path, capsys):
    assert main(["classroom", "plan", str(tmp_path)]) == 2
    assert_one_clean_line(capsys.readouterr().err)


# ---------------------------------------------------------------- kind 5: the ops tools' arguments and TLS


@pytest.fixture
def stack_t(tmp_path, monkeypatch):
    lab = deep_merge(lab_raw(), {"outer": {"insecure": False}})  # the outer host's certificate is checked
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab}}))
    monkeypatch.setattr("pvelab.ops.cli.load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", "a-root-password")
    return tmp_path


OPS_ARGS = [
    ("empty-outer-url", ["preflight", "-s", "t", "--outer-url", ""], "--outer-url: empty"),
    ("http-outer-url", ["preflight", "-s", "t", "--outer-url", "http://127.0.0.1:8006/"], "uses plain http://"),
    ("bad-port", ["preflight", "-s", "t", "--outer-url", "https://127.0.0.1:99999/"], "is not a URL (Port out of range"),
    ("word-port", ["preflight", "-s", "t", "--outer-url", "https://127.0.0.1:abc/"], "is not a URL"),
    ("no-host", ["preflight", "-s", "t", "--outer-url", "https:///"], "is not an API base URL"),
    ("path", ["preflight", "-s", "t", "--outer-url", "https://h:8006/api2/json"], "is not an API base URL"),
    ("newline-url", ["preflight", "-s", "t", "--outer-url", "https://h:8006/\n"], "control characters"),
    ("user-in-url", ["preflight", "-s", "t", "--outer-url", "https://root:pw@h:8006/"], "must not hold a user or password"),
    ("missing-ca", ["preflight", "-s", "t", "--outer-ca", "/nonexistent/ca.pem"], "CA file unreadable: /nonexistent/ca.pem"),
    ("ca-not-pem", ["preflight", "-s", "t", "--outer-ca", "/etc/hostname"], "CA file unreadable: /etc/hostname holds no PEM"),
    ("ca-folder", ["status", "-s", "t", "--nested-ca", "/tmp"], "CA file unreadable: /tmp"),
    ("inf-poll", ["drill", "ha", "-s", "t", "--poll", "inf"], "'inf' is not a number of seconds"),
    ("nan-timeout", ["drill", "ha", "-s", "t", "--recovery-timeout", "nan"], "'nan' is not a number of seconds"),
    ("huge-timeout", ["status", "-s", "t", "--request-timeout", "1e300"], "is not a number of seconds"),
    ("zero-retries", ["status", "-s", "t", "--retries", "0"], "'0' is not a whole number from 1 to 100"),
    ("unicode-digit-retries", ["status", "-s", "t", "--retries", "３"], "is not a whole number"),
    ("nested-label", ["status", "-s", "t", "--nested-url", "pve 1=https://h:8006/"], "'pve 1' is not a node name"),
    ("nested-empty", ["status", "-s", "t", "--nested-url", ""], "--nested-url: empty"),
    ("plan-host-inf", ["plan", "--host-cores", "inf"], "expected a positive whole number"),
    ("plan-host-huge", ["plan", "--host-memory-gib", "1e30"], "expected a positive number up to 1000000"),
    ("plan-stack-newline", ["plan", "-s", "lab\n"], "is not a stack name"),
]


@pytest.mark.parametrize("case,argv,message", OPS_ARGS, ids=[c[0] for c in OPS_ARGS])
def test_ops_arguments_are_refused_in_one_line(case, argv, message, stack_t, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert TOKEN_SECRET not in err


def test_a_stack_name_with_a_newline_is_refused(tmp_path):
    with pytest.raises(SpecError, match="not a stack name"):
        load_stack("lab\n", tmp_path)


class _Html(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming; a login answered with a web page
        self.do_GET()

    def do_GET(self):  # noqa: N802
        body = b"<html><body>Welcome to nginx</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serve HTML on 127.0.0.1: plain (tls=False) or over TLS with a throw-away certificate."""
    servers = []

    def start(tls: bool):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Html)
        if tls:
            from ops_fixtures import make_cert

            cert, key = make_cert(tmp_path)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
            server.cert = cert
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_tls_to_a_plain_http_port_says_not_https(stack_t, http_server, capsys):
    server = http_server(tls=False)
    assert main(["preflight", "-s", "t", "--outer-url", f"https://127.0.0.1:{server.server_port}", "--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert "not HTTPS" in out and "token" not in out.split("not HTTPS")[1].split("\n")[0].lower()


def test_an_untrusted_certificate_says_so(stack_t, http_server, capsys):
    server = http_server(tls=True)
    assert main(["preflight", "-s", "t", "--outer-url", f"https://127.0.0.1:{server.server_port}", "--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert "certificate not trusted" in out and TOKEN_SECRET not in out
    assert "PVE_LAB_OUTER_API_TOKEN" not in out  # a TLS problem is not blamed on the token


def test_a_200_html_answer_is_one_clear_failure(stack_t, http_server, capsys):
    server = http_server(tls=True)
    code = main(["preflight", "-s", "t", "--outer-url", f"https://127.0.0.1:{server.server_port}",
                 "--outer-ca", server.cert, "--retries", "1"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "not the PVE API" in captured.out and TOKEN_SECRET not in captured.out + captured.err


@pytest.mark.parametrize("html_login", [True, False])
def test_a_nested_login_to_a_web_server_is_not_blamed_on_the_password(stack_t, http_server, monkeypatch, capsys,
                                                                     html_login):
    server = http_server(tls=True)
    if not html_login:  # the server refuses POST (HTTP 501) instead of answering a page
        monkeypatch.delattr(_Html, "do_POST")
    code = main(["status", "-s", "t", "--nested-url", f"https://127.0.0.1:{server.server_port}",
                 "--nested-ca", server.cert, "--retries", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "wrong credentials" not in out and "a-root-password" not in out
    assert ("not JSON" if html_login else "answered HTTP 501, not like a PVE API") in out


# ---------------------------------------------------------------- kind 6: CSV cells are text


def test_csv_cells_are_text_unless_the_lab_key_is_numeric(tmp_path):
    header = f"# class: ha101\n# lab: {{outer: {{endpoint: '{ENDPOINT}'}}}}\n"
    rows = ("id,name,lab.nodes.memoryMiB,lab.ceph.enabled,lab.ha.enabled,lab.cluster.domain\n"
            "007,No,8192,true,false,0123.example\n0123,On,,,,\n1e3,null,,,,\n")
    (tmp_path / "c.csv").write_text(header + rows)
    roster = load_roster(tmp_path / "c.csv")
    assert [(s.id, s.name) for s in roster.students] == [("007", "No"), ("0123", "On"), ("1e3", "null")]
    assert roster.students[0].lab == {"nodes": {"memoryMiB": 8192}, "ceph": {"enabled": True},
                                      "ha": {"enabled": False}, "cluster": {"domain": "0123.example"}}
    assert roster.students[1].lab == {}


# ---------------------------------------------------------------- kind 7: accepted silently before, refused now

SILENT = [
    ("node-name", {"outer": {"node": "pve_1"}}, "pve-lab:lab.outer.node: 'pve_1' is not allowed"),
    ("node-dash", {"outer": {"node": "-pve"}}, "pve-lab:lab.outer.node: '-pve' is not allowed"),
    ("bridge", {"outer": {"bridge": "vmbr0;reboot"}}, "pve-lab:lab.outer.bridge: 'vmbr0;reboot' is not allowed"),
    ("bridge-long", {"outer": {"bridge": "vmbr0123456789012"}}, "pve-lab:lab.outer.bridge:"),
    ("storage", {"outer": {"storage": "local lvm"}}, "pve-lab:lab.outer.storage: 'local lvm' is not allowed"),
    ("storage-one-char", {"outer": {"imageStorage": "l"}}, "pve-lab:lab.outer.imageStorage: 'l' is not allowed"),
    ("outer-pool", {"outer": {"pool": "a/b/c/d"}}, "pve-lab:lab.outer.pool: 'a/b/c/d' is not allowed"),
    ("zone", {"student": {"network": {"mode": "sdn", "zone": "zone_1", "vnet": "lab0", "vnetTag": 5}}},
     "pve-lab:lab.student.network.zone: 'zone_1' is not allowed"),
    ("vnet-too-long", {"student": {"network": {"mode": "sdn", "zone": "z1", "vnet": "labnet123", "vnetTag": 5}}},
     "pve-lab:lab.student.network.vnet: 'labnet123' is not allowed"),
    ("http-endpoint", {"outer": {"endpoint": "http://pve.example:8006/"}}, "uses plain http://"),
    ("http-image", {"image": {"url": "http://cloud.debian.org/images/x-13.qcow2"}}, "pve-lab:lab.image.url: 'http://"),
    ("http-keyring", {"repository": {"keyringUrl": "http://x/k.gpg"}}, "pve-lab:lab.repository.keyringUrl: 'http://x/k.gpg' uses plain http://"),
    ("endpoint-port", {"outer": {"endpoint": "https://pve:0/"}}, "pve-lab:lab.outer.endpoint: 'https://pve:0/' has port 0"),
    ("endpoint-port-high", {"outer": {"endpoint": "https://pve:70000/"}}, "is not a URL (Port out of range"),
    ("memory-absurd", {"nodes": {"memoryMiB": 10 ** 20}}, "pve-lab:lab.nodes.memoryMiB: 100000000000000000000 is out of range (allowed: 1024..4194304)"),
    ("pgs-absurd", {"ceph": {"pool": {"pgNum": 2 ** 40}}}, "pve-lab:lab.ceph.pool.pgNum: 1099511627776 is out of range (allowed: 1..32768)"),
    ("osd-target-absurd", {"ceph": {"osdMemoryTargetMiB": 10 ** 12}}, "pve-lab:lab.ceph.osdMemoryTargetMiB: 1000000000000 is out of range"),
    ("disk-absurd", {"nodes": {"cephDiskGiB": 10 ** 9}}, "pve-lab:lab.nodes.cephDiskGiB: 1000000000 is out of range"),
    ("gateway-network", {"network": {"gateway": "10.10.10.0"}}, "pve-lab:lab.network.gateway: 10.10.10.0 is the network address"),
    ("gateway-broadcast", {"network": {"gateway": "10.10.10.255"}}, "pve-lab:lab.network.gateway: 10.10.10.255 is the broadcast address"),
    ("label-long", {"cluster": {"hostnamePrefix": "p" * 40, "domain": "a" * 64 + ".internal"}},
     "pve-lab:lab.cluster.domain: the label 'aaaa"),
    ("fqdn-long", {"cluster": {"domain": ".".join(["a" * 62] * 4)}}, "pve-lab:lab.cluster.domain: the node FQDN"),
    ("checksum-length", {"image": {"checksum": "ab" * 10}}, "pve-lab:lab.image.checksum: must be 128 lower-case hex digits"),
    ("checksum-algorithm", {"image": {"checksumAlgorithm": "crc32"}}, "pve-lab:lab.image.checksumAlgorithm: 'crc32' is not allowed"),
    ("ssh-user", {"outer": {"sshUser": "root;id"}}, "pve-lab:lab.outer.sshUser: 'root;id' is not allowed"),
    ("tag", {"tags": ["ok", "no spaces"]}, "pve-lab:lab.tags[1]: 'no spaces' is not allowed"),
    ("dns-v6", {"network": {"dns": ["::1"]}}, "pve-lab:lab.network.dns[0]: '::1' is not an IPv4 address"),
    ("string-int-newline", {"nodes": {"cores": "4\n"}}, "pve-lab:lab.nodes.cores: expected an integer, got '4\\n'"),
    # issue 10 item 9: what PVE refuses, refused here first
    ("pool-one-char", {"ceph": {"pool": {"name": "p"}}}, "pve-lab:lab.ceph.pool.name: 'p' is not allowed: 2-64 characters"),
    ("pool-trailing-dash", {"ceph": {"pool": {"name": "pool-"}}}, "pve-lab:lab.ceph.pool.name: 'pool-' is not allowed"),
    ("pool-digit-first", {"ceph": {"pool": {"name": "1pool"}}}, "pve-lab:lab.ceph.pool.name: '1pool' is not allowed"),
    ("ceph-net-misses-nodes", {"ceph": {"network": "10.10.10.16/28"}}, "pve-lab:lab.ceph.network: 10.10.10.16/28 must contain every node address"),
    ("ceph-net-has-link1", {"network": {"link1": {"cidr": "10.10.11.0/24", "firstAddress": "10.10.11.11"}},
                            "ceph": {"network": "10.10.10.0/23"}}, "also contains link1 addresses"),
    ("image-img", {"image": {"fileName": "debian.img"}}, "pve-lab:lab.image.fileName: 'debian.img' is not allowed"),
    ("image-ova", {"image": {"fileName": "debian.ova"}}, "ending in .qcow2, .raw or .vmdk"),
    ("file-id-img", {"image": {"fileId": "local:import/debian.img"}}, "pve-lab:lab.image.fileId: 'local:import/debian.img' is not a volume id"),
    ("cluster-dash", {"cluster": {"name": "lab-"}}, "pve-lab:lab.cluster.name: 'lab-' is not allowed"),
]


@pytest.mark.parametrize("case,overrides,message", SILENT, ids=[c[0] for c in SILENT])
def test_what_pve_refuses_is_refused_first(case, overrides, message):
    base = FULL_LAB if "student" in overrides else lab_raw()
    problems = spec_problems(deep_merge(base, overrides))
    assert any(message in p for p in problems), problems
    assert all("\n" not in p and len(p) < 400 for p in problems)


@pytest.mark.parametrize("file_name", ["debian-13.qcow2", "x.raw", "disk+1=a_b.vmdk"])
def test_importable_image_names_pass(file_name):
    parse_spec(deep_merge(lab_raw(), {"image": {"fileName": file_name}}))


def test_ceph_public_network_covering_every_node_passes():
    parse_spec(deep_merge(lab_raw(), {"ceph": {"network": "10.10.10.0/27"}}))


def test_a_plaintext_secret_in_a_stack_file_is_warned_about_without_its_value(tmp_path, capsys):
    (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump({"config": {
        "pve-lab:lab": lab_raw(), "pve-lab:rootPassword": "plain-text-password", "pve-lab:sshPrivateKey": "K"}}))
    config = load_stack("t", tmp_path)
    err = capsys.readouterr().err
    assert len(config.warnings) == 2 and "plain-text-password" not in err
    assert "warning: Pulumi.t.yaml: pve-lab:rootPassword is stored as plain text; set it with `pulumi config set " \
           "--secret -s t pve-lab:rootPassword ...`" in err


def test_the_program_warns_about_a_plaintext_secret():
    from harness import evaluate_lab

    ev = evaluate_lab(plain={"pve-lab:rootPassword": "plain-text-password"})
    assert ev.error is None
    warnings = [m for m in ev.logs if "rootPassword is stored as plain text" in str(m)]
    assert warnings and all("plain-text-password" not in str(m) for m in ev.logs)


STUDENT_IGNORED = [
    ({"cluster": {"name": "mine"}}, "roster.students[0].lab.cluster.name: set by the allocation for every student"),
    ({"cluster": {"hostnamePrefix": "me"}}, "roster.students[0].lab.cluster.hostnamePrefix: set by the allocation"),
    ({"network": {"dns": ["1.1.1.1"]}}, "roster.students[0].lab.network: set by the allocation"),
    ({"outer": {"node": "pve2"}}, "roster.students[0].lab.outer: set by the allocation (pin a node with `node:`)"),
]


@pytest.mark.parametrize("lab,message", STUDENT_IGNORED)
def test_a_student_override_that_would_be_ignored_is_refused(lab, message):
    doc = roster_doc()
    doc["students"][0]["lab"] = lab
    with pytest.raises(RosterError) as err:
        allocate(parse_roster(doc, Path("/nonexistent/c.yaml")))
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def test_class_defaults_that_would_be_ignored_are_refused():
    doc = roster_doc(outerNodes=[{"name": "pve1"}])
    doc["lab"]["outer"]["node"] = "pve9"
    doc["allocation"]["network"]["bridge"] = "vmbr1"
    doc["lab"]["outer"]["bridge"] = "vmbr0"
    with pytest.raises(RosterError) as err:
        allocate(parse_roster(doc, Path("/nonexistent/c.yaml")))
    assert any(p.startswith("roster.lab.outer.node: ignored when roster.outerNodes is given") for p in err.value.problems)
    assert any(p.startswith("roster.lab.outer.bridge: 'vmbr0' would be replaced") for p in err.value.problems)


# ---------------------------------------------------------------- kind 8: node scripts check their own input


def common_sh(call: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{COMMON_SH}"; {call}'], env={
        "PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30)


SCRIPT_INPUTS = [
    ("require_ipv4 NODE_IP", {"NODE_IP": "999.999.999.999"}, "NODE_IP='999.999.999.999' is not an IPv4 address"),
    ("require_ipv4 NODE_IP", {"NODE_IP": "10.0.0.256"}, "octet 256 is over 255"),
    ("require_ipv4 NODE_IP", {"NODE_IP": "10.0.0.01"}, "is not an IPv4 address"),
    ("require_ipv4 NODE_IP", {"NODE_IP": "10.0.0.1\n"}, "NODE_IP=$'10.0.0.1\\n' is not an IPv4 address"),
    ("require_ipv4 NODE_IP", {"NODE_IP": "1.2.3"}, "is not an IPv4 address"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "pve1.lab\n10.0.0.9 evil"}, "must be a single line"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "pve1"}, "is not a fully qualified name"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "pve1.lab."}, "is not a fully qualified name"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "pve1.-lab.internal"}, "has the label '-lab'"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "pve1." + "a" * 64 + ".x"}, "DNS labels are 1-63"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": ".".join(["a" * 63] * 4) + ".b"}, "longer than 253"),
    ("require_fqdn NODE_FQDN", {"NODE_FQDN": "PVE1.lab.internal"}, "has the label 'PVE1'"),
    ("require_single_line PVE_REPO_COMPONENT", {"PVE_REPO_COMPONENT": "pve-no-subscription\nSigned-By: /tmp/k"},
     "PVE_REPO_COMPONENT=$'pve-no-subscription\\nSigned-By: /tmp/k' must be a single line"),
    ("require_single_line X", {"X": "a\tb"}, "must be a single line without control characters"),
]


@pytest.mark.parametrize("call,env,message", SCRIPT_INPUTS, ids=[f"{c[0].split()[0]}-{i}" for i, c in enumerate(SCRIPT_INPUTS)])
def test_script_helpers_refuse(call, env, message):
    result = common_sh(call, **env)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("call,env", [("require_ipv4 A B", {"A": "0.0.0.0", "B": "255.255.255.255"}),
                                      ("require_fqdn F", {"F": "pve1.lab.internal"}),
                                      ("require_single_line S", {"S": "a b c"})])
def test_script_helpers_accept(call, env):
    assert common_sh(call, **env).returncode == 0


@pytest.mark.parametrize("env,message", [
    ({"NODE_FQDN": "pve1.lab.internal\n10.6.6.6 evil"}, "NODE_FQDN=$'pve1.lab.internal\\n10.6.6.6 evil' must be a single line"),
    ({"PVE_REPO_COMPONENT": "pve-no-subscription\nSigned-By: /tmp/x"}, "must be a single line"),
    ({"PVE_REPO_COMPONENT": "main"}, "PVE_REPO_COMPONENT='main' (allowed: pve-no-subscription"),
    ({"KEYRING_URL": "http://x/k.gpg"}, "KEYRING_URL='http://x/k.gpg' must be an https:// URL"),
    ({"NODE_IP": "999.999.999.999"}, "is not an IPv4 address"),
])
def test_install_script_refuses_bad_environment_before_touching_anything(env, message, tmp_path):
    base = {"NODE_HOSTNAME": "pve1", "NODE_FQDN": "pve1.lab.internal", "NODE_IP": "10.10.10.11",
            "PVE_LAB_ROOT": str(tmp_path), "PATH": os.environ["PATH"]}
    script = ROOT / "components" / "scripts" / "install-pve.sh"
    result = subprocess.run(["bash", str(script), "prepare"], env={**base, **env}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())  # nothing written into the node's file tree


# ---------------------------------------------------------------- kind 9: no silent fallback on an empty override


def test_empty_outer_url_is_refused_not_replaced(stack_t, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["preflight", "-s", "t", "--outer-url", ""])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--outer-url: empty" in err and "pve.example.internal" not in err


def test_outer_client_refuses_an_empty_url():
    from pvelab.ops.api import ApiError
    from pvelab.ops.connect import outer_client

    with pytest.raises(ApiError, match="the URL override is empty"):
        outer_client(parse_spec(lab_raw()), "", token=TOKEN)


def test_show_keeps_messages_on_one_line():
    assert show("a\nb") == "'a\\nb'" and len(show("x" * 500)) == 60


@pytest.mark.parametrize("secrets", [{"pve-lab:outerApiToken": TOKEN + "\n"},
                                     {"pve-lab:rootPassword": "a-long-password\n"},
                                     {"pve-lab:sshPublicKey": "ssh-ed25519 AAAA\nssh-ed25519 BBBB"}])
def test_the_program_refuses_malformed_secrets_without_showing_them(secrets):
    from harness import evaluate_lab

    if "pve-lab:sshPublicKey" in secrets:
        secrets = {**secrets, "pve-lab:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n"
                                                       "-----END OPENSSH PRIVATE KEY-----"}
    ev = evaluate_lab(secrets=secrets)
    assert ev.error is not None and "value hidden" in ev.error and "Traceback" not in ev.error
    assert not [r for r in ev.records if r.custom]
    for value in secrets.values():
        assert value.strip() not in ev.error

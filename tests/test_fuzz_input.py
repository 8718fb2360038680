"""Generated bad input (a seeded generator, so every run checks the same cases): config and roster.

For every generated value the tools refuse, the answer is exit 2, one line per problem naming the key,
no traceback, no secret. Values the validators accept are counted and skipped (the generator does not know
every rule). The seed and the case counts are fixed: a failure names the case to replay.
"""
from __future__ import annotations

import copy
import csv
import io
import random
import shutil
from pathlib import Path

import pytest
import yaml
from harness import lab_raw

from pvelab.classroom.allocate import allocate
from pvelab.classroom.roster import RosterError, load_roster
from pvelab.cli import main
from pvelab.spec import FIELD_RULES, SpecError, parse_spec
from pvelab.stackfile import load_stack

SEED = 14
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "classroom.yaml"
TOKEN = "root@pam!pvelab=0123abcd-4567-89ab-cdef-0123456789ab"
ROOT_PASSWORD = "fuzz-root-password-91"
SECRETS = (TOKEN.split("=", 1)[1], ROOT_PASSWORD)

NASTY = ["", " ", "\n", "x\n", "\nx", "a\x00b", "\t", "A" * 300, -1, 0, 1, 2 ** 63, 10 ** 20, -(2 ** 40), 1.5,
         float("nan"), float("inf"), True, False, None, [], {}, [1, 2], ["a", None], {"a": 1}, "https://x",
         "http://pve:8006/", "https://pve:99999/", "../../etc/passwd", "é", "🙂", "$(reboot)", "a;b", "007",
         "pve_1", "2026-01-31", "10.0.0.0/33", "999.1.1.1", "::1", "-", "a-", "Administrator", "{id.x}", "{0}",
         "%s%s", "ssh-ed25519 AAAA", "yes", "no", "~", "null", "1e309", "0x10", "-0", "０１"]
EXTRA_CONFIG_KEYS = ["network.cidr", "network.gateway", "network.firstAddress", "network.dns", "vmidBase",
                     "ha.preferredNode", "ha.testVmidBase", "ceph.release", "ceph.network", "ceph.enabled",
                     "ha.enabled", "nodes.acknowledgeEvenCount", "outer.insecure", "tags", "network.link1",
                     "image.checksum", "student", "nodes", "outer", "unknownKey", "nodes.unknown"]
CONFIG_KEYS = [k.replace("[]", "") for k in FIELD_RULES if not k.startswith("student.")] + EXTRA_CONFIG_KEYS
ROSTER_KEYS = ["class", "title", "lab", "allocation", "allocation.vmidBase", "allocation.vmidBlock",
               "allocation.supernet", "allocation.subnetPrefix", "allocation.firstHost", "allocation.network",
               "allocation.network.mode", "allocation.network.tagBase", "allocation.network.bridge",
               "allocation.network.zone", "allocation.network.vnetPrefix", "allocation.userRealm", "allocation.role",
               "allocation.hostnamePrefix", "allocation.clusterName", "allocation.reuseRetiredSlots", "limits",
               "limits.maxNodes", "limits.maxCores", "limits.maxMemoryGiB", "limits.maxDiskGiB", "limits.allowedNodes",
               "limits.allowedStorages", "outerNodes", "outerNodes.0", "outerNodes.0.name", "outerNodes.0.cores",
               "outerNodes.0.memoryGiB", "outerNodes.0.storage", "outerNodes.0.imageStorage", "students",
               "students.0", "students.0.id", "students.0.name", "students.0.node", "students.0.user",
               "students.0.lab", "students.1.lab.nodes.memoryMiB", "students.2.lab.cluster.domain", "lab.nodes.count",
               "lab.outer.endpoint", "lab.network.dns", "lab.ceph.pool.name", "unknown"]


def put(doc, dotted: str, value):
    """Set `dotted` (dict keys and list indexes) in a copy of doc; creates mappings on the way."""
    doc = copy.deepcopy(doc)
    target = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(target, list):
            target = target[int(part)]
        else:
            if not isinstance(target.get(part), (dict, list)):
                target[part] = {}
            target = target[part]
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


def mutate_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.3:
            del chars[i]
        elif op < 0.6:
            chars.insert(i, rng.choice(["&a ", "*a", "!!binary ", ":", "-", "\t", "\x00", "{", "[", "'", '"', "\n",
                                        "  ", "#", "? ", "<<: ", "é", "\ufeff", "%YAML 1.1\n"]))
        else:
            chars[i] = rng.choice("{}[]:,-'\"&*!|>%@`#\n ")
    return "".join(chars)


def check_cli_output(err: str, secrets=SECRETS) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "a refusal must say why"
    for line in lines:
        assert line.startswith(("pve-lab:", "- ", "roster", "Pulumi.", "classroom.")) or "problem(s)" in line, line
        assert len(line) < 600, line
    for secret in secrets:
        assert secret not in err


# ---------------------------------------------------------------- the lab config (stack files)

CONFIG_CASES = 250


def test_generated_bad_configs_exit_2_with_one_line_each(tmp_path, monkeypatch, capsys):
    rng = random.Random(SEED)
    monkeypatch.setattr("pvelab.ops.cli.load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    base = lab_raw()
    refused = accepted = 0
    for case in range(CONFIG_CASES):
        key = rng.choice(CONFIG_KEYS)
        value = rng.choice(NASTY)
        raw = put(base, key, value)
        if rng.random() < 0.2:  # sometimes two mistakes at once
            raw = put(raw, rng.choice(CONFIG_KEYS), rng.choice(NASTY))
        try:
            parse_spec(raw)
            accepted += 1
            continue
        except SpecError:
            pass
        stack = {"config": {"pve-lab:lab": raw, "pve-lab:rootPassword": {"secure": "v1:abc"}}}
        (tmp_path / "Pulumi.t.yaml").write_text(yaml.safe_dump(stack, allow_unicode=True))
        code = main(["preflight", "-s", "t", "--outer-url", "https://127.0.0.1:9/"])
        err = capsys.readouterr().err
        assert code == 2, f"case {case}: {key}={value!r}: exit {code}\n{err}"
        check_cli_output(err)
        refused += 1
    print(f"config cases: {refused} refused, {accepted} accepted")
    assert refused + accepted == CONFIG_CASES and refused > CONFIG_CASES * 0.7, (refused, accepted)


# ---------------------------------------------------------------- rosters (YAML documents, YAML text, CSV)

ROSTER_CASES = 160


@pytest.fixture
def classdir(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "classroom.yaml")
    return tmp_path


def test_generated_bad_rosters_exit_2_with_one_line_each(classdir, capsys):
    rng = random.Random(SEED + 1)
    base = yaml.safe_load(EXAMPLE.read_text())
    path = classdir / "classroom.yaml"
    refused = accepted = 0
    for case in range(ROSTER_CASES):
        key = rng.choice(ROSTER_KEYS)
        doc = put(base, key, rng.choice(NASTY))
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        try:
            allocate(load_roster(path))
            accepted += 1
            continue
        except RosterError:
            pass
        code = main(["classroom", "render", str(path), "--project-dir", str(classdir)])
        err = capsys.readouterr().err
        assert code == 2, f"case {case}: {key}: exit {code}\n{err}"
        check_cli_output(err)
        assert not list(classdir.glob("Pulumi.*.yaml")) and not (classdir / "classroom.alloc.yaml").exists()
        refused += 1
    print(f"roster cases: {refused} refused, {accepted} accepted")
    assert refused + accepted == ROSTER_CASES and refused > ROSTER_CASES * 0.6, (refused, accepted)


TEXT_CASES = 150


def test_mangled_roster_and_stack_texts_never_crash(classdir, tmp_path, monkeypatch, capsys):
    """Random edits of the real files' text: each one loads, or is refused with exit 2 in clean lines."""
    rng = random.Random(SEED + 2)
    roster_text = EXAMPLE.read_text()
    stack_text = (ROOT / "Pulumi.lab.yaml").read_text()
    monkeypatch.setattr("pvelab.ops.cli.load_stack", lambda name: load_stack(name, tmp_path))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    outcomes = {"roster refused": 0, "roster loaded": 0, "stack refused": 0, "stack loaded": 0}
    for case in range(TEXT_CASES):
        (classdir / "classroom.yaml").write_text(mutate_text(rng, roster_text))
        try:
            allocate(load_roster(classdir / "classroom.yaml"))
            outcomes["roster loaded"] += 1
        except RosterError:
            code = main(["classroom", "render", str(classdir / "classroom.yaml"), "--project-dir", str(classdir)])
            assert code == 2, f"case {case}"
            check_cli_output(capsys.readouterr().err)
            outcomes["roster refused"] += 1
        (tmp_path / "Pulumi.t.yaml").write_text(mutate_text(rng, stack_text))
        try:
            load_stack("t", tmp_path).spec()
            outcomes["stack loaded"] += 1
        except SpecError:
            assert main(["preflight", "-s", "t", "--outer-url", "https://127.0.0.1:9/"]) == 2, f"case {case}"
            check_cli_output(capsys.readouterr().err)
            outcomes["stack refused"] += 1
    print(f"text cases: {outcomes}")
    assert outcomes["roster refused"] > 0 and outcomes["stack refused"] > 0, outcomes


CSV_CASES = 150
CELLS = ["", "s01", "007", "0123", "No", "On", "null", "~", "1e3", "a,b", 'a"b', "x\ny", "\x00", " ", "=1+1",
         "pve1", "aiko@ldap", "aiko@", "8192", "-1", "99999999999999999999", "true", "maybe", "ä", "🙂", "A" * 250]
COLUMNS = ["id", "name", "node", "user", "lab.nodes.memoryMiB", "lab.ceph.enabled", "lab.cluster.domain",
           "lab.nodes.count", "lab.ha.testVms"]


def test_generated_csv_rosters_load_or_are_refused_cleanly(classdir, capsys):
    rng = random.Random(SEED + 3)
    header = ("# class: ha102\n# lab: {outer: {endpoint: 'https://pve.example.internal:8006/'}}\n"
              "# outerNodes: [{name: pve1, memoryGiB: 500}]\n")
    path = classdir / "c.csv"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CSV_CASES):
        columns = ["id", "name"] + rng.sample(COLUMNS[2:], rng.randint(0, 3))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for i in range(rng.randint(1, 4)):
            row = [f"s{i:02d}", f"Student {i}"] + ["" for _ in columns[2:]]
            j = rng.randrange(len(row))
            row[j] = rng.choice(CELLS)
            if rng.random() < 0.15:
                row.append(rng.choice(CELLS))  # one cell too many
            writer.writerow(row)
        path.write_text(header + out.getvalue())
        try:
            roster = load_roster(path)
            assert all(isinstance(s.id, str) and isinstance(s.name, str) for s in roster.students)
            outcomes["loaded"] += 1
            continue
        except RosterError:
            pass
        assert main(["classroom", "plan", str(path)]) == 2, f"case {case}"
        check_cli_output(capsys.readouterr().err)
        outcomes["refused"] += 1
    print(f"csv cases: {outcomes}")
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0, outcomes


def test_the_pure_python_loader_refuses_the_same(monkeypatch):
    """Without libyaml the fallback loader applies the same rules (anchors, tags, duplicates, depth)."""
    from test_bad_input import YAML_REFUSED

    from pvelab import safeyaml

    monkeypatch.setattr(safeyaml, "_CLoader", None)
    for case, text, message in YAML_REFUSED:
        with pytest.raises(safeyaml.YamlInputError) as err:
            safeyaml.load_yaml(text, "f.yaml")
        assert message in err.value.render(), case
    assert safeyaml.load_yaml("d: 2026-01-31\n", "f") == {"d": "2026-01-31"}

"""The published JSON Schema (schema/pulumi-stack.schema.json) is what the spec builds, and agrees with the
validator about every field: for values of the field's own type both say the same; for other types (an
integer written as text, which pvelab also reads) the schema is stricter. An editor never calls good what
`pulumi up` refuses."""
from __future__ import annotations

import json
import random
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from harness import lab_raw

from pvelab.schema import SCHEMA_FILE, lab_schema, schema_text, stack_schema
from pvelab.spec import FIELD_RULES, LabSpec, _camel, _convert

ROOT = Path(__file__).resolve().parent.parent
VALIDATOR = jsonschema.Draft202012Validator(stack_schema())
LAB_VALIDATOR = jsonschema.Draft202012Validator(lab_schema())
SAMPLES = ["", "a", "ab", "pve1", "pve-1", "pve_1", "-pve", "pve-", "vmbr0", "vmbr0\n", "\nvmbr0", "é", "vmbré",
           "local-lvm", "local lvm", "a" * 70, "lab.internal", "lab.internal\n", "LAB.internal", "s01@pve",
           "s01@pve\n", "a:b@pve", "Administrator", "Administrator\n", "https://pve:8006/", "https://pve:8006/\n",
           "http://pve:8006/", "https://pve:8006/api2", "https://x/y.qcow2", "x.qcow2", "x.img", "x.vmdk\n",
           "local:import/x.raw", "local:import/x.img", "1" * 64, "A" * 64, "sha512", "seabios", "ovmf", "link1",
           "no-subscription", "pve-no-subscription", "lab0", "lab012345", "zone1", "zone_1", "tag+1", "Tag.2",
           "root", "Root", "_x", "3", "-3", "3\n", " 3", "99999999999999999999", 0, 1, 3, 9, 8, 100, 4094, 4095,
           -1, 2 ** 40, 10 ** 20, True, False, None, 1.5, float("nan"), [], {}, ["a"], "true", "false", "vlan", "sdn"]


def field_type(path: str):
    tp = LabSpec
    for part in path.replace("[]", "").split("."):
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        hints = typing.get_type_hints(tp)
        name = next(n for n in hints if _camel(n) == part)
        tp = hints[name]
    if path.endswith("[]"):
        return str
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def field_schema(path: str) -> dict:
    node = lab_schema()
    for part in path.replace("[]", "").split("."):
        if "anyOf" in node:
            node = next(n for n in node["anyOf"] if n.get("type") == "object")
        node = node["properties"][part]
    if path.endswith("[]"):
        node = node["anyOf"][0]["items"]
    elif "anyOf" in node and any(n.get("type") == "null" for n in node["anyOf"]):
        node = next(n for n in node["anyOf"] if n.get("type") != "null")
    return node


def validator_accepts(path: str, value) -> bool:
    problems: list[str] = []
    ok, converted = _convert(field_type(path), value, path, problems)
    return ok and FIELD_RULES[path].problem(converted) is None


def test_the_published_file_is_what_the_spec_builds():
    assert SCHEMA_FILE.read_text() == schema_text(), "run: python -m pvelab.schema > schema/pulumi-stack.schema.json"
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("path", sorted(FIELD_RULES))
def test_schema_and_validator_agree_on_every_field(path):
    schema = jsonschema.Draft202012Validator(field_schema(path))
    rng = random.Random(path)
    values = SAMPLES + [rng.choice(SAMPLES[:40]) + rng.choice(["", "\n", "-", "1", " "]) for _ in range(20)]
    own_type = {int: int, str: str, bool: bool}[field_type(path)]
    looser, disagreements, compared = [], [], 0
    for value in values:
        if isinstance(value, float) and value != value:
            continue  # NaN: JSON has none
        in_schema, in_validator = schema.is_valid(value), validator_accepts(path, value)
        if in_schema and not in_validator:
            looser.append(value)
        if type(value) is own_type:
            compared += 1
            if in_schema != in_validator:
                disagreements.append(value)
    assert not looser, f"{path}: the schema accepts what the validator refuses: {looser!r}"
    assert not disagreements, f"{path}: schema and validator disagree on {disagreements!r}"
    assert compared >= 5


def test_the_default_stack_and_the_examples_pass_the_schema():
    assert not list(VALIDATOR.iter_errors(yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())))


def test_unknown_keys_and_wrong_types_fail_the_schema():
    raw = lab_raw()
    raw["nodes"]["memory"] = 8192
    raw["outer"]["node"] = "pve_1"
    errors = sorted(e.json_path for e in LAB_VALIDATOR.iter_errors(raw))
    assert errors == ["$.nodes", "$.outer.node"]

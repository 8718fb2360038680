"""Shared test harness for the Pulumi program: evaluate the real `__main__.py` under the mock runtime.

`evaluate_lab(overrides)` deep-merges `overrides` into the `pve-lab:lab` object of the real
`Pulumi.lab.yaml` and returns the recorded Evaluation (see pvelab/evaluate.py): every resource with its
parent, dependencies, provider, options and inputs.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Optional

from pvelab.evaluate import (MOCK_PRIVATE_KEY, MOCK_ROOT_PASSWORD, PLACEHOLDER_SECRETS, Evaluation, Record,
                             evaluate_config, plaintext_strings, unwrap)
from pvelab.stackfile import load_stack

LAB_KEY = "pve-lab:lab"
API_TOKEN = PLACEHOLDER_SECRETS["pve-lab:outerApiToken"]
SECRET_VALUES = (MOCK_ROOT_PASSWORD, MOCK_PRIVATE_KEY.strip().splitlines()[1], API_TOKEN.split("=", 1)[1])

VM = "proxmoxve:index/vmLegacy:VmLegacy"
COMMAND = "command:remote:Command"
PROVIDER = "pulumi:providers:proxmoxve"


def deep_merge(base: Any, overrides: Any) -> Any:
    if isinstance(base, dict) and isinstance(overrides, dict):
        out = dict(base)
        for k, v in overrides.items():
            out[k] = deep_merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(overrides)


def lab_raw() -> dict:
    return copy.deepcopy(load_stack("lab").lab_raw)


def evaluate_lab(overrides: Optional[dict] = None, *, replace: Optional[dict] = None,
                 secrets: Optional[dict] = None, plain: Optional[dict] = None, stack: str = "lab") -> Evaluation:
    """Evaluate the default lab with `overrides` merged in (or `replace` as the whole lab object)."""
    raw = replace if replace is not None else deep_merge(lab_raw(), overrides or {})
    config = {LAB_KEY: json.dumps(raw), **(plain or {})}
    all_secrets = {**PLACEHOLDER_SECRETS, **(secrets or {})}
    secret_keys = []
    for key, value in all_secrets.items():
        if value is not None:
            config[key] = value
            secret_keys.append(key)
    return evaluate_config(config, secret_keys, stack=stack)


def command_text(record: Record) -> str:
    return unwrap(record.inputs.get("create")) or ""


def is_secret_input(record: Record, key: str) -> bool:
    from pvelab.evaluate import SECRET_SIG, SIG_KEY

    value = record.inputs.get(key)
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def leaked_secrets(ev: Evaluation) -> list[str]:
    """Places where a secret value appears in plain text (inputs of any resource, or non-secret outputs)."""
    found = []
    for r in ev.records:
        for s in plaintext_strings(r.inputs):
            for secret in SECRET_VALUES:
                if secret in s:
                    found.append(f"{r.name}: input contains {secret[:6]}...")
    for key, out in ev.stack_outputs.items():
        if out.secret:
            continue
        text = json.dumps(out.value, default=str)
        for secret in SECRET_VALUES:
            if secret in text:
                found.append(f"stack output {key} contains {secret[:6]}...")
    return found

"""Read a stack's settings from `Pulumi.<stack>.yaml` without the Pulumi CLI.

Used by the offline tools (plan, classroom, preflight, status, drill) and by the test harness, so that
all of them see exactly the config `pulumi up -s <stack>` would see. Secrets in a stack file are
encrypted by the Pulumi CLI; offline tools take them from the environment instead (see `secret_from_env`).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .formats import key_name
from .safeyaml import read_yaml
from .spec import CONFIG_KEY, CONFIG_NAMESPACE, SECRET_KEYS, LabSpec, SpecError, parse_spec

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Offline tools read secrets from these variables (never from the command line, which `ps` shows).
SECRET_ENV = {
    "outerApiToken": "PVE_LAB_OUTER_API_TOKEN",
    "rootPassword": "PVE_LAB_ROOT_PASSWORD",
}


@dataclass
class StackConfig:
    stack: str
    path: Path
    values: dict[str, Any]  # "namespace:key" -> plain value (secure values left out)
    secure_keys: set[str]  # keys present as `secure:` values
    warnings: list[str] = field(default_factory=list)  # e.g. a secret stored as plain text

    @property
    def lab_raw(self) -> Any:
        return self.values.get(CONFIG_KEY)

    def spec(self) -> LabSpec:
        return parse_spec(self.lab_raw)

    def has_secret(self, key: str) -> bool:
        full = f"{CONFIG_NAMESPACE}:{key}"
        return full in self.secure_keys or full in self.values

    def as_pulumi_config(self) -> dict[str, str]:
        """The form `pulumi.runtime.set_all_config` takes: JSON text for structured values."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.values.items()}


def stack_path(stack: str, project_dir: Path = PROJECT_DIR) -> Path:
    return project_dir / f"Pulumi.{stack}.yaml"


# Pulumi stack names: letters, digits, '-', '_', '.' (pulumi/sdk/go/common/tokens: QName parts).
STACK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def load_stack(stack: str, project_dir: Path = PROJECT_DIR, warn=None) -> StackConfig:
    """Read Pulumi.<stack>.yaml; SpecError (one line, naming the file) when it is missing or malformed.

    Secrets stored as plain text (not `secure:`) are read but warned about through `warn` (default: stderr).
    """
    if not isinstance(stack, str) or not STACK_RE.fullmatch(stack):
        raise SpecError([f"stack {key_name(stack)}: not a stack name (letters, digits, '_', '.', '-')"])
    path = stack_path(stack, project_dir)
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))
        raise SpecError([f"stack '{stack}': no file {path.name} (stacks here: {', '.join(known) or 'none'})"])
    doc = read_yaml(path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError([f"{path.name}: expected a mapping with a 'config' key, got {type(doc).__name__}"])
    config = doc.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise SpecError([f"{path.name}: 'config' must be a mapping, got {type(config).__name__}"])
    values, secure, warnings = {}, set(), []
    for key, value in config.items():
        if not isinstance(key, str):
            raise SpecError([f"{path.name}: config key {key_name(key)} is not text like pve-lab:lab"])
        full = key if ":" in key else f"{CONFIG_NAMESPACE}:{key}"
        if full in values or full in secure:  # 'lab' and 'pve-lab:lab' name the same key
            raise SpecError([f"{path.name}: {full} is given twice (as '{key}' and with its namespace); keep one"])
        if isinstance(value, dict) and set(value) == {"secure"}:
            secure.add(full)
            continue
        if full in (f"{CONFIG_NAMESPACE}:{k}" for k in SECRET_KEYS):
            warnings.append(f"{path.name}: {full} is stored as plain text; set it with "
                            f"`pulumi config set --secret -s {stack} {full} ...` (value hidden)")
        values[full] = value
    for line in warnings:
        (warn or (lambda text: print(f"warning: {text}", file=sys.stderr)))(line)
    return StackConfig(stack=stack, path=path, values=values, secure_keys=secure, warnings=warnings)


def secret_from_env(key: str) -> Optional[str]:
    return os.environ.get(SECRET_ENV[key]) or None

"""Read a stack's settings from `Pulumi.<stack>.yaml` without the Pulumi CLI.

Used by the offline tools (plan, classroom, preflight, status, drill) and by the test harness, so that
all of them see exactly the config `pulumi up -s <stack>` would see. Secrets in a stack file are
encrypted by the Pulumi CLI; offline tools take them from the environment instead (see `secret_from_env`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .spec import CONFIG_KEY, CONFIG_NAMESPACE, LabSpec, SpecError, parse_spec

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


def load_stack(stack: str, project_dir: Path = PROJECT_DIR) -> StackConfig:
    path = stack_path(stack, project_dir)
    if not path.exists():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))
        raise SpecError([f"stack '{stack}': no file {path.name} (stacks here: {', '.join(known) or 'none'})"])
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError([f"{path.name}: not valid YAML ({exc})"]) from None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise SpecError([f"{path.name}: 'config' must be a mapping"])
    values, secure = {}, set()
    for key, value in config.items():
        full = key if ":" in key else f"{CONFIG_NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            secure.add(full)
            continue
        values[full] = value
    return StackConfig(stack=stack, path=path, values=values, secure_keys=secure)


def secret_from_env(key: str) -> Optional[str]:
    return os.environ.get(SECRET_ENV[key]) or None

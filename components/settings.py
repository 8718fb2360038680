"""Read the stack's config into a typed spec plus secrets, or stop with every problem named.

Runs before any resource is declared, so a bad config never leaves a half-built lab. Problems are raised
as pulumi.RunError: Pulumi shows the message without a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import pulumi
from pulumi.runtime import get_config

from pvelab.inner_api import credential_env_problems
from pvelab.spec import CONFIG_NAMESPACE, LabSpec, SpecError, check_secrets, parse_spec

from .credentials import LabCredentialsArgs


@dataclass
class LabSettings:
    spec: LabSpec
    outer_api_token: pulumi.Output[str]
    credentials: LabCredentialsArgs


def _raw(key: str) -> Optional[str]:
    # Reads the value only to validate it; it is never logged or returned.
    return get_config(f"{CONFIG_NAMESPACE}:{key}")


def load_settings() -> LabSettings:
    config = pulumi.Config(CONFIG_NAMESPACE)
    problems: list[str] = []
    spec = None
    try:
        raw = config.get_object("lab")
        if raw is None:
            problems.append(f"{CONFIG_NAMESPACE}:lab: missing; copy Pulumi.lab.yaml and adapt it")
        else:
            spec = parse_spec(raw)
    except SpecError as exc:
        problems += exc.problems
    except ValueError as exc:  # not JSON-shaped
        problems.append(f"{CONFIG_NAMESPACE}:lab: not a structured value ({exc})")
    problems += check_secrets(_raw("outerApiToken"), _raw("sshPrivateKey"), _raw("sshPublicKey"))
    password = _raw("rootPassword")
    if password is not None and not (12 <= len(password) <= 64):
        problems.append(f"{CONFIG_NAMESPACE}:rootPassword: must be 12 to 64 characters (value hidden)")
    if spec is not None and spec.ceph.enabled:  # the nested cluster's API is used (pool, HA)
        problems += credential_env_problems(os.environ)
    if problems:
        raise pulumi.RunError(SpecError(problems).render())
    assert spec is not None
    return LabSettings(
        spec=spec,
        outer_api_token=config.require_secret("outerApiToken"),
        credentials=LabCredentialsArgs(
            root_password=config.get_secret("rootPassword"),
            ssh_private_key=config.get_secret("sshPrivateKey"),
            ssh_public_key=config.get("sshPublicKey"),
        ),
    )

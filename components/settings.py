"""Read the stack's config into a typed spec plus secrets, or stop with every problem named.

Runs before any resource is declared, so a bad config never leaves a half-built lab. Problems are raised
as pulumi.RunError: Pulumi shows the message without a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import pulumi
from pulumi.runtime import get_config, is_config_secret

from pvelab.inner_api import credential_env_problems
from pvelab.spec import CONFIG_NAMESPACE, LabSpec, SpecError, check_root_password, check_secrets, parse_spec

from .credentials import LabCredentialsArgs


@dataclass
class LabSettings:
    spec: LabSpec
    outer_api_token: pulumi.Output[str]
    credentials: LabCredentialsArgs


def _raw(key: str) -> Optional[str]:
    # Reads the value only to validate it; it is never logged or returned.
    return get_config(f"{CONFIG_NAMESPACE}:{key}")


def _warn_plain_secrets() -> None:
    """A secret set without --secret sits in Pulumi.<stack>.yaml in plain text: say so (never the value)."""
    for key in ("outerApiToken", "rootPassword", "sshPrivateKey"):
        full = f"{CONFIG_NAMESPACE}:{key}"
        if _raw(key) is not None and not is_config_secret(full):
            pulumi.log.warn(f"{full} is stored as plain text in the stack file; set it again with "
                            f"`pulumi config set --secret {full} ...` (value hidden)")


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
    problems += check_root_password(_raw("rootPassword"))
    _warn_plain_secrets()
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

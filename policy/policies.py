"""The policy pack's policies: thin adapters from pulumi-policy to the pure rules in pvelab/policy_rules.py.

Kept apart from __main__.py (whose PolicyPack(...) call serves forever) so tests can import them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pulumi_policy import (EnforcementLevel, PolicyConfigSchema, ReportViolation, StackValidationArgs,
                           StackValidationPolicy)

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from pvelab.policy_rules import (LIMIT_POLICY, LIMITS_SCHEMA, SANITY_POLICY, ClassLimits, Res,  # noqa: E402
                                 check_class_limits, check_lab_sanity)


def _plain(value: Any) -> Any:
    """Props with pulumi-policy's Secret wrappers opened (the rules never read secret values)."""
    if hasattr(value, "value") and type(value).__name__ == "Secret":
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def to_res(resources) -> list[Res]:
    return [Res(r.resource_type, r.name, _plain(dict(r.props)), r.provider.name if r.provider else "")
            for r in resources]


def _report(violations, args: StackValidationArgs, report_violation: ReportViolation) -> None:
    urns = {r.name: r.urn for r in args.resources}
    for v in violations:
        report_violation(f"[{v.rule}] {v.message}", urns.get(v.resource))


def validate_limits(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    try:
        limits = ClassLimits.from_config(args.get_config())
    except ValueError as exc:
        report_violation(str(exc), None)
        return
    _report(check_class_limits(to_res(args.resources), limits), args, report_violation)


def validate_sanity(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    _report(check_lab_sanity(to_res(args.resources)), args, report_violation)


class_limits = StackValidationPolicy(
    name=LIMIT_POLICY,
    description="Per-student limits of the class: nested nodes, vCPUs, RAM, disk, outer nodes, storages, VMIDs.",
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=PolicyConfigSchema(properties=LIMITS_SCHEMA),
    validate=validate_limits,
)

lab_sanity = StackValidationPolicy(
    name=SANITY_POLICY,
    description="Nested lab sanity: odd node count >= 3, CPU host, NIC firewall off, stop on destroy, unique VMIDs, "
                "and a student's stack touches only their own pool, network and user.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=validate_sanity,
)

POLICIES = [class_limits, lab_sanity]

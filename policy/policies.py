"""The policy pack's policies: thin adapters from pulumi-policy to the pure rules in pvelab/policy_rules.py.

Kept apart from __main__.py (whose PolicyPack(...) call serves forever) so tests can import them.

The limits and the per-resource sanity rules are *resource* policies: the engine runs them on each resource's
inputs before it creates the resource (in `preview` and in `up`), so a violation stops the update before a VM
exists. They read only the props they need: in a preview some inputs are unknown (a RandomPassword's result,
a VNet bridge computed after the SDN apply), and pulumi-policy turns a policy that reads an unknown value into
an advisory note. Only the rules that need every resource (node count, unique VMIDs, student isolation) stay a
stack policy; it too reads only what it needs and skips what is not known yet.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pulumi_policy import (EnforcementLevel, PolicyConfigSchema, ReportViolation, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy)

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from pvelab.policy_rules import (LIMIT_POLICY, LIMITS_SCHEMA, SANITY_POLICY, STACK_POLICY, ClassLimits,  # noqa: E402
                                 Res, StackTally, acl_violations, check_stack, resource_limit_violations,
                                 student_section_violation, vm_sanity_violations)

# One analyzer process serves one update; VMs are tallied per stack (the URN names it), keyed by URN.
_TALLIES: dict[str, StackTally] = {}


def _provider_name(provider: Any) -> str:
    return getattr(provider, "name", "") or "" if provider is not None else ""


def _stack_of(urn: str) -> str:
    parts = (urn or "").split("::")
    return parts[0].rsplit(":", 1)[-1] if parts else ""


def resource_of(args: ResourceValidationArgs) -> Res:
    """The resource as the rules see it; `props` stays pulumi-policy's proxy, so only what a rule reads is read."""
    return Res(args.resource_type, args.name, args.props, _provider_name(args.provider))


def validate_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    try:
        limits = ClassLimits.from_config(args.get_config())
    except ValueError as exc:
        report_violation(str(exc), None)
        return
    res = resource_of(args)
    violations = resource_limit_violations(res, limits) + student_section_violation(res, limits)
    violations += _TALLIES.setdefault(_stack_of(args.urn), StackTally()).add(args.urn, res, limits)
    for v in violations:
        report_violation(f"[{v.rule}] {v.message}", None)


def validate_sanity(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    res = resource_of(args)
    for v in vm_sanity_violations(res) + acl_violations(res):
        report_violation(f"[{v.rule}] {v.message}", None)


def to_res(resources) -> list[Res]:
    return [Res(r.resource_type, r.name, r.props, _provider_name(r.provider)) for r in resources]


def validate_stack(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    urns = {r.name: r.urn for r in args.resources}
    for v in check_stack(to_res(args.resources)):
        report_violation(f"[{v.rule}] {v.message}", urns.get(v.resource))


class_limits = ResourceValidationPolicy(
    name=LIMIT_POLICY,
    description="Per-student limits of the class: nested nodes, vCPUs, RAM, disk, outer nodes, storages, VMIDs "
                "(checked on each resource's inputs, before it is created).",
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=PolicyConfigSchema(properties=LIMITS_SCHEMA),
    validate=validate_limits,
)

lab_sanity = ResourceValidationPolicy(
    name=SANITY_POLICY,
    description="Nested lab sanity per resource: CPU host, NIC firewall off, stop on destroy; a student's ACLs "
                "name no group or token, no admin role, only pool and SDN paths.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=validate_sanity,
)

lab_stack = StackValidationPolicy(
    name=STACK_POLICY,
    description="The whole stack: odd node count >= 3, unique VMIDs, and a student's stack touches only their "
                "own pool, network and user.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=validate_stack,
)

POLICIES = [class_limits, lab_sanity, lab_stack]

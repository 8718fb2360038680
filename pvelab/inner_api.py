"""How the program reaches the nested cluster's API (the inner provider): which node, and what may not leak in.

Pure logic; components/lab.py builds the provider from it.
"""
from __future__ import annotations

from typing import Mapping

from .spec import LabSpec, NodePlan

# bpg's provider reads these from its environment, and they win over a username/password in the provider's
# configuration: an API token first, then an auth ticket + CSRF token pair, then user credentials
# (bpg proxmox/api/credentials.go NewCredentials; the SDK provider proxmoxtf/provider/provider.go reads the
# ticket with GetOk, so an empty ticket in the configuration does not override the environment).
# An outer-host token exported for other tools would make the nested API answer 401.
CREDENTIAL_ENV = ("PROXMOX_VE_API_TOKEN", "PM_VE_API_TOKEN", "PROXMOX_VE_AUTH_TICKET", "PM_VE_AUTH_TICKET",
                  "PROXMOX_VE_CSRF_PREVENTION_TOKEN", "PM_VE_CSRF_PREVENTION_TOKEN")


def inner_endpoint(spec: LabSpec) -> NodePlan:
    """The node whose API the inner provider uses: not the HA test VM's preferred node, which the HA drill
    stops by default (`drill ha` hard-stops the node running vm:100). Falls back to the first node."""
    preferred = spec.ha_preferred_node if spec.ha.enabled else None
    return next((p for p in spec.node_plans if p.hostname != preferred), spec.node_plans[0])


def credential_env_problems(environ: Mapping[str, str]) -> list[str]:
    """One problem per credential variable set in the environment that would override the inner provider's
    root password (the program's own keys are `pve-lab:*` config, never these variables)."""
    found = [name for name in CREDENTIAL_ENV if environ.get(name)]
    if not found:
        return []
    return [f"environment: {', '.join(found)} set; the provider for the nested cluster would use "
            f"{'it' if len(found) == 1 else 'them'} instead of the nested root password (401 from the nested "
            f"API). Unset {'it' if len(found) == 1 else 'them'} for pulumi (the outer token belongs in "
            f"pve-lab:outerApiToken), e.g. `env -u {found[0]} pulumi up`"]

"""Apply a nested node VM's pending configuration with one reboot: the outer half of the rolling restart.

The node VMs have bpg's `reboot_after_update` off, so a change that needs a restart (memory, cores...) stays
pending on the outer host (PVE keeps it under /pending until the next start). This runs once per node, one
node after another (components/rolling_restart.py chains them, with node-restart-wait.sh in between), from
the machine running pulumi, through the outer host's API:
no pending change -> nothing; a running VM -> `status/reboot`, which "shuts it down and starts it again,
applying pending changes" (qemu-server src/PVE/API2/Qemu.pm, vm_reboot); a stopped VM -> `status/start`.
A reboot from inside the guest would not do: QEMU keeps running, and the changes stay pending.

Run by a local pulumi-command step as `python -m pvelab.ops.apply_pending`, everything from the environment
(the token too: never on a command line): PVE_LAB_OUTER_ENDPOINT, PVE_LAB_OUTER_NODE, PVE_LAB_VMID,
PVE_LAB_OUTER_INSECURE (1/0), PVE_LAB_OUTER_API_TOKEN, DEADLINE_S, POLL_S.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from .api import ApiError, Clock, Endpoint, PveClient, Retry, TokenAuth, WaitTimeout, poll


def pending_changes(client: PveClient, node: str, vmid: int) -> list[str]:
    """'memory: 8192 -> 12288', 'delete net1': what the next start of the VM would change."""
    changes = []
    for item in client.get(f"nodes/{node}/qemu/{vmid}/pending") or []:
        key = item.get("key")
        if item.get("delete"):
            changes.append(f"delete {key}")
        elif "pending" in item:
            changes.append(f"{key}: {item.get('value', '(unset)')} -> {item['pending']}")
    return changes


def apply_pending(client: PveClient, node: str, vmid: int, deadline_s: float, poll_s: float,
                  out: Callable[[str], None] = print, clock: Optional[Clock] = None) -> bool:
    """Restart the VM when it has pending changes; True when it was restarted (or started)."""
    clock = clock or client.clock
    changes = pending_changes(client, node, vmid)
    if not changes:
        out(f"VM {vmid}: no pending changes, no restart")
        return False
    status = client.get(f"nodes/{node}/qemu/{vmid}/status/current").get("status")
    action = "reboot" if status == "running" else "start"
    out(f"VM {vmid} ({status}): {action} to apply {'; '.join(changes)}")
    upid = client.post(f"nodes/{node}/qemu/{vmid}/status/{action}")
    client.wait_task(node, upid, deadline_s, poll_s, what=f"{action} of VM {vmid}")
    poll(clock, deadline_s, poll_s,
         lambda: True if client.get(f"nodes/{node}/qemu/{vmid}/status/current").get("status") == "running" else None,
         f"VM {vmid} to run again after its {action}")
    left = pending_changes(client, node, vmid)
    if left:
        raise ApiError(f"VM {vmid} still has pending changes after its {action}: {'; '.join(left)}")
    out(f"VM {vmid}: running with the new configuration")
    return True


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ApiError(f"missing environment variable {name}")
    return value


def main(environ=os.environ) -> int:
    try:
        endpoint = Endpoint(_env("PVE_LAB_OUTER_ENDPOINT"), environ.get("PVE_LAB_OUTER_INSECURE") != "1",
                            _env("PVE_LAB_OUTER_NODE"))
        client = PveClient([endpoint], TokenAuth(_env("PVE_LAB_OUTER_API_TOKEN")), Retry(), what="outer host")
        apply_pending(client, endpoint.label, int(_env("PVE_LAB_VMID")), float(environ.get("DEADLINE_S", "600")),
                      float(environ.get("POLL_S", "2")))
    except (ApiError, WaitTimeout, ValueError) as exc:
        print(f"pve-lab: error: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
        print("pve-lab: Nothing else was restarted. Fix the cause on the outer host, then run 'pulumi up' again.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real-host integration test: builds a whole lab, checks it (status, an HA drill), breaks it (a node off), destroys it.

Skipped unless these are set (and the `pulumi` CLI is on PATH). It takes 30-60 minutes.
  PVE_LAB_IT_ENDPOINT     outer API URL, e.g. https://pve.example:8006/
  PVE_LAB_IT_API_TOKEN    outer API token 'user@realm!id=uuid'
  PVE_LAB_IT_NODE         outer node name
  PVE_LAB_IT_NETWORK      a free lab network CIDR reachable from here, e.g. 10.77.0.0/24 (gateway .1, nodes .11..)
Optional: PVE_LAB_IT_STORAGE (local-lvm), PVE_LAB_IT_IMAGE_STORAGE (local), PVE_LAB_IT_BRIDGE (vmbr0),
PVE_LAB_IT_VLAN, PVE_LAB_IT_VMID_BASE (9700), PULUMI_CONFIG_PASSPHRASE for a local backend,
PVE_LAB_IT_SOURCE (apt | template: the node path to build; the builder takes the address after the nodes),
PVE_LAB_IT_EVENT_LOG (where the first `up` is recorded as an event log, default it-events-<source>.json:
its per-step times are printed and feed `plan --calibrate`), PVE_LAB_IT_RESET=1 (also take a baseline
and reset the lab to it, printing each phase's time).
"""
from __future__ import annotations

import ipaddress
import os
import shutil

import pytest
from harness import lab_raw

REQUIRED = ("PVE_LAB_IT_ENDPOINT", "PVE_LAB_IT_API_TOKEN", "PVE_LAB_IT_NODE", "PVE_LAB_IT_NETWORK")
missing = [v for v in REQUIRED if not os.environ.get(v)]
pytestmark = [
    pytest.mark.skipif(bool(missing), reason=f"real-host integration test: set {', '.join(missing)}"),
    pytest.mark.skipif(shutil.which("pulumi") is None, reason="real-host integration test: needs the pulumi CLI"),
]


def _lab_config() -> dict:
    env = os.environ
    net = ipaddress.ip_network(env["PVE_LAB_IT_NETWORK"])
    lab = lab_raw()
    lab["outer"].update(endpoint=env["PVE_LAB_IT_ENDPOINT"], node=env["PVE_LAB_IT_NODE"],
                        storage=env.get("PVE_LAB_IT_STORAGE", "local-lvm"),
                        imageStorage=env.get("PVE_LAB_IT_IMAGE_STORAGE", "local"),
                        bridge=env.get("PVE_LAB_IT_BRIDGE", "vmbr0"))
    if env.get("PVE_LAB_IT_VLAN"):
        lab["outer"]["vlanTag"] = int(env["PVE_LAB_IT_VLAN"])
    lab["network"].update(cidr=str(net), gateway=str(net.network_address + 1), dns=[str(net.network_address + 1)],
                          firstAddress=str(net.network_address + 11))
    lab["vmidBase"] = int(env.get("PVE_LAB_IT_VMID_BASE", "9700"))
    lab["cluster"]["name"] = "pvelab-it"
    lab["nodes"]["source"] = env.get("PVE_LAB_IT_SOURCE", "apt")
    return lab


def _print_step_times(path) -> None:
    from pvelab.plan.calibrate import learn, render_calibration

    print(render_calibration(learn(path), str(path)))


def test_whole_lab_on_a_real_host():
    import json

    from pulumi import automation as auto

    from pvelab.stackfile import PROJECT_DIR

    stack = auto.create_or_select_stack(stack_name="it", work_dir=str(PROJECT_DIR))
    try:
        stack.set_config("pve-lab:lab", auto.ConfigValue(json.dumps(_lab_config())))
        stack.set_config("pve-lab:outerApiToken", auto.ConfigValue(os.environ["PVE_LAB_IT_API_TOKEN"], secret=True))
        from pathlib import Path

        from pvelab.plan.calibrate import EventLogWriter

        source = _lab_config()["nodes"]["source"]
        events = Path(os.environ.get("PVE_LAB_IT_EVENT_LOG", f"it-events-{source}.json"))
        result = stack.up(on_output=print, on_event=EventLogWriter(events))
        _print_step_times(events)
        outputs = result.outputs
        if source == "template":
            assert all(v.startswith("pve-manager/") for v in outputs["pveVersions"].value.values())
        assert "Quorate:          Yes" in outputs["clusterStatus"].value
        assert "HEALTH_OK" in outputs["cephHealth"].value
        assert outputs["haResources"].value == ["vm:100"]
        # A second `up` changes nothing: every step is idempotent.
        again = stack.up(on_output=print)
        assert set(again.summary.resource_changes or {}) <= {"same"}
        _check_status_and_drill(outputs)
        if os.environ.get("PVE_LAB_IT_RESET") == "1":
            _baseline_and_reset(outputs)
    finally:
        _break_the_lab()  # destroy must not need a healthy nested cluster
        stack.destroy(on_output=print)
        stack.workspace.remove_stack("it")


def _clients(outputs=None):
    from pvelab.ops.connect import nested_client, outer_client
    from pvelab.spec import parse_spec

    spec = parse_spec(_lab_config())
    outer = outer_client(spec, token=os.environ["PVE_LAB_IT_API_TOKEN"])
    nested = None
    if outputs is not None:
        nested = nested_client(spec, ca=None, password=outputs["rootPassword"].value)
    return spec, outer, nested


def _check_status_and_drill(outputs) -> None:
    """The chapter's checks and its last step, through the same code as `status` and `drill ha`."""
    from pvelab.ops.drill import run_drill
    from pvelab.ops.status import gather

    spec, outer, nested = _clients(outputs)
    report = gather(nested)
    assert report["healthy"], report
    drill = run_drill("ha", spec, outer, nested)
    assert drill.ok and not drill.still_stopped, drill
    assert drill.recovery_s is not None and drill.recovery_s < 600


def _baseline_and_reset(outputs) -> None:
    """Baseline, then reset to it: the lab proves itself healthy after each (times printed)."""
    from pvelab.ops.reset import LabSnapshots, render_text

    spec, outer, nested = _clients(outputs)
    for action in ("baseline", "reset"):
        lab = LabSnapshots(spec, "it", outer, nested)
        report = lab.take_baseline(replace=True) if action == "baseline" else lab.reset()
        print(render_text(report))
        assert report.ok and not report.still_stopped, report


def _break_the_lab() -> None:
    """Hard-stop the first nested node (quorum still held by two, Ceph degraded) before destroying."""
    spec, outer, _ = _clients()
    first = spec.node_plans[0]
    try:
        outer.post(f"/nodes/{spec.outer.node}/qemu/{first.vmid}/status/stop")
    except Exception as exc:  # the VM may not exist when `up` failed early; destroy must work either way
        print(f"could not stop VM {first.vmid} before destroy: {exc}")

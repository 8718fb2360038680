"""Both ways to build a class side by side: every node from the internet (apt) vs clones of a golden template.

    venv/bin/python benchmarks/template_bench.py [--students 30] [--outer-nodes 3] [--parallel 10] [--uplink-mbit 100]

From the evaluated graphs (the real program on Pulumi's mock runtime, `plan`'s model and its duration
table), for a class allocated by the classroom tools:
  - internet package installs per class: steps that download Debian upgrades + the PVE kernel
    (install-pve prepare), proxmox-ve (install-pve finish) and Ceph (ceph-install), counted on the graph;
  - estimated bytes fetched from the internet for them (+ the cloud image, once per outer node);
  - the per-lab critical path (plan's estimate for one student's stack);
  - the class's estimated wall time at --parallel labs at once: the template builds (one per outer node, at
    the same time) first on the template path, then the students in waves of --parallel; a wave lasts at
    least as long as its downloads take through the class's uplink (--uplink-mbit).
Target on the template path: installs once per outer node, per-lab critical path <= 10 estimated minutes.
Every figure is an ESTIMATE (pvelab/plan/durations.py; bytes below), printed, not a timed test.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pvelab.classroom.allocate import allocate  # noqa: E402
from pvelab.classroom.roster import load_roster  # noqa: E402
from pvelab.evaluate import PLACEHOLDER_SECRETS, evaluate_config  # noqa: E402
from pvelab.plan.durations import format_duration  # noqa: E402
from pvelab.plan.model import build_plan  # noqa: E402
from pvelab.spec import CONFIG_KEY  # noqa: E402

EXAMPLE = ROOT / "examples" / "classroom.yaml"
MB = 1_000_000
# What each internet-fetching step kind downloads, roughly (estimates, same sources as durations.py).
DOWNLOAD_BYTES = {
    "install-pve:prepare": 150 * MB,  # apt full-upgrade of the cloud image + proxmox-default-kernel
    "install-pve:finish": 1000 * MB,  # proxmox-ve postfix open-iscsi chrony: the largest apt run
    "ceph-install": 300 * MB,  # pveceph install: the Ceph packages
    "proxmoxve:download/fileLegacy:FileLegacy": 400 * MB,  # the Debian 13 genericcloud image
}
INSTALL_KINDS = {"install-pve:prepare": "Debian upgrade + PVE kernel", "install-pve:finish": "proxmox-ve",
                 "ceph-install": "Ceph"}


def class_plan(students: int, outer_nodes: int, tmp: Path, source: str):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["lab"].setdefault("nodes", {})["source"] = source
    doc["outerNodes"] = [{"name": f"pve{i}", "cores": 1024, "memoryGiB": 4096, "diskGiB": 80000}
                         for i in range(1, outer_nodes + 1)]
    doc["students"] = [{"id": f"s{i:03d}", "name": f"Student {i}"} for i in range(1, students + 1)]
    path = tmp / "class.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = allocate(load_roster(path))
    assert plan.ok, plan.problems
    return plan


def plan_of(lab: dict, stack: str):
    ev = evaluate_config({CONFIG_KEY: json.dumps(lab), **PLACEHOLDER_SECRETS}, PLACEHOLDER_SECRETS, stack=stack)
    if ev.error:
        raise SystemExit(f"{stack}: {ev.error}")
    return build_plan(ev, stack=stack)


def internet_steps(plan) -> Counter:
    """Step kinds that fetch from the internet (clones' @clone steps download nothing)."""
    return Counter(s.kind for s in plan.steps if s.kind in DOWNLOAD_BYTES)


def builder_part(plan) -> float:
    """When the template is ready in a stack that builds it (the conversion step's finish)."""
    return max(s.finish_s for s in plan.steps if s.kind == "outer-template")


def class_wall(per_lab_s: float, lab_bytes: float, students: int, parallel: int, uplink_bps: float,
               before_s: float = 0.0) -> tuple[float, int]:
    waves = math.ceil(students / parallel)
    per_wave = max(per_lab_s, min(parallel, students) * lab_bytes * 8 / uplink_bps)
    return before_s + waves * per_wave, waves


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--outer-nodes", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=10, help="labs built at the same time (classroom up --parallel)")
    ap.add_argument("--uplink-mbit", type=float, default=100.0, help="the class's internet uplink (Mbit/s)")
    args = ap.parse_args()
    uplink = args.uplink_mbit * 1_000_000
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        apt_class = class_plan(args.students, args.outer_nodes, Path(tmp), "apt")
        tpl_class = class_plan(args.students, args.outer_nodes, Path(tmp), "template")
    students = apt_class.students
    nodes = sorted({s.outer_node for s in students})

    apt_plans = [plan_of(s.lab, s.stack) for s in students]
    # the classroom tools give every student template.vmId of their node's class template: nothing to build
    clone_plans = [plan_of(s.lab, s.stack) for s in tpl_class.students]
    # the class-images stack's builds, one per outer node: each as the lone lab that builds its own template
    build_plans = {b.node: plan_of(b.lab, f"{b.node}-template") for b in tpl_class.template_builds}

    apt_steps = sum((internet_steps(p) for p in apt_plans), Counter())
    tpl_steps = sum((internet_steps(p) for p in clone_plans), Counter())
    for p in build_plans.values():  # the builders' installs (the students' stacks download nothing)
        tpl_steps += Counter({k: v for k, v in internet_steps(p).items() if k != "proxmoxve:download/fileLegacy:FileLegacy"})
    image_downloads = len(nodes)  # the class-images stack fetches the image once per outer node, on both paths
    for counter in (apt_steps, tpl_steps):
        counter["proxmoxve:download/fileLegacy:FileLegacy"] = image_downloads

    def total_bytes(counter: Counter) -> float:
        return sum(DOWNLOAD_BYTES[k] * n for k, n in counter.items())

    apt_lab = max(p.estimate_s for p in apt_plans)
    tpl_lab = max(p.estimate_s for p in clone_plans)
    build_s = max(builder_part(p) for p in build_plans.values())
    apt_lab_bytes = sum(DOWNLOAD_BYTES[k] * n for k, n in internet_steps(apt_plans[0]).items()
                        if k != "proxmoxve:download/fileLegacy:FileLegacy")
    build_bytes = len(nodes) * sum(DOWNLOAD_BYTES[k] * n for k, n in internet_steps(next(iter(build_plans.values()))).items())
    build_wall = max(build_s, build_bytes * 8 / uplink)
    apt_wall, waves = class_wall(apt_lab, apt_lab_bytes, len(students), args.parallel, uplink,
                                 before_s=DOWNLOAD_BYTES["proxmoxve:download/fileLegacy:FileLegacy"] * 8 / uplink)
    tpl_wall, _ = class_wall(tpl_lab, 0, len(students), args.parallel, uplink, before_s=build_wall)

    rows = [("", "apt (every node from the internet)", "template (clones of a golden node)")]
    for kind, label in INSTALL_KINDS.items():
        rows.append((f"internet installs: {label}", str(apt_steps[kind]), str(tpl_steps[kind])))
    rows.append(("cloud image downloads", str(apt_steps["proxmoxve:download/fileLegacy:FileLegacy"]),
                 str(tpl_steps["proxmoxve:download/fileLegacy:FileLegacy"])))
    rows.append(("estimated bytes from the internet", f"{total_bytes(apt_steps) / 1e9:.1f} GB",
                 f"{total_bytes(tpl_steps) / 1e9:.1f} GB"))
    rows.append(("per-lab critical path (estimate)", format_duration(apt_lab), format_duration(tpl_lab)))
    rows.append(("template builds (per outer node, at once)", "-", f"{format_duration(build_wall)}"))
    rows.append((f"class wall time at --parallel {args.parallel} ({waves} waves)", format_duration(apt_wall),
                 format_duration(tpl_wall)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"template benchmark: {len(students)} students on {len(nodes)} outer nodes ({', '.join(nodes)}), "
          f"uplink {args.uplink_mbit:g} Mbit/s, --parallel {args.parallel}  (ESTIMATES: pvelab/plan/durations.py)")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    per_node = {k: tpl_steps[k] / len(nodes) for k in INSTALL_KINDS}
    once = all(v == 1 for k, v in per_node.items() if k != "ceph-install" or tpl_steps[k])
    print(f"target (template path): installs once per outer node: {'yes' if once else 'NO'} "
          f"({', '.join(f'{INSTALL_KINDS[k]} {v:g}' for k, v in per_node.items())} per node); "
          f"per-lab critical path <= 10 min: {'yes' if tpl_lab <= 600 else 'NO'} ({tpl_lab // 60} min {tpl_lab % 60:02d} s)")
    crit = next(p for p in clone_plans)
    print("per-lab critical path (template path): " + " -> ".join(
        f"{s.kind}({s.estimate_s}s)" for s in crit.steps if s.critical))
    print(f"(evaluated {len(apt_plans) + len(clone_plans) + len(build_plans)} graphs in "
          f"{time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

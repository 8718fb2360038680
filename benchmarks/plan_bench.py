"""How fast is `plan`? Evaluation (the real program on the mock runtime) + analysis + rendering.

    venv/bin/python benchmarks/plan_bench.py [--students 40] [--repeat 5]

Prints figures, no pass/fail exit code (targets: default lab < 2 s, a 40-student classroom < 15 s,
peak memory < 500 MB, on 2 cores):
  1. `python -m pvelab plan -s lab` as a fresh process: what a user waits for (imports included);
  2. the default lab in-process, warm: evaluation / analysis / rendering;
  3. a classroom: N generated lab stacks (3 nodes each), planned one after another in one process
     (each stack varies vmidBase, network cidr/gateway/firstAddress/dns and the cluster name).
Peak RSS comes from resource.getrusage (Linux reports KiB).
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pvelab.evaluate import evaluate_stack  # noqa: E402
from pvelab.plan.model import build_plan  # noqa: E402
from pvelab.plan.stack import plan_stack, plaintext_secrets, write_pictures  # noqa: E402
from pvelab.plan.text import render_json, render_text  # noqa: E402
from pvelab.stackfile import load_stack  # noqa: E402


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def student_lab(base: dict, i: int) -> dict:
    """Student i's lab: its own VMIDs, network and cluster name (what a classroom roster would give)."""
    lab = copy.deepcopy(base)
    net = f"10.100.{i}"
    lab["vmidBase"] = 20000 + 10 * i
    lab["network"] = {**lab.get("network", {}), "cidr": f"{net}.0/24", "gateway": f"{net}.1",
                      "firstAddress": f"{net}.11", "dns": [f"{net}.1"]}
    lab["cluster"] = {**lab.get("cluster", {}), "name": f"lab-s{i:02d}"}
    return lab


def write_classroom(folder: Path, students: int) -> list[str]:
    base = load_stack("lab").lab_raw
    stacks = []
    for i in range(1, students + 1):
        name = f"s{i:02d}"
        doc = {"config": {"pve-lab:lab": student_lab(base, i)}}
        (folder / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc))
        stacks.append(name)
    return stacks


def plan_once(stack: str, project_dir: Path, out_dir: Path) -> tuple[float, float, float, int]:
    """(evaluate s, analyse s, render s, node count) for one stack, as `plan` does it."""
    t0 = time.perf_counter()
    config = load_stack(stack, project_dir)
    evaluation = evaluate_stack(config)
    t1 = time.perf_counter()
    plan = build_plan(evaluation, stack=stack, extra_secrets=plaintext_secrets(config))
    t2 = time.perf_counter()
    if not plan.ok:
        raise SystemExit(f"{stack}: {plan.error}")
    files = write_pictures(plan, out_dir).as_dict()
    render_text(plan, files)
    render_json(plan, files)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, len(plan.nodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        out_dir = tmp_dir / "plan-out"

        # 1. a fresh process, as a user runs it
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pvelab", "plan", "-s", "lab", "--out", str(out_dir)],
                              cwd=ROOT, capture_output=True, text=True)
        cold = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"plan failed: {proc.stderr.strip()}")
        print(f"default lab, `python -m pvelab plan -s lab` in a fresh process: {cold:.2f} s "
              f"(peak RSS {peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB)   target < 2 s")

        # 2. in-process, warm
        plan_stack("lab")  # imports and first-run caches
        runs = [plan_once("lab", ROOT, out_dir) for _ in range(args.repeat)]
        ev, an, re_ = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"default lab in-process (median of {args.repeat}): {ev + an + re_:.3f} s = evaluate {ev:.3f} "
              f"+ analyse {an:.3f} + render {re_:.3f}")

        # 3. a classroom
        stacks = write_classroom(tmp_dir, args.students)
        per_lab, nodes = [], 0
        start = time.perf_counter()
        for stack in stacks:
            e, a, r, n = plan_once(stack, tmp_dir, out_dir)
            per_lab.append(e + a + r)
            nodes += n
        total = time.perf_counter() - start
        print(f"classroom: {len(stacks)} labs, {nodes} nested nodes: total {total:.2f} s   target < 15 s")
        print(f"  seconds per lab: mean {statistics.mean(per_lab):.3f}, median {statistics.median(per_lab):.3f}, "
              f"max {max(per_lab):.3f}")
        print(f"peak RSS of this process: {peak_rss_mb():.0f} MB   target < 500 MB")


if __name__ == "__main__":
    main()

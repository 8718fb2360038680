"""Plan a 40-student class and print how long each stage takes (target: allocation + rendering + policy < 5 s).

    venv/bin/python benchmarks/classroom_bench.py [--students 40] [--no-evaluate]

Stages, timed separately:
1. roster: write and load a YAML roster with N students on 3 outer nodes;
2. allocate: allocation from scratch, then again from the saved allocation file (the re-run case);
3. render: every student's Pulumi.<stack>.yaml, the allocation file and the policy-pack config;
4. policy (plan): the policy rules over the resources each student's spec implies (what `classroom plan` does);
5. evaluate + policy (optional, `classroom plan --evaluate`): the real program on the mock runtime per
   student, and the rules over its recorded resources.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvelab.classroom.allocate import allocate, load_allocation, save_allocation  # noqa: E402
from pvelab.classroom.guardrails import plan_violations, write_policy_config  # noqa: E402
from pvelab.classroom.render import render  # noqa: E402
from pvelab.classroom.roster import load_roster  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml"


def roster_doc(students: int) -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["outerNodes"] = [{"name": f"pve{i}", "cores": 512, "memoryGiB": 2048, "diskGiB": 40000} for i in range(1, 4)]
    doc["students"] = [{"id": f"s{i:03d}", "name": f"Student {i}"} for i in range(students)]
    return doc


def timed(label: str, fn, results: list):
    start = time.perf_counter()
    value = fn()
    results.append((label, time.perf_counter() - start))
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=40)
    ap.add_argument("--no-evaluate", action="store_true", help="skip stage 5 (the mock-runtime evaluation)")
    args = ap.parse_args()
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "class.yaml"
        path.write_text(yaml.safe_dump(roster_doc(args.students), sort_keys=False))
        roster = timed("roster: load + validate", lambda: load_roster(path), results)
        plan = timed("allocate: from scratch", lambda: allocate(roster), results)
        save_allocation(plan, tmp / "class.alloc.yaml")
        plan = timed("allocate: again from the allocation file",
                     lambda: allocate(load_roster(path), load_allocation(tmp / "class.alloc.yaml")), results)

        def do_render():
            save_allocation(plan, tmp / "class.alloc.yaml")
            write_policy_config(plan, tmp / "class.policy.json")
            return render(plan, tmp)

        paths = timed("render: stack files + allocation + policy config", do_render, results)
        violations = timed("policy: rules over the plan's resources", lambda: plan_violations(plan), results)
        planning = sum(t for _, t in results)
        evaluated = None
        if not args.no_evaluate:
            evaluated = timed("evaluate + policy: real program on the mock runtime",
                              lambda: plan_violations(plan, evaluate=True), results)

    print(f"classroom benchmark: {args.students} students, {len(paths)} stack files, {os.cpu_count()} CPU(s), "
          f"Python {sys.version.split()[0]}")
    for label, seconds in results:
        print(f"  {label:<55} {seconds * 1000:9.1f} ms")
    print(f"  {'planning total (roster + allocate x2 + render + policy)':<55} {planning * 1000:9.1f} ms "
          f"({'within' if planning < 5 else 'OVER'} the 5 s target)")
    if evaluated is not None:
        per = results[-1][1] / args.students
        print(f"  {'evaluate per student':<55} {per * 1000:9.1f} ms")
    bad = sum(len(v) for v in violations.values()) + (sum(len(v) for v in evaluated.values()) if evaluated else 0)
    print(f"  policy violations: {bad}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""plan_stack(): read a stack file, run the real program on the mock runtime, build the plan, draw it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pvelab.evaluate import evaluate_stack
from pvelab.spec import SECRET_LOOKING_KEYS
from pvelab.stackfile import PROJECT_DIR, StackConfig, load_stack

from .dot import render_dot
from .model import HostCapacity, Plan, build_plan
from .svg import render_svg

STACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PlanError(Exception):
    """The plan could not be made for a reason other than the lab config (the program itself failed)."""


def plaintext_secrets(config: StackConfig) -> list[str]:
    """Secret-looking values a stack file holds in plain text (they must not be echoed either)."""
    found = []
    for key, value in config.values.items():
        if SECRET_LOOKING_KEYS.search(key.split(":", 1)[-1]) and isinstance(value, str):
            found.append(value)
    return found


def plan_stack(stack: str, project_dir: Path = PROJECT_DIR, host: Optional[HostCapacity] = None) -> Plan:
    """The plan of stack `stack` (Pulumi.<stack>.yaml in `project_dir`). Raises SpecError, PlanError."""
    config = load_stack(stack, project_dir)
    try:
        evaluation = evaluate_stack(config)
    except Exception as exc:  # a bug or a missing file in the program, not a config mistake
        raise PlanError(f"the Pulumi program failed under the mock runtime: {type(exc).__name__}: {exc}") from exc
    return build_plan(evaluation, stack=stack, host=host, extra_secrets=plaintext_secrets(config))


@dataclass
class Pictures:
    svg: Path
    dot: Path

    def as_dict(self) -> dict[str, str]:
        return {"svg": str(self.svg), "dot": str(self.dot)}


def write_pictures(plan: Plan, out_dir: Path) -> Pictures:
    """Write <out_dir>/<stack>.svg and .dot; OSError when the folder cannot be written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = Pictures(out_dir / f"{plan.stack}.svg", out_dir / f"{plan.stack}.dot")
    pictures.svg.write_text(render_svg(plan), encoding="utf-8")
    pictures.dot.write_text(render_dot(plan), encoding="utf-8")
    return pictures

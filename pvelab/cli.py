"""`python -m pvelab <command>`: the lab's offline and operations tools.

Each feature folder contributes its commands through a `register(subparsers)` function in its `cli`
module; this file only wires them together and turns expected failures into one clear message.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .spec import SpecError

COMMAND_MODULES = (
    "pvelab.plan.cli",  # plan: the lab offline, as text, JSON and a picture
    "pvelab.classroom.cli",  # classroom plan|render|up|down
    "pvelab.ops.cli",  # preflight, status, drill
    "pvelab.ops.reset_cli",  # baseline, reset
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pvelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that feature is not present in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

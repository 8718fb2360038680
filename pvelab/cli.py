"""`python -m pvelab <command>`: the lab's offline and operations tools.

Each feature folder contributes its commands through a `register(subparsers)` function in its `cli`
module; this file only wires them together and turns expected failures into one clear message.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    except OSError as exc:  # a file or folder we could not read or write
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error:{where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so in one line; its text may hold a secret, so only on request
        if os.environ.get("PVE_LAB_DEBUG"):
            raise
        print(f"internal error ({type(exc).__name__}) in `{args.command}`; run again with PVE_LAB_DEBUG=1 for the "
              f"traceback and report it", file=sys.stderr)
        return 1

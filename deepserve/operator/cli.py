"""The ``deepserve`` command line: one parser, one sub-command group per module.

Each module ``deepserve.operator.commands.<group>`` exposes ``register(subparsers)``; a
group whose module is missing (or whose optional dependencies are absent) is left out.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

GROUPS = ("dev", "operator", "plan", "engine", "billing", "scale", "models", "keys", "tenants", "gateway")

log = logging.getLogger("deepserve")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every available command group."""
    parser = argparse.ArgumentParser(
        prog="deepserve",
        description="Inference-as-a-service on Kubernetes: operator, engine, planner, billing.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"deepserve.operator.commands.{group}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("deepserve.operator.commands"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepserve`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

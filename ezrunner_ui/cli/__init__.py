"""The `ezrunner` command: one module per subcommand (parse, call core, print; JSON with --json).

Each subcommand module has ``NAME``, ``HELP``, ``JSON_OUTPUT``, ``add_arguments(parser)`` and ``run(args)``;
adding a command is one module and one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from core.errors import EzRunnerError
from ezrunner_ui.cli import dockerfile, hardware, inspect, pack, plan, push, run, search, ui
from ezrunner_ui.cli.common import print_json

COMMANDS: tuple[ModuleType, ...] = (search, inspect, hardware, plan, dockerfile, pack, push, run, ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ezrunner", description="Pack an open LLM into one docker-loadable tar for an air-gapped GPU server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(p)
        if command.JSON_OUTPUT:
            p.add_argument("--json", action="store_true", help="print one JSON value")
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EzRunnerError as exc:
        if getattr(args, "json", False):
            print_json({"error": exc.code, "message": str(exc)})
        else:
            print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0

"""The `ezrunner` command: one module per subcommand (parse, call core, print; JSON with --json).

Each subcommand module has ``NAME``, ``HELP``, ``JSON_OUTPUT``, ``add_arguments(parser)`` and ``run(args)``;
adding a command is one module and one line in ``COMMANDS``.

Every failure ends in one line on stderr (or one JSON value with --json) and a non-zero exit: 2 for what the
user can fix (an ``EzRunnerError``, a flag argparse refuses), 1 for a bug (any other exception: the line says
to rerun with --debug, which prints the traceback), 130 for Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from core.errors import EzRunnerError, from_os_error, is_file_system_error
from core.render import ezrunner_version
from ezrunner_ui.cli import (
    bench,
    clean,
    dockerfile,
    generate,
    hardware,
    inspect,
    listing,
    pack,
    plan,
    profiles,
    push,
    run,
    search,
    ui,
    verify,
)
from ezrunner_ui.cli.common import FLAGS, error_line, print_json

COMMANDS: tuple[ModuleType, ...] = (
    search, inspect, hardware, plan, dockerfile, generate, pack, verify, push, run, bench, profiles, listing, clean, ui
)

#: exit statuses: a user-fixable error, a bug
EXIT_USER_ERROR = 2
EXIT_BUG = 1
_DEBUG_HELP = "print the traceback of a failure (for a bug report)"


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (the usage lines stay behind --help)."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}. Run `{self.prog} --help` for the flags.", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ezrunner", description="Pack an open LLM into one docker-loadable tar for an air-gapped GPU server."
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"ezrunner {ezrunner_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(p)
        if command.JSON_OUTPUT:
            p.add_argument("--json", action="store_true", help="print one JSON value")
        # also after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    as_json = bool(getattr(args, "json", False))
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except EzRunnerError as exc:
        return _report(exc, command=args.command, debug=debug, as_json=as_json)
    except Exception as exc:
        if isinstance(exc, OSError) and is_file_system_error(exc):
            # A file-system fault no layer named (disk full, read-only, permission denied): say it as it is.
            error = from_os_error(exc, doing=f"running `ezrunner {args.command}`")
            return _report(error, command=args.command, debug=debug, as_json=as_json, cause=exc)
        # a bug: one line, the traceback only on request
        if debug:
            traceback.print_exc()
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        line = (
            f"`ezrunner {args.command}` failed unexpectedly ({type(exc).__name__}{': ' + detail if detail else ''}). "
            "This is a bug in EZ Runner: rerun with --debug and report it with the traceback."
        )
        if as_json:
            print_json({"error": "internal_error", "message": line, "field": None, "details": []})
        print(f"Error: {line}", file=sys.stderr)
        return EXIT_BUG
    return 0


def _report(
    exc: EzRunnerError, *, command: str, debug: bool, as_json: bool, cause: BaseException | None = None
) -> int:
    if debug:
        traceback.print_exception(cause or exc)
    if as_json:
        print_json(
            {"error": exc.code, "message": str(exc), "field": exc.field, "flag": FLAGS.get(exc.field or ""),
             "details": list(exc.details)}
        )  # fmt: skip
    else:
        print(error_line(exc), file=sys.stderr)
        for line in exc.details:
            print(f"    {line}", file=sys.stderr)
    return EXIT_USER_ERROR

"""`ezrunner clean`: delete build contexts, the layer cache, GGUF conversions and unfinished (*.partial) files.

Shows what it would delete and how much, then asks (or --yes); --dry-run deletes nothing. Finished
archives are never touched, wherever they lie.
"""

from __future__ import annotations

import argparse
import sys

from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import human_bytes

NAME = "clean"
HELP = "delete build contexts, the layer cache, GGUF conversions and unfinished files (shows sizes first)"
JSON_OUTPUT = True


def _kind(text: str) -> str:
    from core.housekeeping import CLEAN_KINDS

    if text not in CLEAN_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(CLEAN_KINDS)}")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    from core.housekeeping import CLEAN_KINDS

    # type= rather than choices=: argparse checks an empty nargs="*" list against choices and refuses it
    p.add_argument(
        "kinds", nargs="*", type=_kind, metavar="KIND",
        help=f"what to delete: {', '.join(CLEAN_KINDS)} (default: all of them)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> None:
    from core.errors import InvalidOptionsError
    from core.hardware import default_data_dir
    from core.history import History
    from core.housekeeping import CLEAN_KINDS, clean_candidates, remove

    data_dir = default_data_dir()
    kinds = tuple(dict.fromkeys(args.kinds)) or CLEAN_KINDS
    items = clean_candidates(data_dir=data_dir, history=History(), kinds=kinds)
    total = sum(item.size for item in items)
    listed = [{"kind": i.kind, "path": str(i.path), "size": i.size} for i in items]
    if not args.json:
        for item in items:
            print(f"{item.kind:15}  {human_bytes(item.size):>10}  {item.path}")
        print(f"{len(items)} item(s), {human_bytes(total)}, under {data_dir} and beside recorded archives.")
    if args.dry_run or not items:
        if args.json:
            print_json({"dry_run": args.dry_run, "items": listed, "bytes": total, "removed": [], "failed": []})
        elif items:
            print("Dry run: nothing was deleted.")
        return
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidOptionsError(
                "ezrunner clean asks before deleting, and there is no terminal to ask on.",
                hint="Pass --yes to delete without asking, or --dry-run to only see what would go.",
            )
        if not _confirm(f"Delete these {len(items)} item(s) ({human_bytes(total)})?"):
            print("Nothing was deleted.")
            return
    result = remove(items=items)
    if args.json:
        print_json(
            {
                "dry_run": False, "items": listed, "bytes": total,
                "removed": [str(i.path) for i in result.removed],
                "failed": [{"path": str(i.path), "reason": why} for i, why in result.failed],
            }
        )  # fmt: skip
        if result.failed:
            raise SystemExit(1)  # the JSON above names each failure; a second JSON value would break parsers
        return
    print(f"Deleted {len(result.removed)} item(s), {human_bytes(result.freed)} freed.")
    for item, why in result.failed:
        print(f"Could not delete {item.path}: {why}", file=sys.stderr)
    if result.failed:
        first, why = result.failed[0]
        raise InvalidOptionsError(
            f"{len(result.failed)} item(s) could not be deleted, first {first.path}: {why}.",
            hint="Check the permissions of those files (they may belong to another user, e.g. root), then run "
            "`ezrunner clean` again.",
        )

"""`ezrunner list`: the packs in the history, where their files are and whether they are still there."""

from __future__ import annotations

import argparse
import time

from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import human_bytes

NAME = "list"
HELP = "the packs made on this machine: model, engine, files, sizes, when, whether the files are still there"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, metavar="N", help="the newest N packs (default 50)")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def run(args: argparse.Namespace) -> None:
    from core.errors import InvalidOptionsError
    from core.history import History
    from core.housekeeping import list_packs, pack_entry_to_dict

    if args.limit < 1:
        raise InvalidOptionsError(f"--limit {args.limit} must be at least 1.", hint="For example: --limit 20")
    history = History()
    entries = list_packs(history=history, limit=args.limit)
    if args.json:
        print_json([pack_entry_to_dict(e) for e in entries])
        return
    if not entries:
        print(f"No packs yet (history: {history.path}). Make one with `ezrunner pack MODEL -o model.tar`.")
        return
    for entry in entries:
        if not entry.files:
            shown = ""
        elif entry.present:
            shown = human_bytes(entry.size_on_disk)
        else:
            shown = f"{human_bytes(entry.recorded_size)} when packed, files missing"
        print(f"{_when(entry.started)}  {entry.model_id}  {entry.engine or '?'}  {entry.outcome}  {shown}".rstrip())
        for f in entry.files:
            state = human_bytes(f.size) if f.exists else "missing"
            print(f"    {f.path}  {state}")
        if entry.files and entry.load_script is not None:
            print(f"    {entry.load_script}")
        if entry.outcome in ("failed", "cancelled") and entry.error:
            print(f"    {entry.error.splitlines()[0][:200]}")
        print(f"    id {entry.record_id}")

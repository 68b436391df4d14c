"""`ezrunner hardware`: detect this machine's GPUs, or check a described target."""

from __future__ import annotations

import argparse

from core.hardware import target_summary
from ezrunner_ui.cli.common import add_target_args, gib, print_json, target_from_args

NAME = "hardware"
HELP = "detect this machine's GPUs, or check a described target"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_target_args(p)


def run(args: argparse.Namespace) -> None:
    target = target_from_args(args)
    if args.json:
        print_json(target_summary(target))
        return
    print(target.label)
    for gpu in target.gpus:
        kind = f"compute capability {gpu.compute_capability_str}" if gpu.vendor == "nvidia" else gpu.vendor.upper()
        print(f"  GPU {gpu.index if gpu.index is not None else '-'}: {gpu.name}, {gib(gpu.memory_bytes)}, {kind}")
    for note in getattr(target, "notes", ()):
        print(f"  note: {note}")

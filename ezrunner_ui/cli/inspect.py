"""`ezrunner inspect`: what would be packed: files, sizes, architecture, parameters."""

from __future__ import annotations

import argparse

from core import hubs
from ezrunner_ui.cli.common import gib, inspect, print_json

NAME = "inspect"
HELP = "what would be packed: files, sizes, architecture, parameters"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("--revision")
    p.add_argument("--quant", metavar="NAME", help="read this GGUF quantization's header (a GGUF repository)")


def run(args: argparse.Namespace) -> None:
    info = inspect(args)
    if args.json:
        print_json(hubs.model_to_dict(info))
        return
    print(f"{info.repo_id}  ({info.answered_by}, revision {info.revision} = {info.commit})")
    print(f"  architecture: {info.architecture}   context: {info.context_length}   license: {info.license}")
    dtypes = ", ".join(f"{k}: {v / 1e9:.2f}B" for k, v in info.weights.parameters_by_dtype.items())
    print(f"  parameters: {dtypes or '?'}")
    if info.gguf is not None:
        print(f"  GGUF quantizations ({len(info.gguf.listing.variants)}):")
        for variant in info.gguf.listing.variants:
            state = "" if variant.complete else f"  INCOMPLETE, missing {', '.join(variant.missing)}"
            parts = f"  {variant.split_count} parts" if variant.split_count > 1 else ""
            print(f"    {variant.quant or '?':<12} {gib(variant.total_size):>12}  {variant.key}{parts}{state}")
        for projector in info.gguf.listing.projectors:
            print(f"    projector    {gib(projector.size):>12}  {projector.path}")
    print(f"  files to pack ({len(info.files)}, {gib(info.total_bytes)}):")
    for f in info.files:
        print(f"    {f.path:<60} {f.size:>14,d}  {(f.sha256 or '')[:12]}")

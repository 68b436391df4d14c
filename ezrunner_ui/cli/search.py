"""`ezrunner search`: search Hugging Face and/or ModelScope."""

from __future__ import annotations

import argparse

from core import hubs
from core.hubs.base import SearchFilters
from ezrunner_ui.cli.common import print_json

NAME = "search"
HELP = "search Hugging Face and/or ModelScope"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query")
    p.add_argument("--source", choices=["hf", "ms", "both"], default="both")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--task", help="pipeline tag, e.g. text-generation")
    p.add_argument("--min-params", type=int)
    p.add_argument("--max-params", type=int)
    p.add_argument("--safetensors-only", action="store_true")


def run(args: argparse.Namespace) -> None:
    filters = SearchFilters(
        task=args.task,
        min_params=args.min_params,
        max_params=args.max_params,
        safetensors_only=args.safetensors_only,
    )
    results = hubs.search(query=args.query, source=args.source, limit=args.limit, filters=filters)
    if args.json:
        print_json([r.__dict__ for r in results])
        return
    if not results:
        print(f"No models match {args.query!r} on {args.source}. Try a shorter query or --source both.")
        return
    for r in results:
        params = f"{r.parameters / 1e9:.1f}B" if r.parameters else "?"
        gated = " gated" if r.gated else ""
        print(f"{r.source}:{r.id:<50} {params:>7}  ↓{r.downloads or 0:<10} ♥{r.likes or 0}{gated}")

"""`ezrunner inspect`: what would be packed (files, sizes, architecture, parameters), or what an archive
holds (model, engine, plan, profiles, SBOM counts) when given an archive path."""

from __future__ import annotations

import argparse
from pathlib import Path

from core import hubs
from core.archive import names
from ezrunner_ui.cli.common import gib, inspect, print_json

NAME = "inspect"
HELP = "what would be packed (files, sizes, architecture), or what an archive (.tar, .tar.zst, parts) holds"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model reference, or an archive: NAME.tar, NAME.tar.zst, NAME.tar.part000")
    p.add_argument("--revision")
    p.add_argument("--quant", metavar="NAME", help="read this GGUF quantization's header (a GGUF repository)")


def is_archive_path(text: str) -> bool:
    """Whether ``text`` names an archive (or the first part of one) rather than a model reference."""
    path = Path(text)
    return names.is_archive_name(path.name) or path.name.endswith(names.FIRST_PART_SUFFIX)


def run(args: argparse.Namespace) -> None:
    if is_archive_path(args.model):
        run_archive(args)
        return
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


def run_archive(args: argparse.Namespace) -> None:
    from core.archive.inspect import summarize_archive
    from ezrunner_ui.cli.progress import ProgressRenderer

    progress = ProgressRenderer()  # a .tar.zst is read through once (minutes for a large model)
    try:
        summary = summarize_archive(archive=Path(args.model), on_event=progress)
    finally:
        progress.close()
    if args.json:
        print_json(
            {"archive": summary.archive, "repo_tags": list(summary.repo_tags),
             "model": {"repo_id": summary.model, "source": summary.source, "commit": summary.commit},
             "engine": summary.engine, "plan": dict(summary.plan), "profiles": list(summary.profiles),
             "sbom": summary.sbom.__dict__ if summary.sbom else None, "signed": summary.signed}
        )  # fmt: skip
        return
    print(f"{summary.archive.name}: {summary.model or '?'} ({summary.source or '?'}, commit {summary.commit or '?'})")
    print(f"  image: {', '.join(summary.repo_tags) or '?'}   engine: {summary.engine or '?'}")
    plan = summary.plan
    if plan:
        print(f"  plan: {plan.get('target', '?')}, tensor parallel {plan.get('tensor_parallel_size', '?')}, "
              f"context {plan.get('max_model_len', '?')}, dtype {plan.get('dtype', '?')}")  # fmt: skip
    if summary.profiles:
        print(f"  profiles: {', '.join(summary.profiles)} (default {summary.profiles[0]})")
    if summary.sbom is not None:
        counted = summary.sbom
        print(f"  SBOM ({names.sbom_name(summary.archive.name)}): {counted.os_packages} OS packages, "
              f"{counted.python_packages} Python packages, {counted.model_files} model files "
              f"({gib(counted.model_bytes)}), model license {counted.license or 'not stated'}")  # fmt: skip
    else:
        print(f"  SBOM: {names.sbom_name(summary.archive.name)} is not beside the archive")
    signature = names.signature_name(summary.archive.name)
    print(f"  signature: {signature} (check it: ezrunner verify {summary.archive.name} --allowed-signers FILE)"
          if summary.signed else "  signature: none (packed without --sign)")  # fmt: skip

"""`ezrunner pack`: download, build and export one docker-loadable tar."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import InvalidOptionsError
from ezrunner_ui.cli.common import Progress, add_plan_args, gib, make_plan, parse_size, print_json, token
from ezrunner_ui.cli.signals import stop_on_signals

NAME = "pack"
HELP = "download, build and export one docker-loadable tar"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)
    p.add_argument("-o", "--output", required=True, help="archive path, e.g. qwen2.5-7b.tar")
    p.add_argument("--compress", choices=["none", "zstd"], default="none")
    p.add_argument("--split", type=parse_size, metavar="SIZE", help="split into parts of SIZE (e.g. 4G for FAT32)")
    p.add_argument("--force", action="store_true", help="pack even when the plan says it does not fit")
    p.add_argument("--overwrite", action="store_true", help="replace an archive already at --output")
    p.add_argument(
        "--export-path",
        choices=["auto", "fast", "docker-build"],
        default="auto",
        help="fast: stream the weights into the archive (default); docker-build: docker build + docker save",
    )
    p.add_argument("--dockerfile", metavar="FILE", help="build this hand-edited Dockerfile (docker-build path)")


def run(args: argparse.Namespace) -> None:
    from core.history import History
    from core.pack import pack

    result = make_plan(args)
    if not result.fits and not args.force:
        raise InvalidOptionsError(
            "The plan does not fit the target: " + "; ".join(w.text for w in result.warnings),
            hint="Apply one of the fixes above, or pass --force to pack anyway.",
        )
    dockerfile = None
    if args.dockerfile:
        try:
            dockerfile = Path(args.dockerfile).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidOptionsError(
                f"Cannot read --dockerfile {args.dockerfile}: {exc.strerror}.",
                hint="Write it first with `ezrunner dockerfile MODEL > Dockerfile`, edit it, then pass its path.",
            ) from exc
    history = History()  # opening it repairs the rows of packs whose process is gone
    with stop_on_signals(what="the pack", json_output=args.json) as cancel:
        artifact = pack(
            plan=result,
            output=Path(args.output),
            compression=args.compress,
            split_bytes=args.split,
            token=token(),
            export_path=args.export_path,
            dockerfile=dockerfile,
            history=history,
            overwrite=args.overwrite,
            on_event=Progress(),
            cancel=cancel,
        )
    if args.json:
        print_json(artifact.__dict__)
        return
    print(f"Wrote {artifact.archive} ({gib(artifact.size)}) in {artifact.seconds:.0f} s, sha256 {artifact.sha256}")
    print(f"  {artifact.export_reason}")
    for part in artifact.parts if len(artifact.parts) > 1 else ():
        print(f"  part {part.name}")
    print(f"On the offline server, beside the archive: bash {artifact.load_script.name}")
    print(f"  or: docker load -i {artifact.archive.name} && {artifact.run_command}")

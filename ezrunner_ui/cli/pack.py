"""`ezrunner pack`: download, build and export one docker-loadable tar."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from core import errors
from core.errors import InvalidOptionsError
from core.profiles import with_neighbours
from core.registry.client import parse_image_ref
from ezrunner_ui.cli.common import (
    add_plan_args,
    also_for_target,
    check_pack_paths,
    make_plan,
    parse_size,
    print_json,
    token,
)
from ezrunner_ui.cli.progress import ProgressRenderer, human_bytes
from ezrunner_ui.cli.push import print_result, push, result_json
from ezrunner_ui.cli.signals import stop_on_signals

if TYPE_CHECKING:
    from core.pack import Artifact
    from core.plan import Plan

NAME = "pack"
HELP = "download, build and export one docker-loadable tar"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)
    p.add_argument("-o", "--output", required=True, help="archive path, e.g. qwen2.5-7b.tar")
    p.add_argument("--compress", choices=["none", "zstd"], default="none")
    p.add_argument(
        "--format", choices=["docker-archive", "oci-layout"], default="docker-archive",
        help="docker-archive (docker load; default) or oci-layout (skopeo oci-archive:, podman load, ctr import; "
        "docker load takes it too)",
    )
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
    p.add_argument(
        "--also-for",
        action="append",
        default=[],
        metavar='"TARGET FLAGS"',
        help='also plan a profile for this server (the target flags of plan, quoted; repeatable), e.g. '
        '--also-for "--gpu-name A100-40 --gpus 4"; the image picks the profile that fits where it starts',
    )
    p.add_argument(
        "--sign", metavar="KEY", type=Path,
        help="sign the archive's checksum with this SSH key (or its .pub with the key in ssh-agent): NAME.sha256.sig",
    )
    p.add_argument("--push", metavar="REF", help="then push the image to a registry, e.g. registry.local:5000/m:v1")
    p.add_argument("--push-insecure", action="store_true", help="with --push: the registry serves plain HTTP")


def run(args: argparse.Namespace) -> None:
    from core.history import History
    from core.pack import pack

    check_pack_paths(args)
    if args.push:  # a bad reference fails now, not after the pack
        parse_image_ref(ref=args.push)
    if args.also_for and args.dockerfile:
        raise InvalidOptionsError(
            "--also-for adds profiles that the image's ENTRYPOINT starts, but a hand-edited --dockerfile keeps the "
            "ENTRYPOINT it was rendered with.",
            hint="Drop one of them.",
        )
    also_for = [also_for_target(text) for text in args.also_for]  # a typo fails before the hub is asked
    result = make_plan(args)
    if not args.dockerfile:
        result = with_neighbours(plan=result, also_for=also_for)
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
                field=errors.DOCKERFILE,
            ) from exc
    history = History()  # opening it repairs the rows of packs whose process is gone
    progress = ProgressRenderer()
    try:
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
                sign_key=args.sign,
                archive_format=args.format,
                on_event=progress,
                cancel=cancel,
            )
    finally:
        progress.close()
    pushed = None
    if args.push:
        pushed = push(archive=artifact.archive, ref=args.push, insecure=args.push_insecure, after_pack=True)
    if args.json:
        print_json({**artifact.__dict__, **({"push": result_json(pushed)} if pushed else {})})
        return
    print("\n".join(summary(artifact)))
    print("\n".join(profile_lines(result, load_script=artifact.load_script.name)))
    if pushed:
        print_result(pushed)


def profile_lines(result: Plan, *, load_script: str) -> list[str]:
    """The profiles the image carries, one line each: where it lands, it starts the best that fits."""
    from core.render import render

    spec = render(plan=result).run_spec
    lines = [f"Profiles ({len(spec.profiles)}; the image starts the best that fits the server, "
             f"bash {load_script} --profiles lists them there):"]  # fmt: skip
    for profile in spec.profiles:
        mark = " (default)" if profile.name == spec.default_profile else ""
        lines.append(f"  {profile.name:<24} {profile.description}{mark}")
    return lines


def written_files(artifact: Artifact) -> list[Path]:
    """The files the pack left, in the order a user copies them: archive or parts, checksums, SBOM,
    signature, load.sh."""
    from core.archive import names

    files = [*artifact.parts, artifact.checksum_file]
    if len(artifact.parts) > 1:
        files.append(names.parts_checksum_path(artifact.archive))
    files += [path for path in (artifact.sbom, artifact.signature) if path is not None]
    return [*files, artifact.load_script]


def manual_load_command(artifact: Artifact) -> str:
    """What load.sh does to load the image, by hand (a split archive is its parts in order)."""
    names = [p.name for p in artifact.parts]
    source = f"cat {' '.join(names)} | " if len(names) > 1 else ""
    if artifact.compression == "zstd":
        unpack = f"{source}zstd -dc" if source else f"zstd -dc {names[0]}"
        return f"{unpack} | docker load"
    return f"{source}docker load" if source else f"docker load -i {names[0]}"


def summary(artifact: Artifact) -> list[str]:
    """The lines `ezrunner pack` ends with: every file written, by its real name, and how to load them."""
    folder = artifact.archive.parent
    lines = [f"Wrote {human_bytes(artifact.size)} in {artifact.seconds:.0f} s to {folder}:"]
    for path in written_files(artifact):
        size = f"  {human_bytes(path.stat().st_size)}" if path in artifact.parts else ""
        lines.append(f"  {path.name}{size}")
    lines.append(f"sha256 {artifact.sha256}" + (" (of the parts joined in order)" if len(artifact.parts) > 1 else ""))
    lines.append(artifact.export_reason)
    lines.append(f"On the offline server, with these files in one folder: bash {artifact.load_script.name}")
    if artifact.signature is not None:
        lines.append(
            f"  it checks who made the archive with: bash {artifact.load_script.name} --verify allowed_signers "
            "(or: ezrunner verify ARCHIVE --allowed-signers allowed_signers)"
        )
    lines.append(f"  or by hand: {manual_load_command(artifact)} && {artifact.run_command}")
    return lines

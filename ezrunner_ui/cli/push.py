"""`ezrunner push`: the image inside a packed archive to a registry, without `docker load`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.events import Event
from ezrunner_ui.cli.common import Progress, gib, print_json

if TYPE_CHECKING:
    from core.registry.push import PushResult

NAME = "push"
HELP = "push the image in an archive to a registry (credentials: EZRUNNER_REGISTRY_USER/_PASSWORD or docker login)"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", help="a packed archive: NAME.tar, NAME.tar.zst, or the first part of a split one")
    p.add_argument("ref", help="where to push, e.g. registry.local:5000/team/model:v1")
    p.add_argument("--insecure", action="store_true", help="the registry serves plain HTTP (default: HTTPS)")


class PushProgress(Progress):
    """The shared progress lines, plus the rate and time left under each percentage line."""

    def __call__(self, event: Event) -> None:
        printed_before = self.last
        super().__call__(event)
        if event.total and event.message and self.last != printed_before:
            print(f"      {event.message}", file=sys.stderr)


def push(*, archive: Path, ref: str, insecure: bool, after_pack: bool = False) -> PushResult:
    """Push with progress on stderr (``ezrunner push``, and ``ezrunner pack --push`` with ``after_pack``)."""
    from core.errors import RegistryError
    from core.registry.push import push_archive

    try:
        return push_archive(archive=archive, ref=ref, insecure=insecure, on_event=PushProgress())
    except RegistryError as error:
        if not after_pack:
            raise
        again = f"ezrunner push {archive} {ref}" + (" --insecure" if insecure else "")
        hint = f"{error.hint or ''} The archive was written; push it with `{again}`.".strip()
        raise type(error)(error.message, hint=hint) from error


def result_json(result: PushResult) -> dict[str, Any]:
    return {**dataclasses.asdict(result), "uploaded": result.uploaded, "skipped": result.skipped}


def print_result(result: PushResult) -> None:
    print(f"Pushed {result.ref} (image {result.image_id[:19]}…, manifest {result.manifest_digest})")
    print(f"  {len(result.uploaded)} blobs sent ({gib(result.bytes_sent)}), {len(result.skipped)} already there, "
          f"in {result.seconds:.0f} s")  # fmt: skip
    print(f"  docker pull {result.ref}")


def run(args: argparse.Namespace) -> None:
    result = push(archive=Path(args.archive), ref=args.ref, insecure=args.insecure)
    if args.json:
        print_json(result_json(result))
    else:
        print_result(result)

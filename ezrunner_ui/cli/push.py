"""`ezrunner push`: the image inside a packed archive to a registry, without `docker load`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from core.events import Event
from ezrunner_ui.cli.common import Progress, gib, print_json

NAME = "push"
HELP = "push the image in an archive to a registry (credentials: EZRUNNER_REGISTRY_USER/_PASSWORD or docker login)"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", help="a packed archive: NAME.tar, NAME.tar.zst, or the first part of a split one")
    p.add_argument("ref", help="where to push, e.g. registry.local:5000/team/model:v1")
    add_insecure_argument(p, "--insecure")


def add_insecure_argument(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, action="store_true", help="the registry serves plain HTTP (default: HTTPS)")


class PushProgress(Progress):
    """The shared progress lines, plus the rate and time left under each percentage line."""

    def __call__(self, event: Event) -> None:
        printed_before = self.last
        super().__call__(event)
        if event.total and event.message and self.last != printed_before:
            print(f"      {event.message}", file=sys.stderr)


def push(*, archive: Path, ref: str, insecure: bool, json_output: bool) -> None:
    """Push and print the outcome (``ezrunner push`` and ``ezrunner pack --push``)."""
    from core.registry.push import push_archive

    result = push_archive(archive=archive, ref=ref, insecure=insecure, on_event=PushProgress())
    if json_output:
        print_json({**dataclasses.asdict(result), "uploaded": result.uploaded, "skipped": result.skipped})
        return
    print(f"Pushed {result.ref} (image {result.image_id[:19]}…, manifest {result.manifest_digest})")
    print(f"  {len(result.uploaded)} blobs sent ({gib(result.bytes_sent)}), {len(result.skipped)} already there, "
          f"in {result.seconds:.0f} s")  # fmt: skip
    print(f"  docker pull {result.ref}")


def run(args: argparse.Namespace) -> None:
    push(archive=Path(args.archive), ref=args.ref, insecure=args.insecure, json_output=args.json)

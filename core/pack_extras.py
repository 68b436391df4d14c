"""What the Download page shows beside a finished pack: its run spec (for registry, Kubernetes and compose
commands and the profiles), its SBOM's counts, and whether it is signed. Read from what is on this machine,
cheapest first: the image's label in the local engine, else the archive's own headers (a plain tar: a few
header reads; a zstd archive is not streamed here, it can be many gigabytes)."""

from __future__ import annotations

import json
from pathlib import Path

from core.archive import names
from core.errors import EzRunnerError
from core.runspec import RunSpec, run_spec_from_labels
from core.sbom import SbomCounts, counts


def image_run_spec(*, image_tag: str) -> RunSpec | None:
    """The run spec in the label of ``image_tag`` in the local engine; None without an engine, the image or
    the label."""
    try:
        from core.docker import api as docker_api

        client = docker_api.connect(timeout=10)
        try:
            return run_spec_from_labels(client.images.get(image_tag).labels)
        finally:
            client.close()
    except Exception:  # no engine, or the image was removed
        return None


def pack_run_spec(*, archive: Path, image_tag: str | None) -> RunSpec | None:
    """The run spec of a pack, from the local engine's image or a plain-tar archive; None when neither says."""
    spec = image_run_spec(image_tag=image_tag) if image_tag else None
    if spec is not None:
        return spec
    if archive.name.endswith(names.ZSTD_SUFFIX) or not (archive.is_file() or names.part_path(archive, 0).is_file()):
        return None
    try:
        from core.archive.inspect import archive_run_spec

        return archive_run_spec(archive=archive)
    except EzRunnerError:
        return None


def sbom_summary(*, archive: Path) -> SbomCounts | None:
    """The counts of the SBOM written beside ``archive`` (NAME.cdx.json); None without a readable one."""
    path = names.sbom_path(archive)
    try:
        return counts(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def is_signed(*, archive: Path) -> bool:
    return names.signature_path(archive).is_file()

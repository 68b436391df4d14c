"""An archive's image config (tags, labels, the run spec) read from the archive itself, without ``docker load``.

A docker-archive, whether ``docker save`` wrote it or ``core.image_archive``, names its image config in
``manifest.json``; the config's ``config.Labels`` carry the run spec (``core.runspec.RUN_SPEC_LABEL``) and the
plan summary. EZ Runner's writer puts the config and ``manifest.json`` at the END of the tar, after the model
layers, so:

- a plain tar (one file or its parts) is read by its tar headers alone, seeking over each member's bytes: a
  docker-archive has one member per layer, so that is a few dozen small reads whatever the model's size;
- a zstd archive cannot be seeked: its stream is decompressed once from the start (``core.archive.reader.
  read_stream``) until ``manifest.json`` has passed, which for a large model takes minutes; progress goes to
  ``on_event``.
"""

from __future__ import annotations

import bisect
import io
import json
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.archive.compression import ZSTD_MAGIC
from core.archive.names import archive_of, archive_parts, sbom_path, signature_path
from core.archive.reader import read_stream
from core.errors import ArtifactInvalidError
from core.events import Cancel, EventSink, ignore_events, raise_if_cancelled
from core.runspec import RunSpec, run_spec_from_labels
from core.sbom import SbomCounts, counts

MANIFEST_NAME = "manifest.json"
#: An image config or manifest.json larger than this is not one EZ Runner (or docker save) wrote: refuse to
#: hold it in memory. Ours are a few tens of kB, the run-spec label included.
JSON_MEMBER_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class ArchiveImage:
    """The image a docker-archive holds, as its manifest.json and image config describe it."""

    repo_tags: tuple[str, ...]  # what `docker load` will tag it as
    labels: Mapping[str, str]
    config_name: str  # the config's member name inside the tar ("<hex>.json", or "blobs/sha256/<hex>")
    compressed: bool  # read through zstd (the whole stream) rather than by seeking

    @property
    def run_spec(self) -> RunSpec | None:
        """The run spec baked into the image, or None for images packed before run specs existed."""
        return run_spec_from_labels(self.labels)


def read_archive_image(
    *, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None
) -> ArchiveImage:
    """The image config of the docker-archive ``archive`` (a ``.tar``, a ``.tar.zst``, or the first part of
    either). Raises ArtifactInvalidError when it is not a docker-archive or its JSON is damaged."""
    archive = archive_of(archive)
    parts = archive_parts(archive)
    with parts[0].open("rb") as first:
        compressed = first.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC
    try:
        if compressed:
            manifest, configs = _scan_stream(archive, on_event=on_event, cancel=cancel)
        else:
            manifest, configs = _scan_seekable(parts, archive=archive, cancel=cancel)
    except tarfile.TarError as error:
        raise _not_an_archive(archive, f"its tar structure is damaged ({error})") from error
    entry = _manifest_entry(manifest, archive=archive)
    config_name = entry["Config"]
    if config_name not in configs:
        raise _not_an_archive(archive, f"the image config {config_name} that manifest.json names is missing")
    return ArchiveImage(
        repo_tags=tuple(entry.get("RepoTags") or ()),
        labels=MappingProxyType(_labels(configs[config_name], archive=archive)),
        config_name=config_name,
        compressed=compressed,
    )


def archive_run_spec(*, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None) -> RunSpec:
    """The run spec baked into the archive's image; ArtifactInvalidError when the image has none."""
    spec = read_archive_image(archive=archive, on_event=on_event, cancel=cancel).run_spec
    if spec is None:
        raise ArtifactInvalidError(
            f"{archive_of(archive).name} carries no run spec (label io.ezrunner.run-spec): it was packed by an "
            "older EZ Runner or is not an EZ Runner image.",
            hint="Pack the model again with this EZ Runner version, or generate from the model reference instead.",
        )
    return spec


# READING THE TAR


class _PartsFile(io.RawIOBase):
    """The parts of a split archive (or one file) as one seekable, read-only file."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._starts: list[int] = []
        total = 0
        for path in self._paths:
            self._starts.append(total)
            total += path.stat().st_size
        self._size = total
        self._position = 0
        self._open: tuple[int, io.BufferedReader] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def _file(self, index: int) -> io.BufferedReader:
        if self._open is None or self._open[0] != index:
            if self._open is not None:
                self._open[1].close()
            self._open = (index, self._paths[index].open("rb"))
        return self._open[1]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._position < self._size:
            index = bisect.bisect_right(self._starts, self._position) - 1  # the last part starting at or before
            handle = self._file(index)
            handle.seek(self._position - self._starts[index])
            count = handle.readinto(view[done:])
            if not count:  # the part shrank since it was measured
                break
            done += count
            self._position += count
        return done

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
        super().close()


class _ChunksFile(io.RawIOBase):
    """An iterator of byte chunks as a forward-only file (what ``tarfile``'s stream mode reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, *, archive: Path) -> bytes:
    if member.size > JSON_MEMBER_MAX_BYTES:
        raise _not_an_archive(archive, f"{member.name} has {member.size} bytes, more than an image config holds")
    handle = tar.extractfile(member)
    if handle is None:
        raise _not_an_archive(archive, f"{member.name} is not a regular file")
    data = handle.read()
    if len(data) != member.size:
        raise _not_an_archive(archive, f"{member.name} is cut short")
    return data


def _scan_seekable(
    parts: Sequence[Path], *, archive: Path, cancel: Cancel | None
) -> tuple[object, dict[str, object]]:
    """manifest.json and the image config it names, from the tar headers and those two members only."""
    with _PartsFile(parts) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        members: dict[str, tarfile.TarInfo] = {}
        for member in tar:  # reads each header and seeks over the member's bytes
            raise_if_cancelled(cancel)
            if member.isfile():
                members[member.name] = member
        if MANIFEST_NAME not in members:
            raise _not_an_archive(archive, "it has no manifest.json")
        manifest = _json(_read_member(tar, members[MANIFEST_NAME], archive=archive), MANIFEST_NAME, archive=archive)
        configs: dict[str, object] = {}
        entry = _manifest_entry(manifest, archive=archive)
        config = members.get(entry["Config"])
        if config is not None:
            configs[config.name] = _json(_read_member(tar, config, archive=archive), config.name, archive=archive)
        return manifest, configs


def _scan_stream(
    archive: Path, *, on_event: EventSink, cancel: Cancel | None
) -> tuple[object, dict[str, object]]:
    """manifest.json and the image config it names, reading the decompressed stream once from the start.

    EZ Runner's writer and ``docker save`` put the config before manifest.json, whose name for it is known only
    then: every small JSON object that looks like an image config (it has ``rootfs``) is kept until then.
    """
    chunks = read_stream(archive, stage="check", on_event=on_event, cancel=cancel)
    configs: dict[str, object] = {}
    manifest: object = None
    wanted: str | None = None  # the config's name, once manifest.json has been read
    try:
        with tarfile.open(fileobj=_ChunksFile(chunks), mode="r|") as tar:
            for member in tar:
                if not member.isfile() or member.size > JSON_MEMBER_MAX_BYTES:
                    continue
                if member.name == MANIFEST_NAME:
                    manifest = _json(_read_member(tar, member, archive=archive), MANIFEST_NAME, archive=archive)
                    wanted = _manifest_entry(manifest, archive=archive)["Config"]
                elif wanted is None or member.name == wanted:
                    data = _read_member(tar, member, archive=archive)
                    if data[:1] != b"{":
                        continue
                    try:
                        value = json.loads(data)
                    except ValueError:
                        continue  # a small layer that happens to start with "{": not a config
                    if isinstance(value, dict) and "rootfs" in value:
                        configs[member.name] = value
                if wanted is not None and wanted in configs:
                    return manifest, {wanted: configs[wanted]}
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if manifest is None:
        raise _not_an_archive(archive, "it has no manifest.json")
    return manifest, configs


# INTERPRETING THE JSON


def _json(data: bytes, name: str, *, archive: Path) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise _not_an_archive(archive, f"{name} is not valid JSON ({error})") from error


def _manifest_entry(manifest: object, *, archive: Path) -> dict[str, Any]:
    """The manifest.json entry of the EZ Runner image (the one tagged ``ezrunner/…``), else the first."""
    if not isinstance(manifest, list) or not manifest:
        raise _not_an_archive(archive, "manifest.json is not a non-empty list of images")
    entries: list[dict[str, Any]] = []
    for entry in manifest:
        tags = entry.get("RepoTags") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("Config"), str)
            or not (tags is None or (isinstance(tags, list) and all(isinstance(t, str) for t in tags)))
        ):
            raise _not_an_archive(archive, "a manifest.json entry lacks its Config name or has malformed RepoTags")
        entries.append(entry)
    ours = [e for e in entries if any(t.startswith("ezrunner/") for t in e.get("RepoTags") or ())]
    return (ours or entries)[0]


def _labels(config: object, *, archive: Path) -> dict[str, str]:
    run_config = config.get("config") if isinstance(config, dict) else None
    labels = run_config.get("Labels") if isinstance(run_config, dict) else None
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise _not_an_archive(archive, "the image config's labels are not a mapping of strings")
    return dict(labels)


def _not_an_archive(archive: Path, why: str) -> ArtifactInvalidError:
    return ArtifactInvalidError(
        f"{archive.name} is not a readable image archive: {why}.",
        hint="Copy the archive again and compare its sha256 with the recorded one, or pack it again.",
    )


__all__ = ["JSON_MEMBER_MAX_BYTES", "MANIFEST_NAME", "ArchiveImage", "archive_run_spec", "read_archive_image"]


# A SUMMARY FOR `ezrunner inspect ARCHIVE`


@dataclass(frozen=True)
class ArchiveSummary:
    """What an archive holds, from its image config and the SBOM beside it (nothing is loaded)."""

    archive: Path
    repo_tags: tuple[str, ...]
    model: str | None  # repo id
    source: str | None  # hub: hf, ms, local
    commit: str | None
    engine: str | None
    plan: Mapping[str, Any]  # the io.ezrunner.plan label: TP size, context, dtype, target …
    profiles: tuple[str, ...]  # the run spec's profile names (default first)
    sbom: SbomCounts | None  # None when NAME.cdx.json is not beside the archive
    signed: bool  # NAME.sha256.sig lies beside it (`ezrunner verify` checks it)


def summarize_archive(
    *, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None
) -> ArchiveSummary:
    """The summary of ``archive`` (a ``.tar``, ``.tar.zst``, or the first part of a split one)."""
    archive = archive_of(archive)
    image = read_archive_image(archive=archive, on_event=on_event, cancel=cancel)
    labels = image.labels
    try:
        plan_label = json.loads(labels.get("io.ezrunner.plan", "{}"))
    except ValueError:
        plan_label = {}
    spec = image.run_spec
    profiles: tuple[str, ...] = ()
    if spec is not None:
        profiles = (spec.default_profile, *(p.name for p in spec.profiles if p.name != spec.default_profile))
    return ArchiveSummary(
        archive=archive,
        repo_tags=image.repo_tags,
        model=labels.get("io.ezrunner.model"),
        source=labels.get("io.ezrunner.model.source"),
        commit=labels.get("io.ezrunner.model.commit"),
        engine=labels.get("io.ezrunner.engine"),
        plan=MappingProxyType(plan_label if isinstance(plan_label, dict) else {}),
        profiles=profiles,
        sbom=_sbom_counts(sbom_path(archive)),
        signed=signature_path(archive).is_file(),
    )


def _sbom_counts(path: Path) -> SbomCounts | None:
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ArtifactInvalidError(
            f"{path.name} is not a readable SBOM ({error}).",
            hint="Copy it again from the machine that packed the archive (it lies beside the archive).",
        ) from error
    return counts(document) if isinstance(document, dict) else None

"""Reading an archive back: its plain bytes (one file or its parts, zstd or not), and its checksum check.

``read_stream`` is what ``core.docker.api.load_image`` uploads, so archives load even on engines whose
``docker load`` predates zstd (Docker 20.10); ``verify_archive`` is what ``ezrunner run`` checks first.
A split archive is the parts its ``NAME.parts.sha256`` lists (``core.archive.names.archive_parts``):
both read exactly those, so a stray next-numbered file beside them is never appended.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.archive.compression import ZSTD_MAGIC, zstd_reader
from core.archive.names import archive_of, archive_parts, checksum_path, read_parts_list
from core.errors import ArtifactInvalidError
from core.events import Cancel, Event, EventSink, Stage, ignore_events, raise_if_cancelled

CHUNK_BYTES = 8 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _ConcatenatedReader(io.RawIOBase):
    """The parts of an archive read one after the other, as one file."""

    def __init__(self, paths: Sequence[Path], on_read: Callable[[int], None]) -> None:
        self._paths = list(paths)
        self._file: io.BufferedReader | None = None
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")  # noqa: SIM115 - closed below or in close()
            count = self._file.readinto(buffer)
            if count:
                self._on_read(count)
                return count
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def read_stream(
    path: Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    stage: Stage = "load",
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> Iterator[bytes]:
    """The plain bytes of an archive written by ``core.archive.writer``: one file or its parts, zstd or not.

    Events count bytes read from disk against the files' total size.
    """
    parts = archive_parts(path)
    total = sum(part.stat().st_size for part in parts)
    with parts[0].open("rb") as first:
        compressed = first.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC
    done = 0

    def counted(count: int) -> None:
        nonlocal done
        done += count
        on_event(Event(stage=stage, done=done, total=total, unit="B", file=parts[0].name))

    raw = _ConcatenatedReader(parts, counted)
    source: Any = zstd_reader(raw) if compressed else raw
    try:
        while True:
            raise_if_cancelled(cancel)
            try:
                chunk = source.read(chunk_bytes)
            except Exception as error:
                if type(error).__name__ == "ZstdError":
                    raise ArtifactInvalidError(
                        f"{path} is not a valid zstd archive ({_short(error)}).",
                        hint="Copy the archive again and compare its sha256 with the recorded one.",
                    ) from error
                raise
            if not chunk:
                return
            yield chunk
    finally:
        source.close()


def verify_archive(
    *, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None
) -> str:
    """Check the archive (or its parts) against ``ARCHIVE.sha256`` beside it; return the digest.

    ``archive`` may also name the first part of a split archive; each part is also checked against its
    line in ``ARCHIVE.parts.sha256``, so that a damaged copy names the part to copy again.
    """
    archive = archive_of(archive)
    parts = archive_parts(archive)
    checksum_file = checksum_path(archive)
    if not checksum_file.is_file():
        raise ArtifactInvalidError(
            f"{checksum_file.name} is missing beside {archive.name}, so the archive cannot be verified.",
            hint="Copy the .sha256 file that was written with the archive.",
        )
    words = checksum_file.read_text(encoding="utf-8", errors="replace").split()
    expected = words[0].lower() if words else ""
    if not _SHA256.fullmatch(expected):
        raise ArtifactInvalidError(
            f"{checksum_file.name} does not hold a sha256 checksum.",
            hint="Copy the .sha256 file that was written with the archive again.",
        )
    part_sums = dict(read_parts_list(archive)) if parts != [archive] else {}
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    damaged: list[str] = []
    done = 0
    # The part's hash in a second thread while this one hashes the whole (hashlib releases the GIL on
    # large updates): checking both costs no more time than checking one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="part-sha256") as pool:
        for part in parts:
            part_digest = hashlib.sha256()
            with part.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    raise_if_cancelled(cancel, message="Cancelled while verifying the archive.")
                    hashed = pool.submit(part_digest.update, chunk) if part_sums else None
                    digest.update(chunk)
                    if hashed is not None:
                        hashed.result()
                    done += len(chunk)
                    on_event(Event(stage="verify", done=done, total=total, unit="B", file=part.name))
            if part_sums and part_digest.hexdigest() != part_sums[part]:
                damaged.append(part.name)
    if damaged:
        raise ArtifactInvalidError(
            f"{len(damaged)} part(s) of {archive.name} do not match their checksums: {', '.join(damaged[:5])}"
            f"{' …' if len(damaged) > 5 else ''}: the copy is damaged or incomplete.",
            hint="Copy those parts again from the machine that built the archive.",
        )
    if digest.hexdigest() != expected:
        raise ArtifactInvalidError(
            f"{archive.name} does not match its checksum (expected {expected[:12]}…, got "
            f"{digest.hexdigest()[:12]}…): the copy is damaged or incomplete.",
            hint="Copy the archive again from the machine that built it.",
        )
    return expected

"""The one compression type of an archive, and zstd: its level, its magic bytes, the optional package."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Literal, get_args

from core.errors import ExportFailedError, InvalidOptionsError

#: What ``--compress`` takes and what load.sh is rendered for. "none" is the plain tar ``docker load`` reads.
Compression = Literal["none", "zstd"]
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)

#: zstd level 3 (zstd's own default) on all cores: fast enough that the disk stays the bottleneck;
#: bf16 weights barely compress at any level.
ZSTD_LEVEL = 3
#: The frame header carries no content size (the stream is compressed before its end is known, and a
#: size only some writers know would make two archives of the same tar differ), no dictionary id and no
#: checksum (the archive's sha256 sidecar covers integrity), so it is the same few bytes for every archive.
ZSTD_FRAME_FLAGS = {"write_content_size": False, "write_dict_id": False, "write_checksum": False}
#: The first four bytes of every zstd frame (RFC 8878, section 3.1.1).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_compression(compress: str) -> Compression:
    """``compress`` as a ``Compression``, or InvalidOptionsError naming the ones there are."""
    for known in COMPRESSIONS:
        if compress == known:
            return known
    raise InvalidOptionsError(f"Unknown compression {compress!r}.", hint="Use 'none' or 'zstd'.")


def zstandard() -> ModuleType:
    """The ``zstandard`` package, imported on first use: plain archives do not need it."""
    try:
        import zstandard as module
    except ImportError as error:
        raise ExportFailedError(
            "zstd compression needs the `zstandard` Python package, which is not installed.",
            hint="Run `pip install zstandard`, or pack without compression.",
        ) from error
    return module


def zstd_threads() -> int:
    """Compression threads: one per core, and never 0, which is zstd's single-threaded mode."""
    return max(1, os.cpu_count() or 1)


def zstd_compressor(*, threads: int | None = None) -> Any:
    """A streaming compressor (``compress(data)`` then ``flush()``) at ``ZSTD_LEVEL``, one thread per core.

    Its output depends only on the bytes fed, not on how they are split into calls, how many threads
    compress them or how those threads are scheduled: multi-threaded zstd cuts the stream into jobs of
    a size set by the level alone and writes them in order, and its output is the same for any number
    of threads >= 1 (zstd maintainers in https://github.com/facebook/zstd/issues/2238; the one-shot
    exception of issue #2327 cannot happen in streaming use). Single-threaded mode (threads=0) writes
    other, equally valid bytes: ``zstd_threads`` never asks for it, so machines with any core count
    write the same archive. tests/unit/test_archive_reproducible.py checks all of this.
    """
    module = zstandard()
    return module.ZstdCompressor(
        level=ZSTD_LEVEL, threads=threads if threads is not None else zstd_threads(), **ZSTD_FRAME_FLAGS
    ).compressobj()


def zstd_reader(raw: Any) -> Any:
    """A file object giving the plain bytes of the zstd file object ``raw``, across concatenated frames."""
    return zstandard().ZstdDecompressor().stream_reader(raw, read_across_frames=True)

"""The one compression type of an archive, and zstd: its level, its magic bytes, the optional package."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal, get_args

from core.errors import ExportFailedError, InvalidOptionsError

#: What ``--compress`` takes and what load.sh is rendered for. "none" is the plain tar ``docker load`` reads.
Compression = Literal["none", "zstd"]
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)

#: zstd level 3 (zstd's own default) on all cores: fast enough that the disk stays the bottleneck;
#: bf16 weights barely compress at any level.
ZSTD_LEVEL = 3
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


def zstd_compressor() -> Any:
    """A streaming compressor (``compress(data)`` then ``flush()``) at ``ZSTD_LEVEL`` on all cores."""
    return zstandard().ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compressobj()


def zstd_reader(raw: Any) -> Any:
    """A file object giving the plain bytes of the zstd file object ``raw``, across concatenated frames."""
    return zstandard().ZstdDecompressor().stream_reader(raw, read_across_frames=True)

"""A local, content-addressed cache of runtime-image layers, so the fast pack path never re-saves them.

The runtime image (engine, Python, CUDA …: the Dockerfile minus the model COPY lines) is the same for
many packs. The first pack that needs it runs ONE ``docker save`` of it and keeps each layer tar here,
named by its diff_id (the sha256 of the uncompressed layer tar), plus a small record per image id.
Later packs read the layers straight from here. Layout::

    <cache_dir>/blobs/sha256/<hex>      uncompressed layer tars, shared between runtime images
    <cache_dir>/images/<image hex>.json {"config": "<config JSON text>", "layers": [{"diff_id", "size"}]}
    <cache_dir>/locks/<image hex>.lock  held while one process fills the cache for that image
    <cache_dir>/tmp/                    files being written; renamed into place when complete

Every file appears by an atomic rename once complete (blobs first, the image record last), so readers
need no lock, and a crash leaves at most stray files under ``tmp/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DiskSpaceError, ExportFailedError, LayerCacheUnusableError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled

_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_SMALL_BLOB = 1 << 20  # configs and manifests are far smaller; layers rarely are
_COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class RuntimeLayers:
    """An image's config and its layer tars, in order, as the archive writer needs them."""

    image_id: str  # "sha256:<hex>" = sha256 of config_bytes
    config_bytes: bytes  # the image config JSON exactly as the engine stored it
    diff_ids: tuple[str, ...]  # "sha256:<hex>", bottom layer first
    blobs: tuple[Path, ...]  # uncompressed layer tar for each diff_id
    sizes: tuple[int, ...]  # bytes of each blob

    @property
    def config(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.config_bytes)
        return parsed

    @property
    def size(self) -> int:
        return sum(self.sizes)


def _hex(image_id: str) -> str:
    if not _IMAGE_ID.match(image_id):
        raise ValueError(f"expected a full image id 'sha256:<64 hex>', got {image_id!r}")
    return image_id.removeprefix("sha256:")


def _blob_path(cache_dir: Path, diff_id: str) -> Path:
    return cache_dir / "blobs" / "sha256" / diff_id.removeprefix("sha256:")


def cached_runtime_layers(*, image_id: str, cache_dir: Path) -> RuntimeLayers | None:
    """The cached layers of ``image_id``, or None when they are not (all) in the cache.

    Reused blobs are checked by size only, not re-hashed: hashing the whole runtime image (GBs for a
    CUDA image) on every pack would cost what the cache saves. Blobs were hashed when written and appear
    only by atomic rename, so a wrong one means the disk or someone changed it; ``docker load`` on the
    target re-hashes every layer against its diff_id anyway, and ``verify_runtime_layers`` re-hashes on
    demand.
    """
    record_path = cache_dir / "images" / f"{_hex(image_id)}.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config_bytes = record["config"].encode()
    diff_ids = tuple(layer["diff_id"] for layer in record["layers"])
    sizes = tuple(int(layer["size"]) for layer in record["layers"])
    blobs = tuple(_blob_path(cache_dir, d) for d in diff_ids)
    for blob, size in zip(blobs, sizes, strict=True):
        try:
            if blob.stat().st_size != size:
                return None
        except OSError:
            return None
    return RuntimeLayers(image_id=image_id, config_bytes=config_bytes, diff_ids=diff_ids, blobs=blobs, sizes=sizes)


def verify_runtime_layers(*, layers: RuntimeLayers) -> list[Path]:
    """Re-hash every cached blob; return those whose sha256 is not their diff_id (delete them to refill)."""
    bad = []
    for blob, diff_id in zip(layers.blobs, layers.diff_ids, strict=True):
        digest = hashlib.sha256()
        with open(blob, "rb", buffering=0) as f:
            while chunk := f.read(_COPY_CHUNK):
                digest.update(chunk)
        if "sha256:" + digest.hexdigest() != diff_id:
            bad.append(blob)
    return bad


def runtime_layers(
    *,
    client: Any,
    image_id: str,
    cache_dir: Path,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> RuntimeLayers:
    """The layers of the local image ``image_id`` ("sha256:<hex>"), from the cache, filling it if needed.

    ``client`` is a ``docker.DockerClient``; it is used only when the cache lacks the image (one
    ``docker save``). Safe to call from several processes at once: one fills, the others wait for it.
    """
    hex_id = _hex(image_id)
    found = cached_runtime_layers(image_id=image_id, cache_dir=cache_dir)
    if found is not None:
        return found
    for sub in ("blobs/sha256", "images", "locks", "tmp"):
        (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "locks" / f"{hex_id}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be filling it right now: wait, then re-check
        found = cached_runtime_layers(image_id=image_id, cache_dir=cache_dir)
        if found is not None:
            return found
        _fill(client=client, image_id=image_id, cache_dir=cache_dir, on_event=on_event, cancel=cancel)
    found = cached_runtime_layers(image_id=image_id, cache_dir=cache_dir)
    if found is None:  # pragma: no cover - _fill either writes a complete record or raises
        raise ExportFailedError(
            f"The layer cache at {cache_dir} lost the layers of {image_id}.",
            hint="Check that nothing else cleans that folder, then try again.",
        )
    return found


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (docker-py's streamed ``docker save``)."""

    def __init__(self, chunks: Iterable[bytes], on_read: Callable[[int], None], cancel: Cancel | None) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._on_read = on_read
        self._cancel = cancel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            raise_if_cancelled(
                self._cancel, message="The pack was cancelled; no partial files were kept.",
                hint="Start it again when ready.",
            )
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
            self._on_read(len(chunk))
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _fill(*, client: Any, image_id: str, cache_dir: Path, on_event: EventSink, cancel: Cancel | None) -> None:
    import docker.errors  # only this step talks to the engine

    try:
        approx_total = int(client.api.inspect_image(image_id).get("Size") or 0) or None
        chunks = client.api.get_image(image_id, chunk_size=_COPY_CHUNK)
    except docker.errors.ImageNotFound as error:
        raise ExportFailedError(
            f"The runtime image {image_id} is not in the local Docker engine.",
            hint="Build it again (pack does this), then retry.",
        ) from error
    except docker.errors.APIError as error:
        raise ExportFailedError(
            f"Docker could not save the runtime image {image_id}: {error.explanation}.",
            hint="Check `docker info` and free disk space, then try again.",
        ) from error
    done = 0
    message = "Caching the runtime image layers (one docker save per runtime image)"

    def counted(count: int) -> None:
        nonlocal done
        done += count
        on_event(Event(stage="export", done=done, total=approx_total, unit="B", message=message))

    on_event(Event(stage="export", done=0, total=approx_total, unit="B", message=message))
    tmp_dir = cache_dir / "tmp"
    written: dict[str, int] = {}  # diff_id -> size
    config_text: str | None = None
    manifest: list[dict[str, Any]] | None = None
    try:
        reader = io.BufferedReader(_ChunkReader(chunks, counted, cancel), buffer_size=_COPY_CHUNK)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_COPY_CHUNK) as tar:
            for member in tar:
                if not member.isfile():
                    continue  # folders, and the symlinks `docker save` writes for a layer used twice
                source = tar.extractfile(member)
                assert source is not None
                if member.name.endswith("/layer.tar"):  # Docker ≤ 24: <id>/layer.tar
                    diff_id, size = _store_blob(source, cache_dir=cache_dir, tmp_dir=tmp_dir)
                    written[diff_id] = size
                elif member.name == "manifest.json":
                    manifest = json.loads(source.read())
                elif member.name.endswith(".json") and "/" not in member.name:
                    text = source.read()
                    if hashlib.sha256(text).hexdigest() == _hex(image_id):
                        config_text = text.decode()
                elif member.name.startswith("blobs/sha256/"):
                    # Docker ≥ 25 writes an OCI layout: the config, manifests and (on the classic store,
                    # uncompressed) layers are all blobs named by digest. Small JSON blobs are not layers.
                    if member.size <= _SMALL_BLOB:
                        body = source.read()
                        if body[:1] == b"{":
                            if member.name.rsplit("/", 1)[-1] == _hex(image_id):
                                config_text = body.decode()
                            continue
                        source = io.BytesIO(body)
                    diff_id, size = _store_blob(source, cache_dir=cache_dir, tmp_dir=tmp_dir)
                    written[diff_id] = size
    except OSError as error:
        if error.errno == 28:
            raise DiskSpaceError(
                f"The disk holding the layer cache {cache_dir} is full.",
                hint="Free some space (or remove old entries of that folder), then retry.",
            ) from error
        raise
    except tarfile.TarError as error:
        raise ExportFailedError(
            f"`docker save` of {image_id} gave an unreadable archive: {error}.",
            hint="Check `docker info`, then try again.",
        ) from error
    finally:
        with contextlib.suppress(Exception):
            chunks.close()
    if config_text is None or manifest is None:
        raise LayerCacheUnusableError(
            f"`docker save` of {image_id} had no config or manifest.",
            hint="Check that the Docker engine is healthy, then try again.",
        )
    diff_ids = json.loads(config_text)["rootfs"]["diff_ids"]
    missing = [d for d in diff_ids if d not in written and not _blob_path(cache_dir, d).is_file()]
    if missing:
        raise LayerCacheUnusableError(
            f"`docker save` of {image_id} did not give layers matching its config ({len(missing)} missing).",
            hint="This engine may store layers compressed (containerd image store); the docker-build export "
            "path works there.",
        )
    record = {
        "config": config_text,
        "layers": [{"diff_id": d, "size": written.get(d) or _blob_path(cache_dir, d).stat().st_size} for d in diff_ids],
    }
    _atomic_write(cache_dir / "images" / f"{_hex(image_id)}.json", json.dumps(record).encode(), tmp_dir)


def _store_blob(source: Any, *, cache_dir: Path, tmp_dir: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        diff_id = "sha256:" + digest.hexdigest()
        os.replace(tmp_name, _blob_path(cache_dir, diff_id))  # same content if it was already there
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return diff_id, size


def _atomic_write(path: Path, body: bytes, tmp_dir: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="record-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def prune_layer_cache(*, cache_dir: Path, keep_image_ids: Iterable[str]) -> int:
    """Forget every cached image but ``keep_image_ids`` and delete the blobs no kept image uses.

    Returns the bytes freed. Run it when no pack is running: a fill in progress writes its blobs before
    its record, and this would delete them (the next pack then saves that image again; nothing breaks).
    """
    keep = {_hex(image_id) for image_id in keep_image_ids}
    used: set[str] = set()
    for record_path in (cache_dir / "images").glob("*.json"):
        if record_path.stem not in keep:
            record_path.unlink(missing_ok=True)
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.update(
                layer["diff_id"].removeprefix("sha256:")
                for layer in json.loads(record_path.read_text(encoding="utf-8"))["layers"]
            )
    freed = 0
    for blob in (cache_dir / "blobs" / "sha256").glob("*"):
        if blob.name not in used:
            freed += blob.stat().st_size
            blob.unlink(missing_ok=True)
    return freed

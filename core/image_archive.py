"""Write a ``docker load``-able image archive in one pass over the model files.

The fast pack path: the engine builds only the runtime image (the Dockerfile minus the model COPY lines,
cached, seconds); this module then writes the final docker-archive tar itself: the runtime layers from
``core.layer_cache``, then one layer per ``plan_layers`` layer streamed straight from the model files,
then the image config and ``manifest.json``. Each weight byte is read once and written once; the layer
digests (diff_ids) and the archive's sha256 are computed on the way, in hashing threads that overlap the
I/O. The exact archive size is known before the first byte is written, from the tar headers alone.

What the model layers hold mirrors what ``COPY layers/<layer>/ <model_root>/`` records with the classic
builder: ``model_root`` and its parents 0755, nested folders and files with their source modes, all
owned by root, files hard-linked to each other inside one layer kept as hard links. Times are fixed
(``mtime``), so an unchanged layer of a new model revision gets the same diff_id and ``docker load`` on
the target reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import CancelledError, DiskSpaceError, ExportFailedError, InvalidOptionsError
from core.events import Event, EventSink, ignore_events
from core.layer_cache import RuntimeLayers
from core.layers import WeightLayer

Compression = Literal["none", "zstd"]

BLOCK = 512
#: Read size for file data; a few buffers in flight keep the hashing threads busy while the next one is read.
CHUNK_BYTES = 4 << 20
BUFFERS_IN_FLIGHT = 8
#: zstd's own default level, on all cores: fast enough that the disk stays the bottleneck.
ZSTD_LEVEL = 3
#: A progress event at most this often (bytes of the tar stream).
EVENT_EVERY_BYTES = 64 << 20
#: COPY creates the model folder and its parents with this mode.
PARENT_DIR_MODE = 0o755
_PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


# PUBLIC TYPES


@dataclass(frozen=True)
class ArchiveFile:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ArchiveResult:
    """What ``write_image_archive`` left on disk."""

    files: tuple[ArchiveFile, ...]  # the archive, or its parts NAME.part000 … in order
    sha256: str  # of all the bytes on disk, parts concatenated in order (what `sha256sum` of `cat` gives)
    tar_size: int  # bytes of the (uncompressed) tar stream; equals exact_archive_size(...)
    image_id: str  # "sha256:<hex>": the id `docker load` will report
    repo_tag: str
    model_diff_ids: tuple[str, ...]  # one per model layer, in order

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def size(self) -> int:
        """Bytes on disk, all parts together (smaller than ``tar_size`` when compressed)."""
        return sum(f.size for f in self.files)

    @property
    def part_sha256(self) -> tuple[str, ...]:
        return tuple(f.sha256 for f in self.files)


@dataclass(frozen=True)
class ModelLayerSource:
    """One model layer and the folder holding its files by their relative paths (symlinks are followed)."""

    layer: WeightLayer
    folder: Path


# PLANNING: EVERY HEADER AND SIZE, BEFORE ANY DATA IS READ


@dataclass(frozen=True)
class _Member:
    header: bytes  # tar header(s), PAX where needed
    source: Path | None = None  # file whose bytes follow the header
    size: int = 0  # data bytes (0 for folders and hard links)

    @property
    def stored_size(self) -> int:
        return len(self.header) + _padded(self.size)


@dataclass(frozen=True)
class _LayerPlan:
    name: str
    member_name: str  # path of this layer's tar inside the archive
    members: tuple[_Member, ...]
    created_by: str  # history text, with "{digest}" where the layer digest goes

    @property
    def tar_size(self) -> int:
        return sum(m.stored_size for m in self.members) + 2 * BLOCK


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _header(name: str, *, kind: bytes, size: int = 0, mode: int, mtime: int, linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _plan_model_layer(source: ModelLayerSource, *, model_root: str, mtime: int) -> _LayerPlan:
    root = model_root.strip("/")
    parts = root.split("/")
    members: list[_Member] = []
    for depth in range(1, len(parts)):
        members.append(
            _Member(_header("/".join(parts[:depth]), kind=tarfile.DIRTYPE, mode=PARENT_DIR_MODE, mtime=mtime))
        )
    folder = source.folder
    # COPY creates the destination folder 0755 whatever the source folder's mode (checked on 20.10).
    members.append(_Member(_header(root, kind=tarfile.DIRTYPE, mode=PARENT_DIR_MODE, mtime=mtime)))
    seen_dirs: set[str] = set()
    seen_inodes: dict[tuple[int, int], str] = {}
    for model_file in sorted(source.layer.files, key=lambda f: f.path):
        rel = model_file.path.strip("/")
        if not rel or any(p in ("", ".", "..") for p in rel.split("/")):
            raise InvalidOptionsError(
                f"The model file path {model_file.path!r} is not a plain relative path.",
                hint="Rename the file in the model folder, then pack again.",
            )
        rel_parts = rel.split("/")
        for depth in range(1, len(rel_parts)):
            sub = "/".join(rel_parts[:depth])
            if sub not in seen_dirs:
                seen_dirs.add(sub)
                members.append(
                    _Member(
                        _header(f"{root}/{sub}", kind=tarfile.DIRTYPE, mode=_mode(folder / sub), mtime=mtime)
                    )
                )
        path = folder / rel
        try:
            st = path.stat()
        except OSError as error:
            raise ExportFailedError(
                f"The model file {path} cannot be read: {error.strerror or error}.",
                hint="Download the model again (the hub cache may have been cleaned), then pack again.",
            ) from error
        if model_file.size != st.st_size:
            raise ExportFailedError(
                f"The model file {path} has {st.st_size} bytes, the listing says {model_file.size}.",
                hint="The download is incomplete or the file changed: download the model again, then pack.",
            )
        name = f"{root}/{rel}"
        inode = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and inode in seen_inodes:
            # COPY keeps hard links between files of one source folder; so do we.
            members.append(
                _Member(
                    _header(
                        name,
                        kind=tarfile.LNKTYPE,
                        mode=st.st_mode & 0o7777,
                        mtime=mtime,
                        linkname=seen_inodes[inode],
                    )
                )
            )
            continue
        seen_inodes[inode] = name
        members.append(
            _Member(
                _header(name, kind=tarfile.REGTYPE, size=st.st_size, mode=st.st_mode & 0o7777, mtime=mtime),
                source=path,
                size=st.st_size,
            )
        )
    return _LayerPlan(
        name=source.layer.name,
        member_name=f"{source.layer.name}/layer.tar",
        members=tuple(members),
        created_by=f"/bin/sh -c #(nop) COPY dir:{{digest}} in {model_root.rstrip('/')}/ ",
    )


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError as error:
        raise ExportFailedError(
            f"The model folder {path} cannot be read: {error.strerror or error}.",
            hint="Download the model again, then pack again.",
        ) from error


def _timestamp(created: datetime) -> str:
    # Fixed width (seconds, "Z"), so the config's length does not depend on the moment.
    return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image_config(
    *,
    runtime: RuntimeLayers,
    plans: Sequence[_LayerPlan],
    diff_ids: Sequence[str],
    created: str,
    labels: Mapping[str, str] | None,
) -> bytes:
    config: dict[str, Any] = json.loads(runtime.config_bytes)
    config["created"] = created
    if labels:
        run_config = config.setdefault("config", {})
        run_config["Labels"] = {**(run_config.get("Labels") or {}), **labels}
    config["rootfs"] = {"type": "layers", "diff_ids": [*runtime.diff_ids, *diff_ids]}
    history: list[dict[str, Any]] = list(config.get("history") or [])
    # Our layers go where the Dockerfile's COPY lines are: after the runtime's last layer, before the
    # metadata-only steps (USER, EXPOSE, HEALTHCHECK, ENTRYPOINT, CMD, LABEL) that follow it.
    insert_at = max((i + 1 for i, h in enumerate(history) if not h.get("empty_layer")), default=len(history))
    ours = [
        {
            "created": created,
            "created_by": plan.created_by.replace("{digest}", digest.removeprefix("sha256:")),
        }
        for plan, digest in zip(plans, diff_ids, strict=True)
    ]
    config["history"] = [*history[:insert_at], *ours, *history[insert_at:]]
    return json.dumps(config, separators=(",", ":"), sort_keys=False).encode()


def _manifest(*, config_name: str, repo_tag: str, layer_names: Sequence[str]) -> bytes:
    return json.dumps(
        [{"Config": config_name, "RepoTags": [repo_tag], "Layers": list(layer_names)}], separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class _ArchivePlan:
    runtime: RuntimeLayers
    layers: tuple[_LayerPlan, ...]
    repo_tag: str
    created: str
    labels: Mapping[str, str] | None
    mtime: int

    def runtime_member(self, index: int) -> str:
        return f"{self.runtime.diff_ids[index].removeprefix('sha256:')}/layer.tar"

    def config(self, diff_ids: Sequence[str]) -> bytes:
        return _image_config(
            runtime=self.runtime,
            plans=self.layers,
            diff_ids=diff_ids,
            created=self.created,
            labels=self.labels,
        )

    def manifest(self, config_name: str) -> bytes:
        names = [self.runtime_member(i) for i in range(len(self.runtime.diff_ids))]
        return _manifest(
            config_name=config_name,
            repo_tag=self.repo_tag,
            layer_names=[*names, *(p.member_name for p in self.layers)],
        )

    def file_header(self, name: str, size: int) -> bytes:
        return _header(name, kind=tarfile.REGTYPE, size=size, mode=0o644, mtime=self.mtime)

    def tar_size(self) -> int:
        """Exact: every length below is fixed once the headers are planned (digests have a fixed width)."""
        total = 0
        for i, size in enumerate(self.runtime.sizes):
            total += len(self.file_header(self.runtime_member(i), size)) + _padded(size)
        for plan in self.layers:
            total += len(self.file_header(plan.member_name, plan.tar_size)) + _padded(plan.tar_size)
        config = self.config([_PLACEHOLDER_DIGEST] * len(self.layers))
        config_name = "0" * 64 + ".json"
        total += len(self.file_header(config_name, len(config))) + _padded(len(config))
        manifest = self.manifest(config_name)
        total += len(self.file_header("manifest.json", len(manifest))) + _padded(len(manifest))
        return total + 2 * BLOCK


def _normalise_tag(repo_tag: str) -> str:
    name, _, tag = repo_tag.rpartition(":")
    if not name or "/" in tag:  # no tag given: `docker load` refuses a bare name (needs NAME:TAG)
        return f"{repo_tag}:latest"
    return repo_tag


def _plan(
    *,
    runtime: RuntimeLayers,
    model_root: str,
    layers: Sequence[ModelLayerSource],
    repo_tag: str,
    labels: Mapping[str, str] | None,
    created: datetime | None,
    mtime: int,
) -> _ArchivePlan:
    if not model_root.startswith("/") or model_root.rstrip("/") == "":
        raise InvalidOptionsError(
            f"The model folder in the image must be absolute, not {model_root!r}.",
            hint="Use a path such as /models/<name>.",
        )
    names = [s.layer.name for s in layers]
    if len(set(names)) != len(names):
        raise InvalidOptionsError(
            f"Model layer names must be unique, got {names}.",
            hint="Group the files with core.layers.plan_layers.",
        )
    plans = tuple(_plan_model_layer(s, model_root=model_root, mtime=mtime) for s in layers)
    return _ArchivePlan(
        runtime=runtime,
        layers=plans,
        repo_tag=_normalise_tag(repo_tag),
        created=_timestamp(created or datetime.now(UTC)),
        labels=labels,
        mtime=mtime,
    )


def exact_archive_size(
    *,
    runtime: RuntimeLayers,
    model_root: str,
    layers: Sequence[ModelLayerSource],
    repo_tag: str,
    labels: Mapping[str, str] | None = None,
    mtime: int = 0,
) -> int:
    """Bytes of the tar ``write_image_archive`` will write with the same arguments (before compression).

    Reads only file metadata (stat), never file data.
    """
    return _plan(
        runtime=runtime,
        model_root=model_root,
        layers=layers,
        repo_tag=repo_tag,
        labels=labels,
        created=None,
        mtime=mtime,
    ).tar_size()


# WRITING: ONE READ, ONE WRITE, HASHES IN THREADS


class _Chunk:
    """Bytes handed to several consumers; the buffer goes back to the pool when the last one is done."""

    __slots__ = ("_lock", "_pending", "_pool", "_slot", "view")

    def __init__(self, view: memoryview, slot: int | None = None, pool: queue.SimpleQueue[int] | None = None):
        self.view = view
        self._slot = slot
        self._pool = pool
        self._pending = 1
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            self._pending += 1

    def release(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last and self._pool is not None and self._slot is not None:
            self._pool.put(self._slot)


class _Hasher:
    """A sha256 fed from a queue by its own thread (hashlib releases the GIL on large updates)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[memoryview, _Chunk] | tuple[None, queue.SimpleQueue[str]] | None]
        self._queue = queue.SimpleQueue()
        self._hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            view, token = item
            if view is None:
                assert isinstance(token, queue.SimpleQueue)
                token.put(self._hash.hexdigest())
                self._hash = hashlib.sha256()
                continue
            assert isinstance(token, _Chunk)
            try:
                self._hash.update(view)
            except BaseException as error:  # pragma: no cover - hashing memory does not fail
                self._error = error
            finally:
                token.release()

    def feed(self, view: memoryview, chunk: _Chunk) -> None:
        chunk.retain()
        self._queue.put((view, chunk))

    def digest(self) -> str:
        """The hex digest of everything fed since the last call; starts a new hash."""
        answer: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._queue.put((None, answer))
        return answer.get()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_path(out: Path, index: int) -> Path:
    """Name of part ``index`` of a split archive (the same scheme as ``core.docker_io.part_path``)."""
    return out.with_name(f"{out.name}.part{index:03d}")


class _Output:
    """The bytes on disk: optional zstd, optional split into parts, ``.partial`` names renamed at the end."""

    def __init__(self, out: Path, *, compress: Compression, split_bytes: int | None) -> None:
        self.out = out
        self.split_bytes = split_bytes
        self._partials: list[Path] = []
        self._part_hashes: list[str] = []
        self._part_sizes: list[int] = []
        self._fd: int | None = None
        self._in_part = 0
        self._part_hasher = _Hasher("archive-part-sha256")
        self._whole_hasher = _Hasher("archive-sha256") if split_bytes else None
        self._compressor: Any = None
        if compress == "zstd":
            try:
                import zstandard
            except ImportError as error:
                raise ExportFailedError(
                    "zstd compression needs the `zstandard` Python package, which is not installed.",
                    hint="Run `pip install zstandard`, or pack without compression.",
                ) from error
            self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compressobj()

    def _final(self, index: int) -> Path:
        return part_path(self.out, index) if self.split_bytes else self.out

    def _open_next(self) -> None:
        self._close_current()
        final = self._final(len(self._partials))
        partial = final.with_name(final.name + ".partial")
        self._partials.append(partial)
        self._fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._in_part = 0

    def _close_current(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._part_hashes.append(self._part_hasher.digest())
            self._part_sizes.append(self._in_part)

    def write(self, chunk: _Chunk) -> None:
        if self._compressor is not None:
            compressed = self._compressor.compress(chunk.view)
            if compressed:
                self._write_raw(_Chunk(memoryview(compressed)))
        else:
            self._write_raw(chunk)

    def _write_raw(self, chunk: _Chunk) -> None:
        view = chunk.view
        if self._whole_hasher is not None:
            self._whole_hasher.feed(view, chunk)
        while view:
            if self._fd is None or (self.split_bytes and self._in_part >= self.split_bytes):
                self._open_next()
            assert self._fd is not None
            room = len(view) if not self.split_bytes else min(len(view), self.split_bytes - self._in_part)
            piece = view[:room]
            self._part_hasher.feed(piece, chunk)
            while piece:
                written = os.write(self._fd, piece)
                piece = piece[written:]
            self._in_part += room
            view = view[room:]

    def finish(self) -> tuple[tuple[ArchiveFile, ...], str]:
        if self._compressor is not None:
            tail = self._compressor.flush()
            if tail:
                self._write_raw(_Chunk(memoryview(tail)))
        if self._fd is None and not self._partials:
            self._open_next()
        self._close_current()
        whole = self._whole_hasher.digest() if self._whole_hasher is not None else self._part_hashes[0]
        files = []
        for index, partial in enumerate(self._partials):
            final = self._final(index)
            partial.replace(final)
            files.append(
                ArchiveFile(path=final, size=self._part_sizes[index], sha256=self._part_hashes[index])
            )
        self._partials = []
        _fsync_dir(self.out.parent)
        return tuple(files), whole

    def close(self) -> None:
        """Stop the threads and delete what was not renamed (after an error or a cancel)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for partial in self._partials:
            partial.unlink(missing_ok=True)
        self._partials = []
        self._part_hasher.close()
        if self._whole_hasher is not None:
            self._whole_hasher.close()


@dataclass
class _Progress:
    total: int
    on_event: EventSink
    done: int = 0
    _next: int = 0
    _started: float = field(default_factory=time.monotonic)

    def add(self, count: int, message: str) -> None:
        self.done += count
        if self.done >= self._next or self.done == self.total:
            self._next = self.done + EVENT_EVERY_BYTES
            self.on_event(Event(stage="export", done=self.done, total=self.total, unit="B", message=message))


class _Stream:
    """The tar stream: feeds every byte to the output and, inside a layer, to that layer's hasher."""

    def __init__(
        self, output: _Output, layer_hasher: _Hasher, progress: _Progress, cancel: threading.Event | None
    ) -> None:
        self.output = output
        self.layer_hasher = layer_hasher
        self.progress = progress
        self.cancel = cancel
        self.hash_layer = False
        self.message = ""
        self._pool: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._buffers = [bytearray(CHUNK_BYTES) for _ in range(BUFFERS_IN_FLIGHT)]
        for slot in range(BUFFERS_IN_FLIGHT):
            self._pool.put(slot)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(
                "The pack was cancelled; no partial files were kept.", hint="Start it again when ready."
            )

    def _emit(self, chunk: _Chunk) -> None:
        if self.hash_layer:
            self.layer_hasher.feed(chunk.view, chunk)
        self.output.write(chunk)
        chunk.release()
        self.progress.add(len(chunk.view), self.message)

    def bytes(self, data: bytes) -> None:
        if data:
            self._emit(_Chunk(memoryview(data)))

    def file(self, path: Path, size: int) -> None:
        """Stream exactly ``size`` bytes of ``path``, then the padding to the next block."""
        left = size
        with open(path, "rb", buffering=0) as source:
            while left:
                self._check_cancel()
                slot = self._pool.get()
                view = memoryview(self._buffers[slot])[: min(CHUNK_BYTES, left)]
                count = source.readinto(view)
                if not count:
                    self._pool.put(slot)
                    raise ExportFailedError(
                        f"The model file {path} got shorter while it was being packed.",
                        hint="Wait for whatever is changing the model folder to finish, then pack again.",
                    )
                left -= count
                self._emit(_Chunk(view[:count], slot, self._pool))
            if source.read(1):
                raise ExportFailedError(
                    f"The model file {path} got longer while it was being packed.",
                    hint="Wait for whatever is changing the model folder to finish, then pack again.",
                )
        self.bytes(b"\0" * (_padded(size) - size))


def write_image_archive(
    *,
    runtime: RuntimeLayers,
    model_root: str,
    layers: Sequence[ModelLayerSource],
    repo_tag: str,
    out: Path,
    labels: Mapping[str, str] | None = None,
    compress: Compression = "none",
    split_bytes: int | None = None,
    created: datetime | None = None,
    mtime: int = 0,
    on_event: EventSink = ignore_events,
    cancel: threading.Event | None = None,
) -> ArchiveResult:
    """Write the image ``runtime`` + ``layers`` (under ``model_root``) as a docker-archive at ``out``.

    ``out`` (or ``out.part000`` … with ``split_bytes``) appears only once everything is written and
    fsynced; an error or a cancel leaves nothing behind. ``created`` defaults to now; pass it (and
    ``mtime``) to get byte-identical archives. Events: stage "export", bytes of the tar stream against
    its exact size.
    """
    if compress not in ("none", "zstd"):
        raise InvalidOptionsError(f"Unknown compression {compress!r}.", hint="Use 'none' or 'zstd'.")
    if split_bytes is not None and split_bytes <= 0:
        raise InvalidOptionsError("The part size must be positive.", hint="For example 4G or 1G.")
    plan = _plan(
        runtime=runtime,
        model_root=model_root,
        layers=layers,
        repo_tag=repo_tag,
        labels=labels,
        created=created,
        mtime=mtime,
    )
    total = plan.tar_size()
    out.parent.mkdir(parents=True, exist_ok=True)
    output = _Output(out, compress=compress, split_bytes=split_bytes)
    layer_hasher = _Hasher("layer-sha256")
    progress = _Progress(total=total, on_event=on_event)
    on_event(Event(stage="export", done=0, total=total, unit="B", message=f"Writing {out.name}"))
    stream = _Stream(output, layer_hasher, progress, cancel)
    try:
        for i, size in enumerate(runtime.sizes):
            stream.message = f"Runtime layer {i + 1}/{len(runtime.sizes)}"
            stream.bytes(plan.file_header(plan.runtime_member(i), size))
            stream.file(runtime.blobs[i], size)
        diff_ids = []
        for layer_plan in plan.layers:
            stream.message = f"Model layer {layer_plan.name}"
            stream.bytes(plan.file_header(layer_plan.member_name, layer_plan.tar_size))
            stream.hash_layer = True
            for member in layer_plan.members:
                stream.bytes(member.header)
                if member.source is not None:
                    stream.file(member.source, member.size)
            stream.bytes(b"\0" * (2 * BLOCK))
            stream.hash_layer = False
            diff_ids.append("sha256:" + layer_hasher.digest())
            stream.bytes(b"\0" * (_padded(layer_plan.tar_size) - layer_plan.tar_size))
        config = plan.config(diff_ids)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        config_name = image_id.removeprefix("sha256:") + ".json"
        stream.message = "Image config and manifest"
        for name, body in ((config_name, config), ("manifest.json", plan.manifest(config_name))):
            stream.bytes(plan.file_header(name, len(body)))
            stream.bytes(body)
            stream.bytes(b"\0" * (_padded(len(body)) - len(body)))
        stream.bytes(b"\0" * (2 * BLOCK))
        if progress.done != total:  # a bug in the size plan, never the user's fault
            raise ExportFailedError(
                f"The archive has {progress.done} bytes, {total} were planned.",
                hint="Report this; use the docker-build export path meanwhile.",
            )
        files, whole = output.finish()
    except OSError as error:
        if error.errno == 28:  # ENOSPC
            raise DiskSpaceError(
                f"The disk holding {out.parent} is full (the partial archive was removed).",
                hint=f"The archive needs {total / 2**30:.1f} GiB; free some space or write it elsewhere.",
            ) from error
        raise ExportFailedError(
            f"Could not write {out}: {error.strerror or error}.",
            hint="Check that the folder exists and is writable, then try again.",
        ) from error
    finally:
        layer_hasher.close()
        output.close()
    on_event(Event(stage="export", done=total, total=total, unit="B", message=f"Wrote {out.name}"))
    return ArchiveResult(
        files=files,
        sha256=whole,
        tar_size=total,
        image_id=image_id,
        repo_tag=plan.repo_tag,
        model_diff_ids=tuple(diff_ids),
    )

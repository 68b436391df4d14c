"""Write a ``docker load``-able image archive in one pass over the model files.

The fast pack path: the engine builds only the runtime image (the Dockerfile minus the model COPY lines,
cached, seconds); this module then writes the final docker-archive tar itself: the runtime layers from
``core.layer_cache``, then one layer per ``plan_layers`` layer streamed straight from the model files,
then the image config and ``manifest.json``. Each weight byte is read once and written once; the layer
digests (diff_ids) and the archive's sha256 are computed on the way, in hashing threads that overlap the
I/O. The exact archive size is known before the first byte is written, from the tar headers alone. The
bytes reach the disk through ``core.archive.writer.PartsWriter`` (zstd, parts, ``.partial`` names).

The same pass writes either format (``ArchiveFormat``): the docker-archive, or an OCI image layout whose
blobs are the same layer tars and the same config bytes, so layer digests and the image id agree across
the two; a model layer's blob there is a hard link written right after the layer, once its digest is known.

What the model layers hold mirrors what ``COPY layers/<layer>/ <model_root>/`` records with the classic
builder: ``model_root`` and its parents 0755, nested folders and files with their source modes, all
owned by root, files hard-linked to each other inside one layer kept as hard links. Times are fixed
(``mtime``), so an unchanged layer of a new model revision gets the same diff_id and ``docker load`` on
the target reuses it.

Reproducible: the same runtime image, model files and arguments give the same bytes, whenever and from
wherever they are written, so the archive's sha256 names the artifact. Nothing here comes from the
clock: tar times, the config's ``created`` and our history entries are ``REPRODUCIBLE_EPOCH``; members
come in a fixed order (runtime layers bottom first, model layers in ``plan_layers`` order, files in name
order, config, manifest); owners are root with empty names; PAX records appear only for what ustar
cannot hold (long or non-ASCII names, sizes past 8 GiB), never times; JSON is compact with a fixed key
order. The pack time is recorded in ``core.history``, not in the image. What this leaves to Docker:

- The runtime layers and the runtime config (its history times included) are ``docker save``'s, byte
  for byte (their diff_ids are what ``docker load`` checks). ``docker save`` of one image id always gives
  the same layer tars, so a fresh layer cache (another EZRUNNER_HOME) changes nothing, and ``docker
  build`` gives the same image id as long as its build cache hits (same engine, same base image, same
  context files: ``core.render.write_context_files`` fixes their modes and times). A build without that
  cache (another engine, ``docker builder prune``) re-runs the RUN steps, whose files, and the folders
  COPY creates, carry the build's time (measured on Docker 20.10, classic builder): a new runtime image,
  hence a new archive, of the same content.
- Model file modes come from the files (COPY keeps them too), so a download under another umask differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import queue
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.archive.compression import Compression, check_compression
from core.archive.writer import ArchiveFile, Chunk, Hasher, KernelCopyUnavailable, PartsWriter
from core.errors import DiskSpaceError, ExportFailedError, InvalidOptionsError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.layer_cache import RuntimeLayers
from core.layers import WeightLayer

BLOCK = 512
#: Read size for file data; a few buffers in flight keep the hashing threads busy while the next one is read.
CHUNK_BYTES = 4 << 20
BUFFERS_IN_FLIGHT = 8
#: A progress event at most this often (bytes of the tar stream).
EVENT_EVERY_BYTES = 64 << 20
#: COPY creates the model folder and its parents with this mode.
PARENT_DIR_MODE = 0o755
#: Every time the archive holds: tar mtimes, the image config's ``created`` and our history entries. The
#: Unix epoch, as ko, Bazel's rules_docker and distroless write by default (listed in
#: https://github.com/docker/cli/issues/2995; Cloud Native Buildpacks pick 1980-01-01T00:00:01Z for the
#: same reason), rather than a "real" time: no time of the model is known to us (hubs give no commit
#: date for every revision, local folders none at all), and any clock value would make two packs of the
#: same files differ. `docker images` shows such an image as created decades
#: ago; age-based clean-ups (`docker image prune --filter until=...`) see it as old.
REPRODUCIBLE_EPOCH = 0
REPRODUCIBLE_CREATED = datetime.fromtimestamp(REPRODUCIBLE_EPOCH, UTC)
_PLACEHOLDER_DIGEST = "sha256:" + "0" * 64

#: docker-archive: what `docker save` writes (manifest.json, <id>.json, <layer>/layer.tar). oci-layout: an OCI
#: image layout (https://github.com/opencontainers/image-spec/blob/v1.1.0/image-layout.md: oci-layout,
#: index.json, blobs/sha256/<digest>) that skopeo (oci-archive:), podman load and ctr import take; it
#: carries manifest.json too, as Docker 25's `docker save` does, so `docker load` and load.sh take it as well.
ArchiveFormat = Literal["docker-archive", "oci-layout"]
ARCHIVE_FORMATS: tuple[ArchiveFormat, ...] = ("docker-archive", "oci-layout")
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: its digest is the diff_id
_BLOBS = "blobs/sha256/"


# PUBLIC TYPES


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
    """One model layer and the folder holding its files by their relative paths (symlinks are followed).

    ``root`` is the folder of the image the layer's files land in (as ``COPY <folder>/ <root>/``): the
    model folder when None; another for a layer of other files (the SBOM's, in ``/etc/ezrunner``)."""

    layer: WeightLayer
    folder: Path
    root: str | None = None


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
    model_root = source.root or model_root
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
    format: ArchiveFormat = "docker-archive"

    @property
    def oci(self) -> bool:
        return self.format == "oci-layout"

    def runtime_member(self, index: int) -> str:
        hex_digest = self.runtime.diff_ids[index].removeprefix("sha256:")
        return f"{_BLOBS}{hex_digest}" if self.oci else f"{hex_digest}/layer.tar"

    def config_member(self, image_id: str) -> str:
        hex_digest = image_id.removeprefix("sha256:")
        return f"{_BLOBS}{hex_digest}" if self.oci else f"{hex_digest}.json"

    def blob_link(self, plan: _LayerPlan, digest: str) -> bytes:
        """OCI only: a model layer's digest is known once its bytes are written, after its tar header, so
        its blob is a hard link (a header, no data) to the member just written: one pass, no second copy."""
        return _header(_BLOBS + digest.removeprefix("sha256:"), kind=tarfile.LNKTYPE, mode=0o644, mtime=self.mtime,
                       linkname=plan.member_name)  # fmt: skip

    def oci_manifest(self, *, config: bytes, image_id: str, diff_ids: Sequence[str]) -> bytes:
        layers = [
            {"mediaType": OCI_LAYER_MEDIA_TYPE, "digest": digest, "size": size}
            for digest, size in zip(
                [*self.runtime.diff_ids, *diff_ids], [*self.runtime.sizes, *(p.tar_size for p in self.layers)],
                strict=True,
            )
        ]
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "digest": image_id, "size": len(config)},
            "layers": layers,
        }  # fmt: skip
        return json.dumps(manifest, separators=(",", ":")).encode()

    def oci_index(self, manifest: bytes) -> bytes:
        tag = self.repo_tag.rpartition(":")[2]
        entry = {
            "mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "size": len(manifest),
            # the names Docker 25's `docker save` gives: containerd's full name, the OCI tag
            "annotations": {"io.containerd.image.name": self.repo_tag, "org.opencontainers.image.ref.name": tag},
        }  # fmt: skip
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [entry]}
        return json.dumps(index, separators=(",", ":")).encode()

    def trailer(self, *, config: bytes, image_id: str, diff_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """The members after the layers, in order: the config, (OCI: manifest blob, index.json, oci-layout),
        then manifest.json, last, where ``core.archive.inspect`` looks for it."""
        config_name = self.config_member(image_id)
        members = [(config_name, config)]
        if self.oci:
            manifest = self.oci_manifest(config=config, image_id=image_id, diff_ids=diff_ids)
            members += [
                (_BLOBS + hashlib.sha256(manifest).hexdigest(), manifest),
                ("index.json", self.oci_index(manifest)),
                ("oci-layout", OCI_LAYOUT),
            ]
        return [*members, ("manifest.json", self.manifest(config_name))]

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
            if self.oci:
                total += len(self.blob_link(plan, _PLACEHOLDER_DIGEST))
        placeholders = [_PLACEHOLDER_DIGEST] * len(self.layers)
        config = self.config(placeholders)
        for name, body in self.trailer(config=config, image_id=_PLACEHOLDER_DIGEST, diff_ids=placeholders):
            total += len(self.file_header(name, len(body))) + _padded(len(body))
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
    created: datetime,
    mtime: int,
    format: ArchiveFormat = "docker-archive",
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
        created=_timestamp(created),
        labels=labels,
        mtime=mtime,
        format=format,
    )


def exact_archive_size(
    *,
    runtime: RuntimeLayers,
    model_root: str,
    layers: Sequence[ModelLayerSource],
    repo_tag: str,
    labels: Mapping[str, str] | None = None,
    created: datetime = REPRODUCIBLE_CREATED,
    mtime: int = REPRODUCIBLE_EPOCH,
    format: ArchiveFormat = "docker-archive",
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
        created=created,
        mtime=mtime,
        format=format,
    ).tar_size()


# WRITING: ONE READ, ONE WRITE, HASHES IN THREADS


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
        self, output: PartsWriter, layer_hasher: Hasher, progress: _Progress, cancel: Cancel | None
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

    def _emit(self, chunk: Chunk) -> None:
        if self.hash_layer:
            self.layer_hasher.feed(chunk.view, chunk)
        self.output.write(chunk)
        chunk.release()
        self.progress.add(len(chunk.view), self.message)

    def _copy(self, path: Path, source: int, offset: int, view: memoryview, slot: int) -> bool:
        """``view``'s worth of ``source`` from ``offset`` copied by the kernel (then read back into ``view`` and
        hashed); False, with nothing written, where the kernel cannot copy here (read + write then)."""
        chunk = Chunk(view, functools.partial(self._pool.put, slot))
        try:
            self.output.copy_from(source=source, offset=offset, chunk=chunk, name=str(path))
        except KernelCopyUnavailable:
            return False  # the slot stays taken: the caller reads into the same view
        except BaseException:
            chunk.release()
            raise
        if self.hash_layer:
            self.layer_hasher.feed(chunk.view, chunk)
        chunk.release()
        self.progress.add(len(view), self.message)
        return True

    def bytes(self, data: bytes) -> None:
        if data:
            self._emit(Chunk(memoryview(data)))

    def file(self, path: Path, size: int) -> None:
        """Stream exactly ``size`` bytes of ``path``, then the padding to the next block."""
        left = size
        with open(path, "rb", buffering=0) as source:
            while left:
                raise_if_cancelled(
                    self.cancel, message="The pack was cancelled; no partial files were kept.",
                    hint="Start it again when ready.",
                )
                slot = self._pool.get()
                view = memoryview(self._buffers[slot])[: min(CHUNK_BYTES, left)]
                if self.output.can_copy and self._copy(path, source.fileno(), size - left, view, slot):
                    left -= len(view)
                    continue
                count = source.readinto(view)
                if not count:
                    self._pool.put(slot)
                    raise ExportFailedError(
                        f"The model file {path} got shorter while it was being packed.",
                        hint="Wait for whatever is changing the model folder to finish, then pack again.",
                    )
                left -= count
                self._emit(Chunk(view[:count], functools.partial(self._pool.put, slot)))
            source.seek(size)  # the kernel copy reads by offset: the check below reads on from the end
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
    created: datetime = REPRODUCIBLE_CREATED,
    mtime: int = REPRODUCIBLE_EPOCH,
    format: ArchiveFormat = "docker-archive",
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> ArchiveResult:
    """Write the image ``runtime`` + ``layers`` (under ``model_root``) as a docker-archive at ``out``.

    ``out`` (or ``out.part000`` … with ``split_bytes``) appears only once everything is written and
    fsynced; an error or a cancel leaves nothing behind. ``created`` (the config's and our history
    entries' time) and ``mtime`` (every tar entry's) default to ``REPRODUCIBLE_EPOCH``, so the same
    inputs give byte-identical archives and the same image id. Events: stage "export", bytes of the tar
    stream against its exact size.
    """
    check_compression(compress)
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
        format=format,
    )
    total = plan.tar_size()
    out.parent.mkdir(parents=True, exist_ok=True)
    output = PartsWriter(out, compress=compress, split_bytes=split_bytes)
    layer_hasher = Hasher("layer-sha256")
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
            if plan.oci:
                stream.bytes(plan.blob_link(layer_plan, diff_ids[-1]))
        config = plan.config(diff_ids)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        stream.message = "Image config and manifest"
        for name, body in plan.trailer(config=config, image_id=image_id, diff_ids=diff_ids):
            stream.bytes(plan.file_header(name, len(body)))
            stream.bytes(body)
            stream.bytes(b"\0" * (_padded(len(body)) - len(body)))
        stream.bytes(b"\0" * (2 * BLOCK))
        if progress.done != total:  # a bug in the size plan, never the user's fault
            raise ExportFailedError(
                f"The archive has {progress.done} bytes, {total} were planned.",
                hint="Report this; use the docker-build export path meanwhile.",
            )
        written = output.finish()
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
        files=written.files,
        sha256=written.sha256,
        tar_size=total,
        image_id=image_id,
        repo_tag=plan.repo_tag,
        model_diff_ids=tuple(diff_ids),
    )

"""The image inside a packed archive, as a registry wants it: its config, its layer blobs and where they lie.

An archive (``.tar``, ``.tar.zst``, or their parts ``NAME.part000`` …, see ``core.archive.names``) holds a
docker-archive: ``manifest.json`` (``[{"Config": …, "RepoTags": […], "Layers": […]}]``), the config JSON
and one tar member per layer, in any order (``core.image_archive`` writes the manifest last).
``index_archive`` finds every member's offset in the plain tar stream without keeping more than the small
JSON members: a plain archive is indexed by seeking from header to header, a zstd one by one streaming pass.
``ArchiveBytes`` then reads any blob's bytes at any offset: seeks for a plain archive; for zstd it reads on,
and reopens from the start only to go backwards (a rare restart of a blob the registry dropped).

Layers are pushed as they lie in the archive. Our archives hold uncompressed layer tars, whose digest IS
the config's diff_id, so nothing is hashed before the push and the registry checks every digest on
``PUT ?digest=``. They go up as ``application/vnd.docker.image.rootfs.diff.tar``
(``schema2.MediaTypeUncompressedLayer``): distribution 2.8's schema2 handler checks only that each layer
blob exists, whatever its media type (``registry/storage/schema2manifesthandler.go``, ``verifyManifest``:
the ``default`` case), and the engine's puller detects the compression of what it downloads. Compressing on
the fly would give new digests but leave the config (and so the image ID) unchanged; it would cost CPU and
a second pass per layer for its digest, for weights that barely compress. A gzip or zstd layer (``docker
save`` of the containerd store writes gzip) is pushed as it lies too, with its own media type and its digest
from its ``blobs/sha256/<hex>`` name or, failing that, hashed once.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.archive.compression import ZSTD_MAGIC
from core.archive.names import archive_parts
from core.archive.reader import read_stream
from core.errors import ArtifactInvalidError
from core.events import Cancel, EventSink, ignore_events, raise_if_cancelled

LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
GZIP_MAGIC = b"\x1f\x8b"
#: Members up to this size are kept in memory while indexing a zstd archive: manifest.json, the config, and
#: the layers that small. Larger ones are only located.
SMALL_MEMBER_BYTES = 1 << 20
READ_BYTES = 8 << 20
_SYMLINK_HOPS = 8


@dataclass(frozen=True)
class Blob:
    digest: str  # "sha256:<hex>"
    size: int
    media_type: str
    member: str  # its tar member in the archive
    offset: int  # where its bytes start in the plain tar stream


@dataclass(frozen=True)
class ArchiveImage:
    """What a push needs from an archive: the config (bytes and blob), the layer blobs in manifest order."""

    archive: Path
    parts: tuple[Path, ...]
    compressed: bool  # zstd: read forwards only
    config: Blob
    config_bytes: bytes = field(repr=False)
    layers: tuple[Blob, ...]
    repo_tags: tuple[str, ...]

    @property
    def image_id(self) -> str:
        """``sha256:<hex>`` of the config: what ``docker images --no-trunc`` shows after a pull."""
        return self.config.digest

    def manifest_bytes(self) -> bytes:
        """The Docker v2 schema 2 manifest of this image, byte for byte as pushed."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": self.config.size, "digest": self.config.digest},
            "layers": [{"mediaType": b.media_type, "size": b.size, "digest": b.digest} for b in self.layers],
        }
        return json.dumps(manifest, indent=3).encode("utf-8")


@dataclass(frozen=True)
class _Member:
    name: str
    offset: int
    size: int
    link: str | None  # a symlink's target, resolved relative to its folder (docker save's duplicate layers)
    head: bytes  # its first bytes, for the compression magic
    digest: str | None  # known only when it was read whole while indexing


class _PartsFile(io.RawIOBase):
    """The parts of a plain archive as one seekable file."""

    def __init__(self, parts: Sequence[Path]) -> None:
        self._paths = list(parts)
        sizes = [p.stat().st_size for p in self._paths]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._size = sum(sizes)
        self._pos = 0
        self._index = -1
        self._file: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or not len(buffer):
            return 0
        index = bisect.bisect_right(self._starts, self._pos) - 1
        if index != self._index or self._file is None:
            if self._file is not None:
                self._file.close()
            self._file = open(self._paths[index], "rb")  # noqa: SIM115 - closed on the next part or in close()
            self._index = index
        self._file.seek(self._pos - self._starts[index])
        end = self._starts[index + 1] if index + 1 < len(self._starts) else self._size
        view = memoryview(buffer)[: min(len(buffer), end - self._pos)]
        count = self._file.readinto(view)
        self._pos += count
        return count

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


class _ChunksFile(io.RawIOBase):
    """A forward-only file over an iterator of byte chunks (``read_stream`` of a zstd archive)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self.position += count
        return count

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def _is_zstd(parts: Sequence[Path]) -> bool:
    with parts[0].open("rb") as first:
        return first.read(len(ZSTD_MAGIC)) == ZSTD_MAGIC


def _resolve(name: str, link: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), link))


def _clean(name: str) -> str:
    return posixpath.normpath(name.removeprefix("./"))


class ArchiveBytes:
    """Reads of the plain tar stream of an archive at given offsets (see the module docstring)."""

    def __init__(self, *, parts: Sequence[Path], compressed: bool, cancel: Cancel | None = None) -> None:
        self._parts = list(parts)
        self._compressed = compressed
        self._cancel = cancel
        self._plain: _PartsFile | None = None if compressed else _PartsFile(self._parts)
        self._stream: _ChunksFile | None = None

    def _open_stream(self) -> _ChunksFile:
        if self._stream is not None:
            self._stream.close()
        self._stream = _ChunksFile(read_stream(self._parts[0], chunk_bytes=READ_BYTES, stage="push",
                                               cancel=self._cancel))  # fmt: skip
        return self._stream

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes from ``offset``; ArtifactInvalidError when the archive ends first."""
        source: io.RawIOBase
        if self._plain is not None:
            self._plain.seek(offset)
            source = self._plain
        else:
            stream = self._stream if self._stream is not None and self._stream.position <= offset else None
            stream = stream or self._open_stream()
            while stream.position < offset:
                raise_if_cancelled(self._cancel)
                if not stream.read(min(READ_BYTES, offset - stream.position)):
                    break
            source = stream
        out = bytearray(size)
        view = memoryview(out)
        filled = 0
        while filled < size:
            count = source.readinto(view[filled:])
            if not count:
                raise ArtifactInvalidError(
                    f"The archive {self._parts[0].name} ends inside a layer.",
                    hint="The copy is incomplete: copy it again and check it against its .sha256.",
                )
            filled += count
        return bytes(out)

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()
        if self._stream is not None:
            self._stream.close()


def _members_plain(raw: _PartsFile) -> tuple[dict[str, _Member], dict[str, bytes]]:
    members: dict[str, _Member] = {}
    with tarfile.open(fileobj=io.BufferedReader(raw, buffer_size=1 << 16), mode="r:") as tar:
        for info in tar:
            name = _clean(info.name)
            if info.issym() or info.islnk():
                link = _resolve(name, info.linkname) if info.issym() else _clean(info.linkname)
                members[name] = _Member(name=name, offset=0, size=0, link=link, head=b"", digest=None)
            elif info.isfile():
                members[name] = _Member(name=name, offset=info.offset_data, size=info.size, link=None, head=b"",
                                        digest=None)  # fmt: skip
    return members, {}


def _members_stream(source: _ChunksFile, *, cancel: Cancel | None) -> tuple[dict[str, _Member], dict[str, bytes]]:
    members: dict[str, _Member] = {}
    small: dict[str, bytes] = {}
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for info in tar:
            raise_if_cancelled(cancel)
            name = _clean(info.name)
            if info.issym() or info.islnk():
                link = _resolve(name, info.linkname) if info.issym() else _clean(info.linkname)
                members[name] = _Member(name=name, offset=0, size=0, link=link, head=b"", digest=None)
                continue
            if not info.isfile():
                continue
            data = tar.extractfile(info)
            assert data is not None  # a regular file
            head = data.read(4)
            digest = None
            if info.size <= SMALL_MEMBER_BYTES:
                body = head + data.read()
                small[name] = body
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
            elif head.startswith(GZIP_MAGIC) or head == ZSTD_MAGIC:
                # a compressed layer's digest is not its diff_id: hash it on this pass, it is read anyway
                hasher = hashlib.sha256(head)
                while chunk := data.read(READ_BYTES):
                    hasher.update(chunk)
                digest = "sha256:" + hasher.hexdigest()
            members[name] = _Member(name=name, offset=info.offset_data, size=info.size, link=None, head=head,
                                    digest=digest)  # fmt: skip
    return members, small


def _invalid(archive: Path, what: str) -> ArtifactInvalidError:
    return ArtifactInvalidError(
        f"{archive.name} is not a docker-archive EZ Runner can push: {what}.",
        hint="Push an archive written by `ezrunner pack` (or `docker save`); check it against its .sha256.",
    )


def index_archive(*, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None) -> ArchiveImage:
    """Find the image in ``archive`` (a file, or the first part / the name of a split one)."""
    parts = tuple(archive_parts(archive))
    compressed = _is_zstd(parts)
    try:
        if compressed:
            source = _ChunksFile(read_stream(parts[0], chunk_bytes=READ_BYTES, stage="push", on_event=on_event,
                                             cancel=cancel))  # fmt: skip
            try:
                members, small = _members_stream(source, cancel=cancel)
            finally:
                source.close()
        else:
            with _PartsFile(parts) as raw:
                members, small = _members_plain(raw)
    except tarfile.TarError as error:
        raise _invalid(archive, f"its tar stream is broken ({error})") from error
    reader = ArchiveBytes(parts=parts, compressed=compressed, cancel=cancel)
    try:
        return _image(archive=archive, parts=parts, compressed=compressed, members=members, small=small,
                      read=reader.read_at)  # fmt: skip
    finally:
        reader.close()


def _image(
    *,
    archive: Path,
    parts: tuple[Path, ...],
    compressed: bool,
    members: Mapping[str, _Member],
    small: Mapping[str, bytes],
    read: Callable[[int, int], bytes],
) -> ArchiveImage:
    def member(name: str) -> _Member:
        found = members.get(_clean(name))
        for _ in range(_SYMLINK_HOPS):
            if found is None or found.link is None:
                break
            found = members.get(found.link)
        if found is None or found.link is not None:
            raise _invalid(archive, f"manifest.json names {name!r}, which it does not hold")
        return found

    def contents(m: _Member) -> bytes:
        if m.name in small:
            return small[m.name]
        if m.size > SMALL_MEMBER_BYTES * 64:
            raise _invalid(archive, f"{m.name} is too large for a JSON file ({m.size} bytes)")
        return read(m.offset, m.size)

    try:
        manifest = json.loads(contents(member("manifest.json")))
        entry = manifest[0]
        config_member = member(entry["Config"])
        config_bytes = contents(config_member)
        config = json.loads(config_bytes)
        diff_ids = list(config["rootfs"]["diff_ids"])
        layer_names = list(entry["Layers"])
        repo_tags = tuple(str(t) for t in entry.get("RepoTags") or ())
    except ArtifactInvalidError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise _invalid(archive, f"its manifest.json or image config is malformed ({error!r})") from error
    if len(manifest) != 1:
        raise _invalid(archive, f"it holds {len(manifest)} images, not one")
    if len(diff_ids) != len(layer_names):
        raise _invalid(archive, f"the config lists {len(diff_ids)} layers and manifest.json {len(layer_names)}")
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        m = member(name)
        head = m.head or (read(m.offset, min(4, m.size)) if m.size else b"")
        if head.startswith(GZIP_MAGIC) or head == ZSTD_MAGIC:
            media_type = LAYER_GZIP if head.startswith(GZIP_MAGIC) else LAYER_ZSTD
            digest = m.digest or _named_digest(m.name) or _hash(read, m)
        else:
            media_type, digest = LAYER_TAR, str(diff_id)
        layers.append(Blob(digest=digest, size=m.size, media_type=media_type, member=m.name, offset=m.offset))
    config_blob = Blob(
        digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(), size=len(config_bytes),
        media_type=CONFIG_MEDIA_TYPE, member=config_member.name, offset=config_member.offset,
    )  # fmt: skip
    return ArchiveImage(
        archive=archive, parts=parts, compressed=compressed, config=config_blob, config_bytes=config_bytes,
        layers=tuple(layers), repo_tags=repo_tags,
    )  # fmt: skip


def _named_digest(name: str) -> str | None:
    """``blobs/sha256/<hex>`` (the OCI layout ``docker save`` writes since Docker 25) names its digest."""
    folder, _, hex_digest = name.rpartition("/")
    if folder.endswith("blobs/sha256") and len(hex_digest) == 64 and all(c in "0123456789abcdef" for c in hex_digest):
        return "sha256:" + hex_digest
    return None


def _hash(read: Callable[[int, int], bytes], m: _Member) -> str:
    hasher = hashlib.sha256()
    for start in range(0, m.size, READ_BYTES):
        hasher.update(read(m.offset + start, min(READ_BYTES, m.size - start)))
    return "sha256:" + hasher.hexdigest()

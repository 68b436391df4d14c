"""The push job: the image inside a packed archive to a registry, without ``docker load``.

1. Index the archive (``core.registry.image``): config, layer blobs, their offsets. Nothing large is read.
2. Log in (``GET /v2/``), then ``HEAD`` every blob: the ones the registry has are skipped, so a second push
   of the same archive sends no layer.
3. Upload each missing blob in archive order: ``POST /v2/<name>/blobs/uploads/``, one ``PATCH`` per chunk
   of ``chunk_bytes`` (``Content-Range``), ``PUT ?digest=``. Each chunk is streamed from the archive in
   ``READ_BYTES`` pieces, so memory stays flat whatever the chunk and archive sizes.
4. ``PUT`` the Docker v2 schema 2 manifest under the tag. Its config is the archive's config byte for byte,
   so the pulled image has the archive's image ID.

Resuming: after every accepted chunk the upload's URL is saved under ``state_dir`` (one small JSON per
registry, repository and blob). A dropped connection is retried with backoff: ``HEAD`` the blob (the last
``PUT`` may have landed), else ``GET`` the upload URL and continue from the offset its ``Range`` reports,
else (the registry dropped the upload) start the blob again. A push run again after a failure does the
same from the saved URL. distribution 2.8 keeps an upload only when it was cut between chunks: a chunk cut
midway leaves its upload at another offset than its URL's ``_state`` records, and the registry then cancels
it (``registry/handlers/blobupload.go``, ``blobUploadDispatcher``: "upload resumed at wrong offset"), so
that blob starts again; blobs already complete are never sent again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.archive.names import partial_owner, partial_path
from core.errors import RegistryBusyError, RegistryError, RegistryUnreachableError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.hardware import default_data_dir
from core.registry.client import DigestRejectedError, RegistryClient, find_credentials, parse_image_ref
from core.registry.image import MANIFEST_MEDIA_TYPE, ArchiveBytes, ArchiveImage, Blob, index_archive

#: One PATCH. Each is a point a dropped upload can be continued from, but distribution 2.8 costs much per
#: PATCH: one loopback upload of 512 MiB measured 123 MB/s in one PATCH, 41 MB/s in 32 MiB ones (2 busy
#: cores). The body is streamed (READ_BYTES at a time), so the size costs no memory.
CHUNK_BYTES = 512 << 20
READ_BYTES = 8 << 20
EVENT_EVERY_S = 0.5
RETRIES = 6
#: The first wait after a failure; doubled on each further one, at most MAX_BACKOFF_S.
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
_RETRYABLE = (RegistryUnreachableError, RegistryBusyError)


@dataclass(frozen=True)
class BlobPush:
    digest: str
    size: int
    uploaded: bool  # False: the registry had it already, nothing was sent
    bytes_sent: int  # body bytes sent for it by this push (more than size when a cut chunk was sent again)
    resumed_from: int  # the offset an upload left by an earlier run was continued from (0: none)


@dataclass(frozen=True)
class PushResult:
    ref: str  # registry/repository:tag as pushed
    image_id: str  # the config digest: the archive's image ID, and the pulled image's
    manifest_digest: str
    blobs: tuple[BlobPush, ...]  # the config first, then the layers in manifest order (each digest once)
    bytes_sent: int
    retries: int  # connection failures recovered from
    seconds: float

    @property
    def uploaded(self) -> tuple[str, ...]:
        return tuple(b.digest for b in self.blobs if b.uploaded)

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(b.digest for b in self.blobs if not b.uploaded)


def default_state_dir() -> Path:
    return default_data_dir() / "push-uploads"


class _SavedUploads:
    """Where each unfinished upload can be continued: one JSON file per (registry, repository, digest)."""

    def __init__(self, folder: Path, *, registry: str, repository: str) -> None:
        self._folder = folder
        self._key = f"{registry}/{repository}@"

    def _path(self, digest: str) -> Path:
        return self._folder / (hashlib.sha256((self._key + digest).encode()).hexdigest()[:32] + ".json")

    def get(self, digest: str) -> str | None:
        try:
            saved = json.loads(self._path(digest).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        path = saved.get("path") if isinstance(saved, dict) else None
        return path if isinstance(path, str) and path.startswith("/v2/") else None

    def save(self, digest: str, location: str) -> None:
        # Only the path and query: the host may differ next time (a proxy, another name for the registry).
        parts = urlsplit(location)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._folder.mkdir(parents=True, exist_ok=True)
        target = self._path(digest)
        partial = partial_path(target, owner=partial_owner())
        partial.write_text(json.dumps({"ref": self._key + digest, "path": path}), encoding="utf-8")
        os.replace(partial, target)

    def forget(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)


class _Meter:
    """Bytes sent against bytes to send, as ``push`` events with rate and time left in the message."""

    def __init__(self, *, total: int, blobs: int, on_event: EventSink) -> None:
        self.total = total
        self.blobs = blobs
        self.on_event = on_event
        self.finished = 0  # bytes of the blobs completed
        self.current = 0  # offset in the blob being sent
        self.sent = 0
        self.done_blobs = 0
        self.started = time.monotonic()

    def report(self, *, file: str, message: str | None = None) -> None:
        done = min(self.total, self.finished + self.current)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.sent / elapsed
        if message is None:
            left = (self.total - done) / rate if rate > 0 else None
            eta = f", about {_duration(left)} left" if left is not None else ""
            message = f"blob {min(self.done_blobs + 1, self.blobs)}/{self.blobs}, {rate / 1e6:.1f} MB/s{eta}"
        self.on_event(Event(stage="push", done=done, total=self.total, unit="B", file=file, message=message))


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")  # fmt: skip


class _Segment:
    """One PATCH body: ``length`` bytes from ``start`` in the archive, read in READ_BYTES pieces as they are sent,
    so a chunk of any size costs one piece of memory. Progress moves as the pieces go out."""

    def __init__(
        self, read: Callable[[int, int], bytes], *, start: int, length: int, meter: _Meter, file: str,
        cancel: Cancel | None,
    ) -> None:  # fmt: skip
        self._read = read
        self._start = start
        self._next = start
        self._left = length
        self._length = length
        self._piece = memoryview(b"")
        self._meter = meter
        self._file = file
        self._cancel = cancel
        self._reported = 0.0

    def __len__(self) -> int:
        return self._length

    def rewind(self) -> None:
        self._meter.current -= self._next - self._start
        self._next, self._left, self._piece = self._start, self._length, memoryview(b"")

    def read(self, amount: int = -1) -> bytes:
        if not self._piece:
            if not self._left:
                return b""
            raise_if_cancelled(self._cancel)
            count = min(READ_BYTES, self._left)
            self._piece = memoryview(self._read(self._next, count))
            self._next += count
            self._left -= count
            self._meter.current += count
            self._meter.sent += count
            now = time.monotonic()
            if now - self._reported >= EVENT_EVERY_S or not self._left:
                self._reported = now
                self._meter.report(file=self._file)
        amount = len(self._piece) if amount is None or amount < 0 else amount
        out = self._piece[:amount].tobytes()
        self._piece = self._piece[amount:]
        return out


class _Push:
    def __init__(
        self,
        *,
        image: ArchiveImage,
        client: RegistryClient,
        saved: _SavedUploads,
        chunk_bytes: int,
        retries: int,
        backoff_s: float,
        on_event: EventSink,
        cancel: Cancel | None,
    ) -> None:
        self.image = image
        self.client = client
        self.saved = saved
        self.chunk_bytes = chunk_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.on_event = on_event
        self.cancel = cancel
        self.retried = 0
        self.failures_in_a_row = 0
        self.meter = _Meter(total=0, blobs=0, on_event=on_event)

    def wait_after(self, error: RegistryError, *, what: str) -> None:
        """Sleep before the next try, or re-raise ``error`` once the retries are spent."""
        self.failures_in_a_row += 1
        if self.failures_in_a_row > self.retries:
            raise type(error)(
                f"{error.message} Gave up after {self.retries} retries while {what}.",
                hint=(error.hint or "") + " Running the same push again continues where it stopped.",
            ) from error
        self.retried += 1
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (self.failures_in_a_row - 1))
        # no byte counts: a status line of its own, which the CLI prints as it comes
        self.on_event(Event(stage="push", message=f"{error.message} Retrying in {delay:.0f} s ({what})."))
        if self.cancel is not None:
            self.cancel.wait(delay)
        else:
            time.sleep(delay)
        raise_if_cancelled(self.cancel)

    def retrying(self, what: str, call: Callable[[], object]) -> object:
        while True:
            try:
                answer = call()
                self.failures_in_a_row = 0
                return answer
            except _RETRYABLE as error:
                self.wait_after(error, what=what)

    def upload(self, blob: Blob, read: Callable[[int, int], bytes]) -> BlobPush:
        """Send one blob the registry lacks, continuing a saved or interrupted upload where it can."""
        short = blob.digest.removeprefix("sha256:")[:12]
        saved = self.saved.get(blob.digest)
        location: str | None = self.client.url(saved) if saved else None
        offset, sent, resumed_from = 0, 0, 0
        check = location is not None  # ask the registry where the upload stands before sending
        restarted = False
        while True:
            try:
                raise_if_cancelled(self.cancel)
                if check:
                    check = False
                    if self.client.blob_exists(digest=blob.digest):  # the last PUT landed; its answer was lost
                        break
                    status = self.client.upload_status(location=location) if location else None
                    if status is None or status.offset > blob.size:
                        location, offset = None, 0
                    else:
                        location, offset = status.location, status.offset
                        if sent == 0:
                            resumed_from = offset
                if location is None:
                    location, offset = self.client.start_upload(), 0
                self.meter.current = offset
                while offset < blob.size:
                    raise_if_cancelled(self.cancel)
                    length = min(self.chunk_bytes, blob.size - offset)
                    body = _Segment(read, start=blob.offset + offset, length=length, meter=self.meter, file=short,
                                    cancel=self.cancel)  # fmt: skip
                    status = self.client.patch(location=location, body=body, start=offset)
                    sent += length
                    location, offset = status.location, offset + length
                    self.failures_in_a_row = 0
                    self.saved.save(blob.digest, location)
                    self.meter.current = offset
                self.client.finish_upload(location=location, digest=blob.digest)
                break
            except _RETRYABLE as error:
                self.wait_after(error, what=f"sending blob {short}")
                check = True
            except DigestRejectedError:
                # Once: a resumed upload may hold a byte too many (a "Range: 0-0" answer is ambiguous).
                if restarted or (resumed_from == 0 and not self.retried):
                    raise
                restarted = True
                if location:
                    self.client.cancel_upload(location=location)
                location, offset = None, 0
        self.saved.forget(blob.digest)
        self.failures_in_a_row = 0
        self.meter.finished += blob.size
        self.meter.current = 0
        self.meter.done_blobs += 1
        self.meter.report(file=short)
        return BlobPush(digest=blob.digest, size=blob.size, uploaded=True, bytes_sent=sent, resumed_from=resumed_from)


def push_archive(
    *,
    archive: Path,
    ref: str,
    insecure: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    environ: Mapping[str, str] | None = None,
    docker_config: Path | None = None,
    state_dir: Path | None = None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> PushResult:
    """Push the image in ``archive`` (a ``.tar``, ``.tar.zst`` or split one) to ``ref`` (``host[:port]/name:tag``).

    ``insecure``: plain HTTP instead of HTTPS. Credentials: see ``core.registry.client`` (``environ`` and
    ``docker_config`` stand in for the process's environment and Docker config file).
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    started = time.monotonic()
    image_ref = parse_image_ref(ref=ref)
    on_event(Event(stage="push", message=f"Reading the image in {archive.name}"))
    image = index_archive(archive=archive, on_event=on_event, cancel=cancel)
    credentials = find_credentials(registry=image_ref.registry, environ=environ, docker_config=docker_config)
    client = RegistryClient(ref=image_ref, insecure=insecure, credentials=credentials)
    saved = _SavedUploads(state_dir or default_state_dir(), registry=image_ref.registry,
                          repository=image_ref.repository)  # fmt: skip
    job = _Push(image=image, client=client, saved=saved, chunk_bytes=chunk_bytes, retries=retries,
                backoff_s=backoff_s, on_event=on_event, cancel=cancel)  # fmt: skip
    reader = ArchiveBytes(parts=image.parts, compressed=image.compressed, cancel=cancel)
    try:
        on_event(Event(stage="push", message=f"Checking which blobs {image_ref.registry} already has"))
        client.ping()  # not retried: a wrong address or login is far likelier than a blip here
        unique: dict[str, Blob] = {image.config.digest: image.config}
        for layer in image.layers:
            unique.setdefault(layer.digest, layer)
        present = {d: bool(job.retrying("checking blobs", functools.partial(client.blob_exists, digest=d)))
                   for d in unique}  # fmt: skip
        missing = sorted((b for d, b in unique.items() if not present[d]), key=lambda b: (b is image.config, b.offset))
        job.meter = _Meter(total=sum(b.size for b in missing), blobs=len(missing), on_event=on_event)
        on_event(Event(stage="push", message=f"{len(missing)} of {len(unique)} blobs to send, "
                       f"{len(unique) - len(missing)} already there"))  # fmt: skip

        def read(offset: int, size: int) -> bytes:
            return reader.read_at(offset, size)

        def config_bytes(offset: int, size: int) -> bytes:  # the config was read while indexing
            start = offset - image.config.offset
            return image.config_bytes[start : start + size]

        pushed = {b.digest: job.upload(b, config_bytes if b is image.config else read) for b in missing}
        manifest = image.manifest_bytes()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        on_event(Event(stage="push", message=f"Tagging {image_ref}"))
        answered = job.retrying(
            "storing the manifest",
            lambda: client.put_manifest(tag=image_ref.tag, body=manifest, media_type=MANIFEST_MEDIA_TYPE),
        )
        if answered and answered != digest:
            raise RegistryError(
                f"The registry stored the manifest of {image_ref} as {answered}, not as the {digest} sent.",
                hint="The registry rewrote the manifest; check its configuration (a proxy or a converting registry).",
            )
    finally:
        reader.close()
        client.close()
    blobs = tuple(
        pushed.get(d) or BlobPush(digest=d, size=b.size, uploaded=False, bytes_sent=0, resumed_from=0)
        for d, b in unique.items()
    )
    sent = sum(b.bytes_sent for b in blobs)
    on_event(Event(stage="push", done=job.meter.total, total=job.meter.total, unit="B", message=f"Pushed {image_ref}"))
    return PushResult(
        ref=str(image_ref), image_id=image.image_id, manifest_digest=digest, blobs=blobs, bytes_sent=sent,
        retries=job.retried, seconds=time.monotonic() - started,
    )  # fmt: skip

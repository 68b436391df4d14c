"""The pack job: download → stage → build → export → checksum + load.sh, as one Event stream.

Every stage reports through ``on_event`` and honours ``cancel``; a failed or cancelled pack leaves no
partial archive behind (the export writes temporary files of its own and renames them at the end). An
existing archive is replaced only with ``overwrite``, and two packs to one name write it one after the
other (a lock per output path), so its parts and sidecars always belong to one pack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from docker import DockerClient

from core import convert, errors, hubs, sbom, signing
from core.archive import names
from core.archive.compression import Compression
from core.docker import api as docker_api
from core.engines.versions import LLAMA_CPP_OFFLINE_IMAGE, LLAMA_CPP_TOOLS_IMAGE, LLAMA_CPP_TOOLS_QUANTIZE
from core.errors import CancelledError, DiskSpaceError, ExportFailedError, InvalidOptionsError, LayerCacheUnusableError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.hardware import default_data_dir, target_summary
from core.history import History
from core.housekeeping import disk_probe
from core.hubs.base import ModelFile, ModelInfo
from core.image_archive import ArchiveFormat, ModelLayerSource, exact_archive_size, write_image_archive
from core.layer_cache import RuntimeLayers, runtime_layers
from core.layers import WeightLayer
from core.plan import Plan, plan_to_dict
from core.profiles import with_neighbours
from core.render import (
    BuildSpec,
    ezrunner_version,
    load_script_is_for,
    render,
    render_load_script,
    validate_file_name,
    write_context_files,
    write_sbom_file,
)

ExportPath = Literal["fast", "docker-build"]
#: The name of the SBOM's layer (the model's are named by core.layers.plan_layers, never like this).
SBOM_LAYER = "ezrunner-sbom"
_T = TypeVar("_T")
#: How long a download that was cancelled may take to notice (the hub clients look between 10 MiB chunks)
#: before the pack stops without it.
DOWNLOAD_STOP_GRACE_S = 3.0
FAT32_LIMIT = (4 << 30) - 1  # the largest file a FAT32 stick holds
# The archive also holds the runtime image (engine, Python, CUDA …); leave room for it and the build.
_DISK_MARGIN = 1.10


@dataclass(frozen=True)
class Artifact:
    """What a pack leaves on disk, beside each other in one folder."""

    archive: Path  # logical archive name (the reassembled file when split)
    parts: tuple[Path, ...]  # the files on disk: (archive,) or archive.part000, …
    size: int
    sha256: str
    checksum_file: Path
    load_script: Path
    image_tag: str
    image_id: str
    run_command: str
    compression: Compression
    export_path: ExportPath
    export_reason: str
    seconds: float
    record_id: str | None = None  # the History record, when the pack was recorded
    signature: Path | None = None  # NAME.sha256.sig, when packed with sign_key
    sbom: Path | None = None  # NAME.cdx.json: the CycloneDX SBOM, also in the image at core.sbom.IMAGE_PATH
    format: ArchiveFormat = "docker-archive"


def _check_cancel(cancel: Cancel | None) -> None:
    raise_if_cancelled(
        cancel, message="The pack was cancelled; no partial files were kept.", hint="Start it again when ready."
    )


def output_paths(*, output: Path, compression: Compression) -> Path:
    """Normalise the archive name: ``.tar`` for plain archives, ``.tar.zst`` when compressed."""
    name = names.archive_name(output.name, compression=compression)
    if not names.is_archive_name(name):
        raise InvalidOptionsError(
            f"The output name {output.name!r} must end in .tar (or .tar.zst with --compress zstd).",
            hint="For example: -o qwen2.5-7b-instruct.tar",
        )
    validate_file_name(name)  # before any download or build: load.sh names the file
    return output.with_name(name)


def until_cancelled(work: Callable[[], _T], *, cancel: Cancel | None, grace_s: float, name: str) -> _T:
    """``work()``, run in a thread of its own so that a cancel stops the caller within ``grace_s`` even when
    ``work`` only looks at ``cancel`` now and then (a hub client between chunks of a slow download).

    A ``work`` that has not stopped by then is left to end by itself: it raises at its next look at
    ``cancel`` and nothing waits for it (the hub cache keeps what it wrote, for the next try to resume).
    """
    if cancel is None:
        return work()
    outcome: list[_T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as error:
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while not done.wait(0.2):
        if cancel.is_set():
            done.wait(grace_s)
            break
    if failure:
        raise failure[0]
    if outcome:
        return outcome[0]
    _check_cancel(cancel)
    raise AssertionError("unreachable: work neither finished nor was cancelled")


def existing_output(archive: Path) -> Path | None:
    """The file of an earlier pack at ``archive`` (the archive, one of its parts, its checksum), or None."""
    candidates = [archive, names.checksum_path(archive), *names.numbered_parts(archive)]
    return next((path for path in candidates if path.is_file()), None)


def refuse_existing_output(*, archive: Path, meanwhile: bool = False) -> None:
    """Raise InvalidOptionsError when a pack already lies at ``archive`` (checked before any download)."""
    found = existing_output(archive)
    if found is None:
        return
    when = "was written meanwhile by another pack" if meanwhile else "already exists"
    raise InvalidOptionsError(
        f"{found} {when}; EZ Runner does not replace an archive unless asked to.",
        hint="Pass --overwrite to replace it, or choose another output name (-o).",
    )


@contextlib.contextmanager
def output_lock(*, archive: Path, on_event: EventSink = ignore_events, cancel: Cancel | None = None) -> Iterator[None]:
    """Hold the lock of the output path ``archive`` (waiting, cancellably, for a pack that holds it).

    The lock file lives in the data folder, not beside the archive, so the output folder holds only
    what a pack leaves; the kernel releases the lock when its process ends, however it ends.
    """
    folder = default_data_dir() / "locks"
    lock_file = folder / (hashlib.sha256(str(archive).encode()).hexdigest()[:32] + ".lock")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ExportFailedError(
            f"Cannot create the lock file {lock_file}: {error.strerror or error}.",
            hint="Check that EZRUNNER_HOME (the data folder) is writable, then try again.",
        ) from error
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    waiting = True
                    on_event(Event(stage="export", message=f"Waiting for another pack writing {archive.name}"))
                _check_cancel(cancel)
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_disk(*, needs: Sequence[tuple[Path, int]]) -> None:
    """Fail before starting when any filesystem lacks room for what will be written to it."""
    by_device: dict[int, tuple[Path, Path, int]] = {}
    for path, size in needs:
        # Not made yet, relative, or through a symlink: the filesystem the files will land on.
        probe = disk_probe(path=path)
        dev = probe.stat().st_dev
        prev = by_device.get(dev, (path, probe, 0))
        by_device[dev] = (prev[0], prev[1], prev[2] + size)
    for path, probe, size in by_device.values():
        free = shutil.disk_usage(probe).free
        if free < size * _DISK_MARGIN:
            where = str(path) if Path(os.path.abspath(path)) == probe else f"{path} (on the filesystem of {probe})"
            raise DiskSpaceError(
                f"Not enough free disk at {where}: the pack needs about {size * _DISK_MARGIN / 2**30:.1f} GiB "
                f"there and {free / 2**30:.1f} GiB is free.",
                hint="Free some space, or write the archive elsewhere with -o /bigger/disk/model.tar.",
            )


def stage_context(*, spec: BuildSpec, model_dir: Path, context_dir: Path, include_model: bool) -> None:
    """Write the Dockerfile and hard-link each model file into ``layers/<layer>/<path>`` (copy across disks)."""
    context_dir.mkdir(parents=True, exist_ok=True)
    dockerfile = spec.dockerfile if include_model else spec.runtime_dockerfile
    (context_dir / "Dockerfile").write_text(dockerfile, encoding="utf-8")
    write_context_files(spec=spec, context_dir=context_dir)  # fixed modes and times: see core.render
    if not include_model:
        return
    for layer in spec.layers:
        for f in layer.files:
            src = (model_dir / f.path).resolve()  # hub caches keep symlinks to blobs: link the blob itself
            dst = context_dir / "layers" / layer.name / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _download_cache(source: str) -> Path:
    """Where the hub clients put downloads (their defaults, as they resolve them from the environment)."""
    if source == "hf":
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub")


def _write_sidecars(
    *, plan: Plan, spec: BuildSpec, archive: Path, parts: Sequence[Path], sha256: str, compression: Compression,
) -> tuple[Path, Path]:
    checksum_file = names.checksum_path(archive)
    checksum_file.write_text(f"{sha256}  {archive.name}\n", encoding="utf-8")
    # The parts list (NAME.parts.sha256) was written by the parts writer itself, with the parts.
    split = tuple(parts) != (archive,)  # a split archive may have one part only: it is still a split one
    script = render_load_script(
        plan=plan,
        spec=spec,
        archive_name=archive.name,
        parts=[p.name for p in parts] if split else (),
        compression=compression,
    )
    shared, own = names.load_script_candidates(archive)
    # Another archive's load.sh lives here: keep it and name ours after the archive.
    load_script = own if shared.exists() and not load_script_is_for(shared, archive_name=archive.name) else shared
    load_script.write_text(script, encoding="utf-8")
    load_script.chmod(0o755)
    return checksum_file, load_script


def pack(
    *,
    plan: Plan,
    output: Path,
    compression: Compression = "none",
    split_bytes: int | None = None,
    token: str | None = None,
    export_path: ExportPath | Literal["auto"] = "auto",
    dockerfile: str | None = None,
    work_dir: Path | None = None,
    history: History | None = None,
    overwrite: bool = False,
    sign_key: Path | None = None,
    archive_format: ArchiveFormat = "docker-archive",
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> Artifact:
    """Download the model, build the image, export it to ``output``; return what was written.

    An archive already at ``output`` is an error (raised before any download) unless ``overwrite``; a
    cancel (``cancel`` set, e.g. by the CLI's SIGINT/SIGTERM handler) stops every stage within seconds.

    ``export_path`` "auto" takes the fast path (the engine builds only the runtime image; the weights are
    streamed into the archive by ``core.image_archive``) unless ``dockerfile`` is a hand-edited
    Dockerfile, which only Docker itself can build as written. With ``history``, the pack is recorded
    when it starts and updated when it ends, whatever the outcome; the artifact carries the record id.
    With ``sign_key`` (an SSH key) the checksum file is signed (``core.signing``) as the last step.
    ``archive_format`` "oci-layout" writes an OCI image layout tar (``core.image_archive``) on the fast path.
    """
    if sign_key is not None:
        signing.check_sign_key(key=sign_key)  # before any download: a typo in the path costs nothing
    if not overwrite:  # before any download, and before a history row: nothing was tried yet
        refuse_existing_output(archive=output_paths(output=output.resolve(), compression=compression))
    if not plan.neighbours and dockerfile is None:
        # The profiles for nearby servers (core.profiles); a hand-edited Dockerfile keeps the ENTRYPOINT it
        # was rendered with, so its image keeps that render's profiles.
        plan = with_neighbours(plan=plan)
    request = _Request(
        plan=plan, output=output, compression=compression, split_bytes=split_bytes, token=token,
        export_path=export_path, dockerfile=dockerfile, work_dir=work_dir or default_data_dir() / "builds",
        overwrite=overwrite, sign_key=sign_key, archive_format=archive_format, cancel=cancel,
    )
    if history is None:
        return _pack(request, on_event=on_event)
    spec = render(plan=plan)
    record_id = history.start(
        model_id=plan.model.repo_id, source=plan.model.ref.source, revision=plan.model.revision,
        model_commit=plan.model.commit, target=target_summary(plan.target), plan=plan_to_dict(plan),
        dockerfile=dockerfile or spec.dockerfile, image_tag=spec.image_tag,
    )
    log: list[str] = []

    def recording(event: Event) -> None:
        if event.log:
            log.append(event.log.rstrip("\n"))
            del log[:-2000]
        on_event(event)

    try:
        artifact = _pack(request, on_event=recording)
    except CancelledError as exc:
        history.finish(record_id, outcome="cancelled", error=str(exc), log="\n".join(log))
        raise
    except KeyboardInterrupt:
        history.finish(record_id, outcome="cancelled", error="Interrupted.", log="\n".join(log))
        raise
    except BaseException as exc:
        history.finish(record_id, outcome="failed", error=str(exc), log="\n".join(log))
        raise
    history.finish(
        record_id, outcome="succeeded", log="\n".join(log), image_id=artifact.image_id, archive=artifact.archive,
        parts=artifact.parts, size=artifact.size, sha256=artifact.sha256, run_command=artifact.run_command,
    )
    return replace(artifact, record_id=record_id)


@dataclass(frozen=True)
class _Request:
    plan: Plan
    output: Path
    compression: Compression
    split_bytes: int | None
    token: str | None
    export_path: ExportPath | Literal["auto"]
    dockerfile: str | None
    work_dir: Path
    overwrite: bool
    cancel: Cancel | None
    sign_key: Path | None = None
    archive_format: ArchiveFormat = "docker-archive"


def choose_export_path(
    *, requested: ExportPath | Literal["auto"], spec: BuildSpec, dockerfile: str | None
) -> tuple[ExportPath, str]:
    """Which way the archive is made, and the reason shown to the user."""
    edited = dockerfile is not None and dockerfile != spec.dockerfile
    if requested == "fast" and edited:
        raise InvalidOptionsError(
            "The fast export path cannot build a hand-edited Dockerfile: it streams the model layers itself.",
            hint="Drop --export-path fast (the docker-build path is then used), or undo the edit.",
        )
    if edited:
        return "docker-build", "The Dockerfile was edited by hand, so Docker builds it as written (slower)."
    if requested == "docker-build":
        return "docker-build", "The docker-build path was asked for: docker build with the weights, then docker save."
    return "fast", (
        "Fast path: Docker builds the engine layers; the weights stream straight into the archive. Reproducible: "
        "the same model, plan and options packed again on this Docker engine give the same sha256."
    )


@dataclass(frozen=True)
class _Exported:
    image_id: str
    paths: tuple[Path, ...]
    size: int
    sha256: str
    part_sha256: tuple[str, ...]
    sbom: bytes


def _pack(request: _Request, *, on_event: EventSink) -> Artifact:
    started = time.monotonic()
    cancel = request.cancel
    if request.split_bytes is not None and request.split_bytes < (1 << 20):
        raise InvalidOptionsError(
            f"--split {request.split_bytes} bytes is too small.", hint="Use a size such as 4G (FAT32 sticks) or 1G."
        )
    split_bytes = request.split_bytes
    if split_bytes == FAT32_LIMIT + 1:
        # "4G" means "fits a FAT32 stick", whose files stop one byte short of 4 GiB: keep a MiB of room.
        split_bytes = FAT32_LIMIT + 1 - (1 << 20)
    plan = request.plan
    archive = output_paths(output=request.output.resolve(), compression=request.compression)
    conversion = conversion_of(plan)
    if conversion is not None:
        convert.check_converter()  # before any download: the workstation must be able to convert
    spec = render(plan=plan)
    path, reason = choose_export_path(requested=request.export_path, spec=spec, dockerfile=request.dockerfile)
    _check_format(archive_format=request.archive_format, path=path)
    model = plan.model
    source = download_model(plan)

    on_event(Event(stage="check", message="Checking Docker, the base image and free disk"))
    client = docker_api.connect()
    docker_root = Path(client.info().get("DockerRootDir", "/var/lib/docker"))
    needs = [(archive.parent, model.total_bytes)]
    if path == "docker-build":
        needs.append((docker_root, model.total_bytes))  # the weights layers land in Docker's store too
    if source.ref.source != "local":
        needs.append((_download_cache(source.ref.source), source.total_bytes))
    if conversion is not None:
        needs.append((default_data_dir(), model.total_bytes * 2))  # the first conversion, then the quantized file
    check_disk(needs=needs)
    on_event(Event(stage="check", message=reason))
    _check_cancel(cancel)

    # The engine image first (the build itself never pulls): a missing one is pulled with progress.
    dockerfile_text = request.dockerfile if path == "docker-build" and request.dockerfile else spec.dockerfile
    docker_api.ensure_images(
        refs=docker_api.dockerfile_base_images(dockerfile_text), on_event=on_event, cancel=cancel, client=client
    )
    model_dir = until_cancelled(
        lambda: hubs.download(model=source, token=request.token, on_event=on_event, cancel=cancel),
        cancel=cancel, grace_s=DOWNLOAD_STOP_GRACE_S, name="pack-download",
    )
    _check_cancel(cancel)
    if conversion is not None:
        model_dir, plan = _convert(plan=plan, conversion=conversion, model_dir=model_dir, client=client,
                                   on_event=on_event, cancel=cancel)  # fmt: skip
        spec = render(plan=plan)

    export = _Export(
        client=client, plan=plan, spec=spec, model_dir=model_dir, archive=archive, compression=request.compression,
        split_bytes=split_bytes, work_dir=request.work_dir, archive_format=request.archive_format,
        on_event=on_event, cancel=cancel,
    )
    # One pack at a time writes to this name, so parts and sidecars never mix two packs' files.
    with output_lock(archive=archive, on_event=on_event, cancel=cancel):
        if not request.overwrite:
            refuse_existing_output(archive=archive, meanwhile=True)
        if path == "fast":
            try:
                exported = export.fast()
            except LayerCacheUnusableError as error:
                # An engine whose `docker save` layout we cannot cache from: the reference path still works.
                _check_format(archive_format=request.archive_format, path="docker-build", why=error.message)
                path = "docker-build"
                reason = f"{error.message} Falling back to the docker-build path (slower)."
                on_event(Event(stage="check", message=reason))
                exported = export.docker_build(dockerfile=None)
        else:
            exported = export.docker_build(dockerfile=request.dockerfile)
        remove_stale_pieces(archive=archive, keep=exported.paths)
        sbom_file = names.sbom_path(archive)
        sbom_file.write_bytes(exported.sbom)
        checksum_file, load_script = _write_sidecars(
            plan=plan, spec=spec, archive=archive, parts=exported.paths, sha256=exported.sha256,
            compression=request.compression,
        )
        signature = None
        if request.sign_key is not None:
            on_event(Event(stage="export", message=f"Signing {checksum_file.name} with {request.sign_key}"))
            signature = signing.sign_archive(archive=archive, key=request.sign_key)
        else:  # an earlier pack's signature would not match this checksum
            names.signature_path(archive).unlink(missing_ok=True)
    wrote = (  # the files on disk: a split archive has no file of its own name
        f"Wrote {archive}" if len(exported.paths) == 1 and exported.paths[0] == archive
        else f"Wrote {', '.join(p.name for p in exported.paths)} in {archive.parent}"
    )  # fmt: skip
    on_event(Event(stage="done", done=exported.size, total=exported.size, unit="B", message=wrote))
    return Artifact(
        archive=archive,
        parts=exported.paths,
        size=exported.size,
        sha256=exported.sha256,
        checksum_file=checksum_file,
        load_script=load_script,
        image_tag=spec.image_tag,
        image_id=exported.image_id,
        run_command=spec.run_command(),
        compression=request.compression,
        export_path=path,
        export_reason=reason,
        seconds=time.monotonic() - started,
        signature=signature,
        sbom=sbom_file,
        format=request.archive_format,
    )


@dataclass(frozen=True)
class _Export:
    """The two ways from downloaded files to the archive on disk."""

    client: DockerClient
    plan: Plan
    spec: BuildSpec
    model_dir: Path
    archive: Path
    compression: Compression
    split_bytes: int | None
    work_dir: Path
    on_event: EventSink
    cancel: Cancel | None
    archive_format: ArchiveFormat = "docker-archive"

    def _build(self, *, include_model: bool, tag: str, dockerfile: str | None = None, sbom: bytes = b"") -> str:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="context-", dir=self.work_dir) as tmp:
            context = Path(tmp)
            if include_model:
                self.on_event(Event(stage="stage", message="Linking model files into the build context"))
                write_sbom_file(sbom=sbom, context_dir=context)
            stage_context(spec=self.spec, model_dir=self.model_dir, context_dir=context, include_model=include_model)
            if dockerfile is not None:
                (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
            _check_cancel(self.cancel)
            return docker_api.build_image(
                client=self.client, context_dir=context, tag=tag, on_event=self.on_event, cancel=self.cancel
            )

    def _runtime(self) -> RuntimeLayers:
        """The engine-only image (the Dockerfile without the model), built (cached) and its layers cached."""
        runtime_id = self._build(include_model=False, tag=runtime_tag(self.spec))
        return runtime_layers(
            client=self.client, image_id=runtime_id, cache_dir=default_data_dir() / "layer-cache",
            on_event=self.on_event, cancel=self.cancel,
        )

    def _sbom(self, runtime: RuntimeLayers) -> bytes:
        """The SBOM of the engine image ``runtime`` and the model (``core.sbom``), as it goes into the image."""
        self.on_event(Event(stage="export", message="Listing the image's packages and model files (SBOM)"))
        packages, distro = sbom.image_packages(layer_tars=runtime.blobs)
        model = self.plan.model
        return sbom.build_sbom(
            sbom.SbomInputs(
                image_tag=self.spec.image_tag, base_image=self.plan.base_image, engine=self.plan.engine,
                hub=model.ref.source, repo_id=model.repo_id, revision=model.revision, commit=model.commit,
                license=model.license, model_files=sbom.model_file_entries(files=model.files, folder=self.model_dir),
                packages=packages, distro=distro, plan=plan_to_dict(self.plan), ezrunner_version=ezrunner_version(),
            )
        )  # fmt: skip

    def docker_build(self, *, dockerfile: str | None) -> _Exported:
        """The reference path: docker build with the weights, then docker save.

        The SBOM's packages are read from the engine-only image of the generated Dockerfile (built from
        the same steps, so Docker's build cache shares them); a hand-edited Dockerfile that drops the
        SBOM's COPY line still gets the SBOM beside the archive."""
        document = self._sbom(self._runtime())
        image_id = self._build(include_model=True, tag=self.spec.image_tag, dockerfile=dockerfile, sbom=document)
        written = docker_api.save_image(
            client=self.client, ref=self.spec.image_tag, out=self.archive, compress=self.compression,
            split_bytes=self.split_bytes, on_event=self.on_event, cancel=self.cancel,
        )
        return _Exported(
            image_id, tuple(written.paths), written.size, written.sha256, tuple(written.part_sha256), document
        )

    def fast(self) -> _Exported:
        """Docker builds the engine layers (cached); the weights are streamed into the archive here."""
        runtime = self._runtime()
        document = self._sbom(runtime)
        with tempfile.TemporaryDirectory(prefix="sbom-", dir=self.work_dir) as tmp:
            sbom_file = write_sbom_file(sbom=document, context_dir=Path(tmp))
            return self._write_fast(runtime=runtime, sbom_file=sbom_file, document=document)

    def _write_fast(self, *, runtime: RuntimeLayers, sbom_file: Path, document: bytes) -> _Exported:
        sources = [ModelLayerSource(layer=layer, folder=self.model_dir) for layer in self.spec.layers]
        # The SBOM's layer, where the Dockerfile's `COPY sbom/ /etc/ezrunner/` puts it: after the model's.
        sbom_layer = WeightLayer(name=SBOM_LAYER, files=(ModelFile(path=sbom_file.name, size=len(document)),))
        sources.append(ModelLayerSource(layer=sbom_layer, folder=sbom_file.parent, root=sbom.IMAGE_FOLDER))
        size = exact_archive_size(
            runtime=runtime, model_root=self.spec.model_root, layers=sources, repo_tag=self.spec.image_tag,
            format=self.archive_format,
        )
        check_disk(needs=[(self.archive.parent, size)])
        result = write_image_archive(
            runtime=runtime, model_root=self.spec.model_root, layers=sources, repo_tag=self.spec.image_tag,
            out=self.archive, compress=self.compression, split_bytes=self.split_bytes, format=self.archive_format,
            on_event=self.on_event, cancel=self.cancel,
        )
        return _Exported(
            result.image_id, tuple(result.paths), result.size, result.sha256, tuple(result.part_sha256), document
        )


def _check_format(*, archive_format: ArchiveFormat, path: ExportPath, why: str = "") -> None:
    """The OCI layout is written by the fast path's writer only (``docker save`` writes docker-archives)."""
    if archive_format == "oci-layout" and path == "docker-build":
        raise InvalidOptionsError(
            f"--format oci-layout is written by the fast export path only, and this pack takes the docker-build "
            f"path{': ' + why if why else ''}.",
            hint="Drop --format oci-layout (the docker-archive tar loads into Docker, and `skopeo copy "
            "docker-archive:NAME.tar oci:DIR` converts it), or pack without --dockerfile / --export-path docker-build.",
            field=errors.ARCHIVE_FORMAT,
        )


def conversion_of(plan: Plan) -> convert.Conversion | None:
    """The GGUF conversion a llama.cpp plan of a safetensors model asks for (None: nothing to convert)."""
    settings = plan.settings.get("convert")
    if not isinstance(settings, dict):
        return None
    return convert.Conversion(
        quant=str(settings["quant"]), output_name=str(settings["output"]), pre_tokenizer=settings.get("pre_tokenizer")
    )


def download_model(plan: Plan) -> ModelInfo:
    """What the hub must deliver: the packed files, or, for a conversion, the safetensors it starts from."""
    settings = plan.settings.get("convert")
    if not isinstance(settings, dict):
        return plan.model
    files = tuple(ModelFile(path=f["path"], size=int(f["size"]), sha256=f.get("sha256")) for f in settings["download"])
    return replace(plan.model, files=files, format="safetensors", gguf=None)


def quantize_runner(*, client: DockerClient, on_event: EventSink, cancel: Cancel | None) -> convert.QuantizeRunner:
    """llama-quantize in the offline llama.cpp image when this engine has it, else in ggml-org's full image."""
    if docker_api.image_exists(ref=LLAMA_CPP_OFFLINE_IMAGE, client=client):
        return convert.ContainerQuantize(image=LLAMA_CPP_OFFLINE_IMAGE)
    docker_api.ensure_images(refs=[LLAMA_CPP_TOOLS_IMAGE], on_event=on_event, cancel=cancel, client=client)
    return convert.ContainerQuantize(image=LLAMA_CPP_TOOLS_IMAGE, binary=LLAMA_CPP_TOOLS_QUANTIZE)


def _convert(
    *, plan: Plan, conversion: convert.Conversion, model_dir: Path, client: DockerClient, on_event: EventSink,
    cancel: Cancel | None,
) -> tuple[Path, Plan]:
    """Convert the downloaded safetensors; return the folder of the packed files and the plan with their
    real sizes (the plan only estimated the GGUF's)."""
    quantize = None if conversion.direct else quantize_runner(client=client, on_event=on_event, cancel=cancel)
    estimated = int(plan.settings["convert"].get("estimated_bytes") or 0) or None
    gguf = convert.convert(
        model_dir=model_dir, conversion=conversion, data_dir=default_data_dir(), commit=plan.model.commit,
        quantize=quantize, expected_bytes=estimated, on_event=on_event, cancel=cancel,
    )  # fmt: skip
    folder = gguf.parent
    files = []
    for packed in plan.model.files:
        target = folder / packed.path
        if packed.path != gguf.name and not target.exists():  # licence and model card travel with the GGUF
            try:
                os.link((model_dir / packed.path).resolve(), target)
            except OSError:
                shutil.copy2(model_dir / packed.path, target)
        files.append(replace(packed, size=target.stat().st_size, sha256=None))
    return folder, replace(plan, model=replace(plan.model, files=tuple(files)))


def remove_stale_pieces(*, archive: Path, keep: Sequence[Path]) -> None:
    """Delete what an earlier pack to the same name left (the whole file, or more parts than now), so
    that ``run``, ``load.sh`` and the download route never mix old pieces with new ones."""
    kept = {p.resolve() for p in keep}
    candidates = [archive, *names.numbered_parts(archive)]
    for stale in candidates:
        if stale.resolve() not in kept and stale.is_file():
            stale.unlink()
    if tuple(keep) == (archive,):  # a whole archive has no parts list (a split one's is rewritten)
        names.parts_checksum_path(archive).unlink(missing_ok=True)


def runtime_tag(spec: BuildSpec) -> str:
    """The engine-only image the fast path builds; tagged so it stays cached between packs."""
    return f"{spec.image_tag}-runtime"

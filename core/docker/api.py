"""The Docker engine's API as EZ Runner uses it: connect, images (exists, pull, size, remove), build, save, load.

Every public function is keyword-only, takes an optional ``client`` (``connect()`` is called when it is
missing) and turns docker-py and socket errors into ``core.errors`` classes whose messages say what to
do next. Long steps report ``Event``s and stop at the next chunk once their ``Cancel`` is set, leaving
no partial file or half-built image behind. Containers are in ``core.docker.containers``; the archive
bytes ``save_image`` writes and ``load_image`` reads go through ``core.archive``, so ``load_image``
accepts plain, zstd and split archives even on engines whose ``docker load`` predates zstd (20.10).
"""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from docker import DockerClient
from docker.utils import parse_repository_tag

from core.archive.compression import Compression
from core.archive.reader import read_stream
from core.archive.writer import Written, write_stream
from core.errors import (
    ArtifactInvalidError,
    BaseImageMissingError,
    BuildFailedError,
    CancelledError,
    DiskSpaceError,
    DockerTooOldError,
    DockerUnavailableError,
    ExportFailedError,
    EzRunnerError,
)
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled

#: The oldest engine API we test against (Docker Engine 20.10, Debian 12's docker.io).
MINIMUM_API_VERSION = "1.41"
#: Seconds docker-py waits for one socket read. Large: a build step copying tens of GB of weights, or
#: the daemon preparing a save, can be silent for minutes.
CLIENT_TIMEOUT_S = 3600
#: Bytes per chunk of a ``docker save`` stream.
CHUNK_BYTES = 8 << 20
#: Build output lines kept for an error message (and container log lines, in ``core.docker.containers``).
LOG_TAIL_LINES = 30
#: Label put on what EZ Runner builds and runs, so that tests and clean-ups can find it.
LABEL = "ezrunner"

T = TypeVar("T")

_START_HINT = (
    "Start it with `sudo systemctl start docker` (or start Docker Desktop), check that "
    "`docker info` works for your user, then try again."
)


# CONNECTING


def connect(*, timeout: int = CLIENT_TIMEOUT_S) -> DockerClient:
    """A client for the engine named by DOCKER_HOST (or the default socket), checked to be new enough."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as error:
        raise DockerUnavailableError(
            f"Docker is not running or cannot be reached ({short_error(error)}).", hint=_START_HINT
        ) from error
    api_version = client.api.api_version
    if _version_tuple(api_version) < _version_tuple(MINIMUM_API_VERSION):
        client.close()
        raise DockerTooOldError(
            f"This Docker engine speaks API {api_version}; EZ Runner needs {MINIMUM_API_VERSION} "
            "(Docker Engine 20.10) or newer.",
            hint="Upgrade Docker (https://docs.docker.com/engine/install/) and try again.",
        )
    return client


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def short_error(error: BaseException) -> str:
    """The first line of ``error``'s text (at most 300 characters), for a one-line message."""
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


@contextlib.contextmanager
def engine_errors(*, action: str) -> Iterator[None]:
    """Turn a lost connection to the engine into DockerUnavailableError; let our own errors through."""
    try:
        yield
    except EzRunnerError:
        raise
    except (requests.exceptions.ConnectionError, ConnectionError) as error:
        raise DockerUnavailableError(
            f"Lost the connection to Docker while trying to {action} ({short_error(error)}).", hint=_START_HINT
        ) from error


# IMAGES


def image_exists(*, ref: str, client: DockerClient | None = None) -> bool:
    client = client or connect()
    with engine_errors(action=f"look for image {ref}"):
        try:
            client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True


def require_image(*, ref: str, client: DockerClient | None = None) -> None:
    """Raise BaseImageMissingError, with the ways to get ``ref`` onto this machine, when it is absent."""
    if not image_exists(ref=ref, client=client):
        raise BaseImageMissingError(
            f"The base image {ref} is not on this machine, and EZ Runner never pulls images while it builds.",
            hint=(
                f"On a machine with internet run `docker pull {ref}`; or copy it here with "
                f"`docker save {ref} -o base.tar` there and `docker load -i base.tar` here; or, for the "
                "CPU transformers image, build it offline with `scripts/offline-base-images`."
            ),
        )


def pull_image(
    *, ref: str, on_event: EventSink = ignore_events, cancel: Cancel | None = None, client: DockerClient | None = None
) -> None:
    """Pull ``ref`` from its registry, reporting bytes as Event(stage="pull", unit="B").

    Raises BaseImageMissingError naming what the registry said and the offline ways to get the image
    when the pull fails (no network, unknown tag, a registry that needs a mirror).
    """
    client = client or connect()
    repository, tag = parse_repository_tag(ref)
    layers: dict[str, tuple[int, int]] = {}  # layer id → (bytes downloaded, layer size)
    on_event(Event(stage="pull", message=f"Pulling {ref}"))
    try:
        for chunk in client.api.pull(repository, tag=tag, stream=True, decode=True):
            raise_if_cancelled(
                cancel, message=f"The pull of {ref} was cancelled.", hint="Start the pack again when ready."
            )
            if "error" in chunk:
                raise _pull_failed(ref, str(chunk["error"]))
            status, layer, detail = chunk.get("status", ""), chunk.get("id"), chunk.get("progressDetail") or {}
            if layer and status == "Downloading" and detail.get("total"):
                layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
            elif layer and status in ("Download complete", "Already exists", "Pull complete") and layer in layers:
                layers[layer] = (layers[layer][1], layers[layer][1])
            if layers:
                done = sum(current for current, _ in layers.values())
                total = sum(size for _, size in layers.values())
                on_event(Event(stage="pull", done=done, total=total, unit="B", message=f"Pulling {ref}"))
            if status and status not in ("Downloading", "Extracting"):
                on_event(Event(stage="pull", log=f"{layer}: {status}" if layer else status))
    except docker.errors.APIError as error:
        raise _pull_failed(ref, short_error(error)) from error
    except requests.exceptions.ConnectionError as error:
        raise DockerUnavailableError(
            f"The connection to Docker broke while pulling {ref}.", hint="Check that Docker still runs, then retry."
        ) from error
    if not image_exists(ref=ref, client=client):
        raise _pull_failed(ref, "the registry answered, but the image did not arrive")


def _pull_failed(ref: str, reason: str) -> BaseImageMissingError:
    return BaseImageMissingError(
        f"Docker could not pull the base image {ref}: {reason}.",
        hint=(
            "Behind a firewall or in mainland China? Set a registry mirror (`registry-mirrors` in "
            "/etc/docker/daemon.json, then restart Docker), or name a mirrored copy with --base-image, or "
            f"`docker load` a saved copy of {ref}; for the CPU transformers image, `scripts/offline-base-images` "
            "builds one with no registry."
        ),
    )


def ensure_images(
    *, refs: Sequence[str], on_event: EventSink = ignore_events, cancel: Cancel | None = None,
    client: DockerClient | None = None,
) -> None:
    """Pull each of ``refs`` that is not on this machine yet (the builder itself never pulls)."""
    client = client or connect()
    for ref in dict.fromkeys(refs):
        if not image_exists(ref=ref, client=client):
            pull_image(ref=ref, on_event=on_event, cancel=cancel, client=client)


def image_size(*, ref: str, client: DockerClient | None = None) -> int:
    """The image's size as the engine reports it (a docker save tar is slightly larger)."""
    client = client or connect()
    with engine_errors(action=f"inspect image {ref}"):
        return int(_get_image(client, ref).attrs.get("Size") or 0)


def remove_image(*, ref: str, force: bool = False, client: DockerClient | None = None) -> None:
    """Remove an image (and its untagged parents); an image that is already gone is fine."""
    client = client or connect()
    with engine_errors(action=f"remove image {ref}"), contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, force=force)


def _get_image(client: DockerClient, ref: str) -> Any:
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound as error:
        raise ArtifactInvalidError(
            f"There is no image {ref} in Docker on this machine.",
            hint="Check the name with `docker images`, or build the image again.",
        ) from error


# BUILD

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})\s*$")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12,64})\s*$")
_BUILT = re.compile(r"^Successfully built ([0-9a-f]{12,64})\s*$")
_FROM = re.compile(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE | re.MULTILINE)
# Lines of the classic builder about its own containers and layers: no help in finding why a build failed.
_BOOKKEEPING = re.compile(r"^(?: ---> |Removing intermediate container )")


def build_failure_text(*, summary: str, tail: Iterable[str]) -> str:
    """``summary`` on the first line, then the build's last output lines, each on its own line; the hint
    the error appends starts on a line of its own too."""
    lines = list(tail)
    return f"{summary}\nLast build output:\n" + "\n".join(lines) + "\n" if lines else summary


@dataclass(frozen=True)
class BuildStep:
    """One "Step n/N : INSTRUCTION" line of the classic builder."""

    number: int
    total: int
    instruction: str


def parse_build_step(line: str) -> BuildStep | None:
    """The step a classic-builder output line announces, or None for any other line."""
    match = _STEP.match(line.strip("\r\n"))
    if match is None:
        return None
    return BuildStep(number=int(match[1]), total=int(match[2]), instruction=match[3].strip())


def dockerfile_base_images(text: str) -> list[str]:
    """The images a Dockerfile's FROM lines name, without earlier stages, ``scratch`` or ARG values."""
    stages: set[str] = set()
    images: list[str] = []
    for match in _FROM.finditer(text):
        image, stage = match[1], match[2]
        if image.lower() != "scratch" and image.lower() not in stages and "$" not in image:
            images.append(image)
        if stage:
            stages.add(stage.lower())
    return images


def build_image(
    *,
    context_dir: Path,
    tag: str,
    labels: Mapping[str, str] | None = None,
    build_args: Mapping[str, str] | None = None,
    dockerfile: str = "Dockerfile",
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
) -> str:
    """Build ``context_dir`` with the classic builder, never pulling, and return the image id.

    Reports Event(stage="build", done=n, total=N, unit="step") for each "Step n/N" and every output line
    as Event.log. A failed build raises BuildFailedError with the last output lines; a cancelled one
    raises CancelledError. Either way the intermediate images it made are removed.
    """
    client = client or connect()
    dockerfile_path = context_dir / dockerfile
    if not dockerfile_path.is_file():
        raise BuildFailedError(
            f"There is no {dockerfile} in {context_dir}.", hint="Render the build context again, then retry."
        )
    for base in dockerfile_base_images(dockerfile_path.read_text(encoding="utf-8")):
        require_image(ref=base, client=client)

    def start() -> Iterator[dict[str, Any]]:
        # docker-py tars the context (weights included) and uploads it inside this call, so it runs
        # in _cancellable's thread too: a cancel does not wait for the upload.
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context_dir),
            tag=tag,
            dockerfile=dockerfile,
            labels={LABEL: "1", **(labels or {})},
            buildargs=dict(build_args or {}),
            decode=True,
            rm=True,
            forcerm=True,
            pull=False,
        )
        return stream

    sending = "Sending the build context to Docker"
    on_event(Event(stage="build", unit="step", message=sending, log=sending))
    with engine_errors(action=f"build {tag}"), _responses(client, "/build") as responses:
        return _follow_build(
            client, start, tag=tag, on_event=on_event, cancel=cancel, hang_up=lambda: _hang_up(responses)
        )


@contextlib.contextmanager
def _responses(client: DockerClient, path: str) -> Iterator[list[requests.Response]]:
    """The HTTP responses of requests to ``path`` made inside the block, so that they can be hung up."""
    caught: list[requests.Response] = []

    def catch(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if path in (response.request.path_url or ""):
            caught.append(response)

    client.api.hooks["response"].append(catch)
    try:
        yield caught
    finally:
        client.api.hooks["response"].remove(catch)


def _hang_up(responses: Sequence[requests.Response]) -> None:
    """Close streaming responses so the engine sees the client leave and stops (a build is cancelled).

    shutdown() rather than close(): it also wakes a thread blocked reading the socket.
    """
    for response in responses:
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        with contextlib.suppress(OSError, AttributeError):
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()


def _follow_build(
    client: DockerClient,
    start: Callable[[], Iterable[dict[str, Any]]],
    *,
    tag: str,
    on_event: EventSink,
    cancel: Cancel | None,
    hang_up: Callable[[], None],
) -> str:
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    step: BuildStep | None = None
    running_container: str | None = None
    layers: list[str] = []  # intermediate images, removed if the build does not finish
    image_id: str | None = None

    def clean_up() -> None:
        if running_container:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                client.api.remove_container(running_container, force=True)
        for layer in reversed(layers):
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                # an image someone tagged (a cache hit shared with another build) stays
                if not client.api.inspect_image(layer).get("RepoTags"):
                    client.api.remove_image(layer, noprune=False)

    chunks = _cancellable(start, cancel, on_stop=hang_up)
    try:
        for chunk in chunks:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(chunk.get("error") or detail.get("message") or "unknown error").strip()
                where = f" at step {step.number}/{step.total} ({step.instruction})" if step else ""
                clean_up()
                raise BuildFailedError(
                    build_failure_text(summary=f"Docker could not build {tag}{where}: {message}", tail=tail),
                    hint="Fix the cause shown above (often disk space or a missing base image), then retry.",
                )
            if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                image_id = str(chunk["aux"]["ID"])
            text = chunk.get("stream") or chunk.get("status")
            if not text:
                continue
            for line in str(text).splitlines():
                if not line.strip():
                    continue
                if not _BOOKKEEPING.match(line):
                    tail.append(line)  # the last LOG_TAIL_LINES of the build's own output
                parsed = parse_build_step(line)
                if parsed:
                    step = parsed
                    running_container = None
                if match := _RUNNING_IN.match(line):
                    running_container = match[1]
                elif match := _LAYER.match(line):
                    # the layer a FROM step prints is the base image itself: never ours to remove
                    if step is None or not step.instruction.upper().startswith("FROM"):
                        layers.append(match[1])
                    running_container = None
                elif match := _BUILT.match(line):
                    image_id = image_id or match[1]
                on_event(
                    Event(
                        stage="build",
                        done=step.number if step else 0,
                        total=step.total if step else None,
                        unit="step",
                        message=step.instruction if step else "",
                        log=line,
                    )
                )
    except CancelledError:
        clean_up()
        raise
    except (docker.errors.APIError, requests.exceptions.RequestException) as error:
        if isinstance(error, requests.exceptions.ConnectionError):
            raise
        clean_up()
        raise BuildFailedError(
            build_failure_text(summary=f"Docker could not build {tag}: {short_error(error)}", tail=tail),
            hint="Fix the cause shown above, then retry.",
        ) from error
    finally:
        chunks.close()
    if image_id is None:
        clean_up()
        raise BuildFailedError(
            build_failure_text(summary=f"Docker ended the build of {tag} without an image id.", tail=tail),
            hint="Retry; if it happens again, run `docker build` by hand in the build folder to see why.",
        )
    return str(client.images.get(tag).id)


def _cancellable(
    start: Callable[[], Iterable[T]],
    cancel: Cancel | None,
    *,
    on_stop: Callable[[], None],
    poll_s: float = 0.25,
    buffer: int = 4,
) -> Generator[T, None, None]:
    """The items of ``start()``, produced in a thread so that ``cancel`` is seen while the engine is silent
    (a build step copying weights, a save the engine is still preparing).

    When the consumer stops early (cancel, error, or simply not reading on), ``on_stop`` hangs up the
    engine's stream; it runs again in the producing thread if that thread was still waiting for the
    engine, so a response that arrives late is hung up too. At most ``buffer`` items wait in memory.
    """
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=buffer)
    stop = threading.Event()
    finished = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=poll_s)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in start():
                if not put(("item", item)):
                    break
            else:
                put(("end", None))
        except BaseException as error:  # handed to the consuming thread, which raises it
            put(("error", error))
        finally:
            if stop.is_set():
                with contextlib.suppress(Exception):
                    on_stop()
            finished.set()

    threading.Thread(target=produce, name="docker-stream", daemon=True).start()
    completed = False
    try:
        while True:
            raise_if_cancelled(cancel, hint="Nothing was kept; start again when you are ready.")
            try:
                kind, value = items.get(timeout=poll_s)
            except queue.Empty:
                continue
            if kind == "end":
                completed = True
                return
            if kind == "error":
                raise value
            yield value
    finally:
        if not completed:
            stop.set()
            on_stop()
            # Give the producer a moment to see the hang-up. It may be blocked until the engine answers
            # (a save being staged): it hangs up on its own then, so there is no point in waiting long.
            finished.wait(timeout=2)


# SAVE AND LOAD


def save_image(
    *,
    ref: str,
    out: Path,
    compress: Compression = "none",
    split_bytes: int | None = None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
) -> Written:
    """``docker save`` ``ref`` (with its tag) to ``out``, streamed, with sha256 and progress.

    Nothing is left at ``out`` unless the whole image was written.
    """
    client = client or connect()
    with engine_errors(action=f"save image {ref}"):
        image = _get_image(client, ref)
        size = int(image.attrs.get("Size") or 0)
        try:
            from core.hardware import free_disk_bytes

            free = free_disk_bytes(path=out.parent)
        except Exception:  # the check is a courtesy; writing reports a full disk anyway
            free = None
        if free is not None and size and compress == "none" and free < size:
            raise DiskSpaceError(
                f"Saving {ref} needs about {size / 2**30:.1f} GiB but {out.parent} has {free / 2**30:.1f} GiB free.",
                hint="Free some space or choose another output folder.",
            )
        with _responses(client, "/get") as responses:
            # Docker 20.10 stages the whole archive before the first byte (about 10 s per GB): say
            # so, and read in a thread so that a cancel is seen meanwhile.
            on_event(Event(stage="export", done=0, total=size or None, unit="B", message="Docker is preparing"))
            named = ref if ref in image.tags else True
            chunks = _cancellable(
                lambda: image.save(chunk_size=CHUNK_BYTES, named=named),
                cancel,
                on_stop=lambda: _hang_up(responses),
            )
            try:
                return write_stream(
                    chunks,
                    out,
                    compress=compress,
                    split_bytes=split_bytes,
                    total=size,
                    stage="export",
                    on_event=on_event,
                    cancel=cancel,
                )
            except (
                docker.errors.APIError,
                requests.exceptions.ReadTimeout,
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                _hang_up(responses)
                raise ExportFailedError(
                    f"Docker stopped while saving {ref}: {short_error(error)}.",
                    hint="Check `docker info` and the free space of Docker's data folder, then try again.",
                ) from error
            except BaseException:
                _hang_up(responses)  # stop the engine from tarring the rest of the image
                raise
            finally:
                chunks.close()


_LOADED = re.compile(r"^Loaded image(?: ID)?: (\S+)\s*$")


def load_image(
    *,
    tar: Path,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
) -> list[str]:
    """``docker load`` an archive (plain, zstd or split) streamed from disk; returns the refs loaded."""
    client = client or connect()
    body = read_stream(tar, stage="load", on_event=on_event, cancel=cancel)
    loaded: list[str] = []
    with engine_errors(action=f"load {tar}"):
        try:
            for chunk in client.api.load_image(body):
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
                    raise ArtifactInvalidError(
                        f"Docker could not load {tar}: {message}.",
                        hint="Check that it is an archive EZ Runner (or `docker save`) made and that it "
                        "was copied whole (compare its sha256).",
                    )
                for line in str(chunk.get("stream") or "").splitlines():
                    if match := _LOADED.match(line):
                        loaded.append(match[1])
                        on_event(Event(stage="load", message=line, log=line))
        except docker.errors.APIError as error:
            raise ArtifactInvalidError(
                f"Docker could not load {tar}: {short_error(error)}.",
                hint="Check that it is a whole image archive (compare its sha256 with the one recorded).",
            ) from error
        except requests.exceptions.ConnectionError as error:
            # read_stream raising (cancel, bad zstd) aborts the upload, which requests reports as a
            # connection error: raise the real cause instead.
            if isinstance(error.__context__, EzRunnerError):
                raise error.__context__ from None
            raise
    if not loaded:
        raise ArtifactInvalidError(
            f"Docker read {tar} but reported no image in it.",
            hint="Check that the file is a `docker save` archive.",
        )
    return loaded



"""The wizard's test drive: packed images started on this machine, chats streamed from them, two compared.

``SERVERS`` is process-wide (every tab of one ``ezrunner ui`` sees the same servers): a start is a job of
``core.jobs`` (load the archive when the image is gone, start it as its run spec says, wait for health), a
stop removes the container. Each container the test drive starts carries ``ROLE_LABEL`` and
``OWNER_LABEL`` (this host and process): the servers of this process are removed when it exits, and
``remove_orphans`` removes those a killed wizard left behind, so a test drive never holds memory, a port or a
name after the wizard is gone.

A chat is a ``ChatRun``: one streamed chat completion in a thread, its text readable while it grows (the
page repaints it as tokens arrive). A ``Comparison`` sends one prompt to two packs: side by side when both
fit in the memory free now, else one after the other, each server stopped before the next starts. Both are
kept by id in ``LIVE`` once started, so that a refreshed browser tab (a new session of the page) follows the
answer it sent before the refresh.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from docker import DockerClient

from core.archive import names
from core.bench import Message, RequestSample, Target, chat_pieces, drain_chat, server_session
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.errors import CancelledError, EzRunnerError, TargetNotFoundError
from core.events import Cancel, EventSink
from core.hardware import FreeMemory
from core.history import PackRecord
from core.jobs import REGISTRY, Job, JobRegistry
from core.run import RunningServer, run_archive, start_image
from core.runspec import Network

ROLE_LABEL = "io.ezrunner.role"
OWNER_LABEL = "io.ezrunner.owner"
ROLE = "try"
#: A chat's answer is read with this timeout between chunks: a CPU engine can think long before a token.
CHAT_READ_TIMEOUT_S = 300.0
# Room kept free beside what two servers need before they run side by side: the OS, the wizard, page cache.
RAM_HEADROOM_BYTES = 1 << 30
GPU_HEADROOM_BYTES = 512 << 20
# A CUDA server's own host memory (driver, Python or the C++ runtime), where no bench has measured it yet.
GPU_SERVER_HOST_RAM_BYTES = 2 << 30


# WHAT TO START


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def target_of(*, record: PackRecord, client: DockerClient | None = None) -> Target:
    """What starts ``record``: its image when the engine still has it (no load needed), else its archive.
    TargetNotFoundError, naming both and the next step, when neither is left."""
    if record.outcome != "succeeded":
        how = "is still running" if record.outcome == "running" else f"ended as {record.outcome}"
        raise TargetNotFoundError(
            f"Pack {record.id[:8]} of {record.model_id} {how}: there is no image to try.",
            hint="Pick a pack that succeeded, or build one on the Build page.",
        )
    if record.image_tag and docker_api.image_exists(ref=record.image_tag, client=client or docker_api.connect()):
        return Target(text=record.image_tag, image=record.image_tag)
    if record.archive:
        archive = Path(record.archive)
        if archive.is_file() or names.part_path(archive, 0).is_file():
            return Target(text=str(archive), archive=archive)
    raise TargetNotFoundError(
        f"The image {record.image_tag or '(none recorded)'} of {record.model_id} is no longer in Docker, and its "
        f"archive {record.archive or '(none recorded)'} is gone too.",
        hint="Load the archive where you moved it (load.sh), or pack the model again on the Build page.",
    )


def network_for(*, client: DockerClient | None = None) -> Network:
    """The default bridge (the port published on 127.0.0.1 only) where the engine has one, else the host's."""
    return "bridge" if docker_containers.bridge_available(client=client) else "host"


def free_port() -> int:
    """A port nothing listens on now, for one more server beside those already running."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# MEMORY: SIDE BY SIDE OR ONE AFTER THE OTHER


@dataclass(frozen=True)
class MemoryNeed:
    """What one started pack holds: host RAM and bytes on each GPU (by index). ``measured`` when a bench of
    the pack measured it (its peak), else the plan's estimate."""

    ram_bytes: int
    gpu_bytes: Mapping[int, int]
    measured: bool


def memory_need(*, record: PackRecord, bench_results: Sequence[Mapping[str, Any]] = ()) -> MemoryNeed:
    plan = record.plan
    peaks = [int(r["peak_memory_bytes"]) for r in bench_results if r.get("peak_memory_bytes")]
    gpu_peaks = [int(r["peak_gpu_memory_bytes"]) for r in bench_results if r.get("peak_gpu_memory_bytes")]
    gpu: dict[int, int] = {}
    if plan.get("device") == "cuda":
        preallocated = plan.get("engine") == "vllm"  # vLLM takes its whole pool (capacity) at start
        for budget in plan.get("per_gpu") or []:
            index = int(budget.get("index") or 0)
            gpu[index] = int(budget.get("capacity_bytes" if preallocated else "total_bytes") or 0)
        if gpu_peaks and len(gpu) <= 1:
            gpu = {next(iter(gpu), 0): max(gpu_peaks)}
        ram_estimate = GPU_SERVER_HOST_RAM_BYTES
    else:
        weights = int(plan.get("weights_bytes") or 0)
        kv = int(plan.get("kv_cache_bytes_per_token") or 0) * int(plan.get("max_model_len") or 0)
        ram_estimate = weights + kv + GPU_SERVER_HOST_RAM_BYTES // 2
    return MemoryNeed(ram_bytes=max(peaks) if peaks else ram_estimate, gpu_bytes=gpu, measured=bool(peaks))


@dataclass(frozen=True)
class FitVerdict:
    side_by_side: bool
    ram_needed: int
    ram_free: int | None
    # (GPU index, bytes needed, bytes free) of every GPU both would use
    gpus: tuple[tuple[int, int, int | None], ...] = ()
    measured: bool = False


def fit_side_by_side(
    *, needs: Sequence[MemoryNeed], free: FreeMemory, running: Sequence[MemoryNeed] = ()
) -> FitVerdict:
    """Whether ``needs`` can all be started now, beside nothing else of ours. ``running`` are needs of servers
    of these same packs that already run: their memory is counted as taken, so it is given back to them."""
    ram_needed = sum(n.ram_bytes for n in needs) - sum(n.ram_bytes for n in running)
    ram_ok = free.ram_bytes is not None and ram_needed + RAM_HEADROOM_BYTES <= free.ram_bytes
    per_gpu: dict[int, int] = {}
    for need in needs:
        for index, size in need.gpu_bytes.items():
            per_gpu[index] = per_gpu.get(index, 0) + size
    for need in running:
        for index, size in need.gpu_bytes.items():
            per_gpu[index] = per_gpu.get(index, 0) - size
    gpus = tuple((index, size, free.gpu_bytes.get(index)) for index, size in sorted(per_gpu.items()))
    gpu_ok = all(have is not None and size + GPU_HEADROOM_BYTES <= have for _, size, have in gpus if size > 0)
    return FitVerdict(side_by_side=ram_ok and gpu_ok, ram_needed=ram_needed, ram_free=free.ram_bytes, gpus=gpus,
                      measured=all(n.measured for n in needs))  # fmt: skip


# THE SERVERS


ServerState = Literal["stopped", "starting", "running", "failed"]


@dataclass(frozen=True)
class ServerStatus:
    state: ServerState
    server: RunningServer | None = None
    job: Job | None = None  # the start: its progress while starting, its error when it failed


class TryServers:
    """The servers the test drive started in this process, one per pack record."""

    def __init__(self, *, registry: JobRegistry = REGISTRY) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._servers: dict[str, RunningServer] = {}
        self._starts: dict[str, Job] = {}

    def start(self, *, record: PackRecord) -> Job:
        """Start ``record``'s server in a job (one per record: a second call returns the running start)."""
        record_id = record.id

        def work(on_event: EventSink, cancel: Cancel) -> RunningServer:
            existing = self.server(record_id)
            if existing is not None:
                return existing
            server = start_target(target=target_of(record=record), on_event=on_event, cancel=cancel,
                                  name=f"ezrunner-try-{record_id[:8]}-{uuid.uuid4().hex[:6]}")  # fmt: skip
            with self._lock:
                stopped = self._starts.get(record_id) is None  # stop() was called while it started
                if not stopped:
                    self._servers[record_id] = server
            if stopped:
                docker_containers.remove_container(container=server.container_id)
                raise CancelledError("Stopped before the server was up.", hint="Start it again when ready.")
            return server

        with self._lock:
            job = self._registry.start(key=f"try:{record_id}", work=work)
            self._starts[record_id] = job
        return job

    def status(self, record_id: str) -> ServerStatus:
        with self._lock:
            server = self._servers.get(record_id)
            job = self._starts.get(record_id)
        if server is not None:
            return ServerStatus(state="running", server=server, job=job)
        if job is None:
            return ServerStatus(state="stopped")
        snapshot = job.snapshot()
        if snapshot.active:
            return ServerStatus(state="starting", job=job)
        if snapshot.state == "succeeded":  # the job finished between the two reads
            return self.status(record_id) if self.server(record_id) else ServerStatus(state="stopped", job=job)
        return ServerStatus(state="failed" if snapshot.state == "failed" else "stopped", job=job)

    def server(self, record_id: str) -> RunningServer | None:
        with self._lock:
            return self._servers.get(record_id)

    def running(self) -> dict[str, RunningServer]:
        with self._lock:
            return dict(self._servers)

    def check_alive(self, *, client: DockerClient | None = None) -> list[str]:
        """Forget servers whose container is gone or stopped (it crashed, or someone removed it); their ids."""
        gone = []
        for record_id, server in self.running().items():
            if not docker_containers.container_running(container=server.container_id, client=client):
                gone.append(record_id)
                with self._lock:
                    self._servers.pop(record_id, None)
        return gone

    def stop(self, record_id: str) -> None:
        """Cancel a start in progress, remove the container; nothing of it is left."""
        with self._lock:
            job = self._starts.pop(record_id, None)
            server = self._servers.pop(record_id, None)
        if job is not None:
            job.cancel()
        if server is not None:
            docker_containers.remove_container(container=server.container_id)

    def stop_all(self) -> None:
        with self._lock:
            ids = set(self._starts) | set(self._servers)
        for record_id in ids:
            with contextlib.suppress(EzRunnerError):
                self.stop(record_id)


def start_target(*, target: Target, on_event: EventSink, cancel: Cancel, name: str) -> RunningServer:
    """Start one target (loading an archive first) on a free port, labelled as a test-drive server."""
    client = docker_api.connect()
    labels = {ROLE_LABEL: ROLE, OWNER_LABEL: owner()}
    network = network_for(client=client)
    port = free_port()
    if target.archive is not None:
        return run_archive(archive=target.archive, port=port, network=network, name=name, on_event=on_event,
                           cancel=cancel, labels=labels, one_off_key=True)  # fmt: skip
    assert target.image is not None
    return start_image(image_ref=target.image, port=port, network=network, name=name, on_event=on_event,
                       cancel=cancel, client=client, labels=labels, one_off_key=True)  # fmt: skip


def remove_orphans(*, client: DockerClient | None = None) -> list[str]:
    """Remove test-drive containers of this host whose wizard process is gone; their names."""
    client = client or docker_api.connect()
    host = socket.gethostname()
    removed = []
    for container in docker_containers.containers_labelled(label=f"{ROLE_LABEL}={ROLE}", client=client):
        who = (container.labels or {}).get(OWNER_LABEL, "")
        owner_host, _, pid = who.rpartition(":")
        if owner_host != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        docker_containers.remove_container(container=container.id, client=client)
        removed.append(container.name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


SERVERS = TryServers()
atexit.register(SERVERS.stop_all)


# ONE CHAT


@dataclass(frozen=True)
class ChatFigures:
    """What a user looks at for one answer."""

    ttft_s: float | None
    output_tokens: int
    tokens_per_s: float | None  # the decode rate: tokens after the first over the time they took
    duration_s: float


def figures_of(sample: RequestSample) -> ChatFigures:
    rate: float | None = None
    if sample.decode_s > 0 and sample.output_tokens > 1:
        rate = (sample.output_tokens - 1) / sample.decode_s
    elif sample.duration_s > 0 and sample.output_tokens:
        rate = sample.output_tokens / sample.duration_s
    return ChatFigures(ttft_s=sample.ttft_s, output_tokens=sample.output_tokens, tokens_per_s=rate,
                       duration_s=sample.duration_s)  # fmt: skip


ChatState = Literal["answering", "done", "failed", "stopped"]


@dataclass(frozen=True)
class ChatSnapshot:
    state: ChatState
    text: str
    figures: ChatFigures | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state != "answering"


def turns_to_send(conversation: Sequence[Mapping[str, Any]], prompt: str) -> list[Message]:
    """The messages a new ``prompt`` goes with: each earlier question with its answer, in order, leaving out a
    question whose answer failed, was empty or never came (a refresh or restart cut it), so that roles always
    alternate user, assistant, … user: the chat templates of Gemma, Mistral and Llama 2 refuse anything else."""
    turns: list[Message] = []
    pending: Mapping[str, Any] | None = None
    for message in conversation:
        if message.get("role") == "user":
            pending = message  # a question followed by another question lost its answer: only the later one counts
        elif message.get("role") == "assistant" and pending is not None:
            if not message.get("error") and message.get("content"):
                turns += [{"role": "user", "content": str(pending["content"])},
                          {"role": "assistant", "content": str(message["content"])}]  # fmt: skip
            pending = None
    return [*turns, {"role": "user", "content": prompt}]


class ChatRun:
    """One streamed chat completion in a thread; ``snapshot()`` shows the answer as far as it has come."""

    def __init__(
        self, *, server: RunningServer, messages: Sequence[Message], max_tokens: int,
        temperature: float | None = None,
    ) -> None:  # fmt: skip
        self.id = uuid.uuid4().hex
        self.server = server
        self.messages = tuple(dict(m) for m in messages)
        self.max_tokens = max_tokens
        self.temperature = temperature  # None: the engine's default sampling
        self._cancel = Cancel()
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._state: ChatState = "answering"
        self._figures: ChatFigures | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"chat-{self.id[:8]}", daemon=True)

    def start(self) -> ChatRun:
        self._thread.start()
        LIVE.chats.add(self)
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> ChatSnapshot:
        self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> ChatSnapshot:
        with self._lock:
            return ChatSnapshot(state=self._state, text="".join(self._pieces), figures=self._figures,
                                error=self._error)  # fmt: skip

    def _run(self) -> None:
        endpoint = self.server.endpoint or f"http://127.0.0.1:{self.server.port}/v1"
        try:
            with server_session(self.server.api_key) as session:
                pieces = chat_pieces(session=session, endpoint=endpoint, model=self.server.served_model_name,
                                     messages=self.messages, max_tokens=self.max_tokens, cancel=self._cancel,
                                     read_timeout_s=CHAT_READ_TIMEOUT_S,
                                     temperature=self.temperature)  # fmt: skip
                sample = drain_chat(pieces, self._keep)
        except CancelledError:
            self._finish("stopped")
            return
        except Exception as error:  # a thread's failure must reach the page, not vanish
            self._finish("failed", error=f"{type(error).__name__}: {error}")
            return
        if self._cancel.is_set():
            self._finish("stopped")
        elif sample.ok:
            self._finish("done", figures=figures_of(sample))
        else:
            self._finish("failed", error=sample.error)

    def _keep(self, piece: str) -> None:
        with self._lock:
            self._pieces.append(piece)

    def _finish(self, state: ChatState, *, figures: ChatFigures | None = None, error: str | None = None) -> None:
        with self._lock:
            self._state, self._figures, self._error = state, figures, error


# TWO PACKS, ONE PROMPT


SideState = Literal["waiting", "starting", "answering", "done", "failed", "stopped"]


@dataclass(frozen=True)
class Side:
    record_id: str
    state: SideState
    chat: ChatSnapshot | None = None
    message: str = ""  # the start's progress, or the error that ended this side


@dataclass(frozen=True)
class ComparisonSnapshot:
    side_by_side: bool
    sides: tuple[Side, ...]

    @property
    def finished(self) -> bool:
        return all(s.state in ("done", "failed", "stopped") for s in self.sides)


@dataclass
class _SideProgress:
    state: SideState = "waiting"
    message: str = ""
    chat: ChatRun | None = None


@dataclass
class Comparison:
    """The same prompt to two (or more) packs; see the module's docstring."""

    records: Sequence[PackRecord]
    prompt: str
    max_tokens: int
    side_by_side: bool
    servers: TryServers = SERVERS
    temperature: float | None = 0.0  # greedy by default: a difference comes from the packs, not from sampling
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _cancel: Cancel = field(default_factory=Cancel, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sides: dict[str, _SideProgress] = field(default_factory=dict, repr=False)
    _start_jobs: dict[str, Job] = field(default_factory=dict, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Comparison:
        self._sides = {r.id: _SideProgress() for r in self.records}
        self._thread = threading.Thread(target=self._run, name=f"compare-{self.id[:8]}", daemon=True)
        self._thread.start()
        LIVE.comparisons.add(self)
        return self

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            chats = [s.chat for s in self._sides.values() if s.chat is not None]
        for chat in chats:
            chat.cancel()

    def wait(self, timeout: float | None = None) -> ComparisonSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> ComparisonSnapshot:
        with self._lock:
            sides = []
            for record in self.records:
                progress = self._sides.get(record.id, _SideProgress())
                chat = progress.chat.snapshot() if progress.chat is not None else None
                state = progress.state
                if state == "answering" and chat is not None and chat.finished:
                    state = chat.state
                sides.append(Side(record_id=record.id, state=state, chat=chat, message=progress.message))
        return ComparisonSnapshot(side_by_side=self.side_by_side, sides=tuple(sides))

    def _set(self, record_id: str, **changes: Any) -> None:
        with self._lock:
            side = self._sides[record_id]
            for key, value in changes.items():
                setattr(side, key, value)

    def _run(self) -> None:
        if self.side_by_side:
            for record in self.records:  # start them all, then wait: two loads and starts overlap
                self._start(record)
            chats = [self._answer(record) for record in self.records]
            for chat in chats:
                if chat is not None:
                    chat.wait()
            return
        for record in self.records:
            if self._cancel.is_set():
                self._set(record.id, state="stopped")
                continue
            for other in self.servers.running():  # memory is short: nothing else of ours may hold it
                if other != record.id:
                    self.servers.stop(other)
            self._start(record)
            chat = self._answer(record)
            if chat is not None:
                chat.wait()
            self.servers.stop(record.id)

    def _start(self, record: PackRecord) -> None:
        if self.servers.server(record.id) is not None:
            return
        self._set(record.id, state="starting")
        self._start_jobs[record.id] = self.servers.start(record=record)

    def _answer(self, record: PackRecord) -> ChatRun | None:
        job = self._start_jobs.get(record.id)
        while job is not None and job.snapshot().active:
            if self._cancel.is_set():
                self.servers.stop(record.id)
            snapshot = job.snapshot()
            stage = snapshot.progress(snapshot.stage) if snapshot.stage else None
            self._set(record.id, message=stage.message if stage else "")
            time.sleep(0.2)
        server = self.servers.server(record.id)
        if server is None:
            failed = job.snapshot() if job is not None else None
            cancelled = self._cancel.is_set() or (failed is not None and failed.state == "cancelled")
            state: SideState = "stopped" if cancelled else "failed"
            self._set(record.id, state=state, message=(failed.error or "") if failed else "")
            return None
        if self._cancel.is_set():
            self._set(record.id, state="stopped")
            return None
        chat = ChatRun(server=server, messages=[{"role": "user", "content": self.prompt}],
                       max_tokens=self.max_tokens, temperature=self.temperature).start()  # fmt: skip
        self._set(record.id, state="answering", chat=chat, message="")
        return chat


# IN FLIGHT, BY ID


Run = TypeVar("Run", ChatRun, Comparison)


class LiveRuns(Generic[Run]):
    """The runs started in this process, by id, the newest ``keep`` of them: what a refreshed tab finds again.
    An old, finished run falls out; one still running never does."""

    def __init__(self, *, keep: int = 64) -> None:
        self.keep = keep
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, run: Run) -> Run:
        with self._lock:
            self._runs[run.id] = run
            for old_id, old in list(self._runs.items()):
                if len(self._runs) <= self.keep:
                    break
                if old.snapshot().finished:
                    del self._runs[old_id]
        return run

    def get(self, run_id: str | None) -> Run | None:
        with self._lock:
            return self._runs.get(run_id) if run_id else None


@dataclass(frozen=True)
class Live:
    chats: LiveRuns[ChatRun] = field(default_factory=LiveRuns)
    comparisons: LiveRuns[Comparison] = field(default_factory=LiveRuns)


LIVE = Live()


__all__ = [
    "LIVE",
    "SERVERS",
    "ChatFigures",
    "ChatRun",
    "ChatSnapshot",
    "Comparison",
    "ComparisonSnapshot",
    "FitVerdict",
    "Live",
    "LiveRuns",
    "MemoryNeed",
    "ServerStatus",
    "Side",
    "TryServers",
    "figures_of",
    "fit_side_by_side",
    "free_port",
    "memory_need",
    "network_for",
    "remove_orphans",
    "target_of",
    "turns_to_send",
]

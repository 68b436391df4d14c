"""`ezrunner bench` and `ezrunner run --check`: drive a packed model the way its users will, and measure it.

A target is an archive (``.tar``, ``.tar.zst`` or the first of its parts: verified and loaded by
``core.run.run_archive``) or an image reference already loaded (started by ``core.run.start_image``). Targets
run one after the other, never two at once: each container is removed (its memory freed) before the next
starts, and whatever happens (a failed request, a server that never answers, Ctrl-C) the container a target
started is removed before the error goes on.

Each target gets the same streamed chat completions, decoded greedily (``stream_options.include_usage``, so the
engine's own token count comes back in the final chunk where it sends one): time to first token is measured to the first
chunk that carries content; output tokens are the usage's ``completion_tokens``, else the content chunks
counted. Around the load the engine's own ``/metrics`` counter of generated tokens is read (where the image
serves one), so that the client's count can be held against the engine's. Peak memory comes from Docker's
stats API, polled while the load runs; on CUDA images the GPU memory of the container's processes from NVML.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import docker.errors
import requests
from docker import DockerClient

from core import errors
from core.archive import names
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.errors import InvalidOptionsError, ServerCheckError, TargetNotFoundError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.history import History
from core.run import RunningServer, check_timeout, run_archive, start_image
from core.runspec import Network, RunSpec, run_spec_from_labels

#: The prompts sent when no --prompts file is given (package data, one prompt a line).
PROMPTS_RESOURCE = "bench_prompts.txt"
#: A prompts file larger than this is not a list of prompts (and is not read whole).
MAX_PROMPTS_FILE_BYTES = 8 << 20
#: The engines' own counters of generated tokens in their Prometheus /metrics. llama.cpp:
#: tools/server/server-context.cpp ("tokens_predicted_total", prefixed "llamacpp:"); vLLM:
#: vllm/v1/metrics/loggers.py ("vllm:generation_tokens_total"). The proxy EZ Runner may put in front of an
#: engine without metrics counts the same under "ezrunner:generation_tokens_total".
TOKEN_COUNTERS = ("llamacpp:tokens_predicted_total", "vllm:generation_tokens_total", "ezrunner:generation_tokens_total")
#: How long the engine may take, after the last answer, to count its tokens in /metrics.
METRICS_SETTLE_S = 3.0
#: Seconds between two memory samples while the load runs (Docker's one-shot stats answer in milliseconds).
MEMORY_SAMPLE_S = 0.5
#: Seconds one streamed answer may stay silent before the request counts as failed.
READ_TIMEOUT_S = 300.0
#: The request `run --check` sends: short, and a few tokens are enough to show the model answers.
CHECK_PROMPT = "Say hello in one short sentence."
CHECK_MAX_TOKENS = 16
#: How many failure messages a result keeps (the rest are counted in requests_failed).
KEPT_ERRORS = 5

TokenSource = Literal["usage", "chunks"]


# SETTINGS AND PROMPTS


def load_prompts(*, path: Path | None = None) -> tuple[str, ...]:
    """The prompts to send: one a line from ``path`` (blank lines skipped), else the set shipped with EZ Runner.
    Raises InvalidOptionsError (field ``prompts``) for a file that is missing, empty or not UTF-8 text."""
    if path is None:
        text = resources.files("core").joinpath(PROMPTS_RESOURCE).read_text(encoding="utf-8")
        return tuple(line.strip() for line in text.splitlines() if line.strip())
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise IsADirectoryError(str(path))
        if size > MAX_PROMPTS_FILE_BYTES:
            raise _bad_prompts(path, f"it has {size} bytes, more than a list of prompts ({MAX_PROMPTS_FILE_BYTES})")
        data = path.read_bytes()
    except OSError as error:
        raise InvalidOptionsError(
            f"The prompts file {path} cannot be read ({error.strerror or type(error).__name__}).",
            hint="Give a text file with one prompt a line, or leave --prompts out for the built-in prompts.",
            field=errors.PROMPTS,
        ) from error
    if b"\x00" in data:
        raise _bad_prompts(path, "it is not text (it holds NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _bad_prompts(path, f"it is not UTF-8 text (byte {error.start})") from error
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise _bad_prompts(path, "it holds no prompt (every line is blank)")
    return prompts


def _bad_prompts(path: Path, why: str) -> InvalidOptionsError:
    return InvalidOptionsError(
        f"The prompts file {path} cannot be used: {why}.",
        hint="Give a UTF-8 text file with one prompt a line, or leave --prompts out for the built-in prompts.",
        field=errors.PROMPTS,
    )


def validate_load(*, requests_count: int, concurrency: int, max_tokens: int, port: int | None) -> None:
    """Raise InvalidOptionsError, naming the flag, for a load that cannot be sent."""
    if requests_count < 1:
        raise InvalidOptionsError(f"--requests {requests_count} sends nothing.", hint="Use --requests 1 or more.",
                                  field=errors.REQUESTS)  # fmt: skip
    if concurrency < 1:
        raise InvalidOptionsError(f"--concurrency {concurrency} sends nothing.", hint="Use --concurrency 1 or more.",
                                  field=errors.CONCURRENCY)  # fmt: skip
    if max_tokens < 1:
        raise InvalidOptionsError(f"--max-tokens {max_tokens} asks for no answer.", hint="Use --max-tokens 1 or more.",
                                  field=errors.MAX_TOKENS)  # fmt: skip
    if port is not None and not 1 <= port <= 65535:
        raise InvalidOptionsError(f"--port {port} is out of range.", hint="Use a port from 1 to 65535.",
                                  field=errors.PORT)  # fmt: skip


# TARGETS


@dataclass(frozen=True)
class Target:
    """What one TARGET argument names: an archive on disk, or an image the engine has loaded."""

    text: str  # as the user wrote it
    archive: Path | None = None
    image: str | None = None


def resolve_target(*, text: str, client: DockerClient | None = None) -> Target:
    """``text`` as an archive (a ``.tar``/``.tar.zst`` file or its first part) or a loaded image reference;
    TargetNotFoundError when it is neither."""
    path = Path(text).expanduser()
    archive = names.archive_of(path)
    is_archive_named = names.is_archive_name(archive.name)
    if is_archive_named and (archive.is_file() or names.part_path(archive, 0).is_file()):
        return Target(text=text, archive=archive)
    client = client or docker_api.connect()
    if not path.exists() and _image_loaded(client, text):
        return Target(text=text, image=text)
    if path.exists():
        why = f"{text} is not an archive (an archive is a file whose name ends in .tar, .tar.zst or .tar.part000)"
    elif is_archive_named:
        why = f"there is no archive {text} (nor its parts)"
    else:
        why = f"there is no archive {text} and Docker has no image of that name"
    raise TargetNotFoundError(
        f"{text} is neither a packed archive nor a loaded image: {why}.",
        hint="Give the .tar (or .tar.zst, or .tar.part000) that `ezrunner pack` wrote, or an image reference "
        "that `docker images` lists.",
    )


def _image_loaded(client: DockerClient, ref: str) -> bool:
    try:
        return docker_api.image_exists(ref=ref, client=client)
    except docker.errors.DockerException:  # not a valid reference at all ("invalid reference format")
        return False


# ONE REQUEST


@dataclass(frozen=True)
class RequestSample:
    """One streamed chat completion as the client saw it."""

    ok: bool
    ttft_s: float | None  # request sent → first chunk carrying content
    duration_s: float  # request sent → stream ended
    decode_s: float  # first content chunk → last content chunk
    output_tokens: int
    token_source: TokenSource
    text: str = ""  # the answer's content
    error: str | None = None


Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": ...}


def chat_body(
    *, model: str, messages: Sequence[Message], max_tokens: int, temperature: float | None = None
) -> dict[str, Any]:
    """The request body; ``temperature`` None leaves sampling to the engine's default, 0 asks for greedy
    decoding (the same prompt gives the same answer: what a comparison of two packs wants)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if temperature is not None:
        body["temperature"] = temperature
    return body


def stream_chat(
    *,
    session: requests.Session,
    endpoint: str,
    model: str,
    prompt: str,
    max_tokens: int,
    cancel: Cancel | None = None,
    read_timeout_s: float = READ_TIMEOUT_S,
    temperature: float | None = None,
) -> RequestSample:
    """Send one streamed chat completion of ``prompt`` to ``endpoint`` (``http://host:port/v1``) and time it;
    a failure (refused, an HTTP error, a broken stream) is a sample with ``ok=False``, cancellation raises."""
    return drain_chat(chat_pieces(session=session, endpoint=endpoint, model=model,
                                  messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                  cancel=cancel, read_timeout_s=read_timeout_s, temperature=temperature))  # fmt: skip


def drain_chat(
    pieces: Generator[str, None, RequestSample], on_piece: Callable[[str], None] = lambda piece: None
) -> RequestSample:
    """Run ``chat_pieces`` to its end, handing each piece to ``on_piece``; its timed sample."""
    while True:
        try:
            on_piece(next(pieces))
        except StopIteration as end:
            sample: RequestSample = end.value
            return sample


def chat_pieces(
    *,
    session: requests.Session,
    endpoint: str,
    model: str,
    messages: Sequence[Message],
    max_tokens: int,
    cancel: Cancel | None = None,
    read_timeout_s: float = READ_TIMEOUT_S,
    temperature: float | None = None,
) -> Generator[str, None, RequestSample]:
    """Send one streamed chat completion and yield each piece of the answer as it arrives; the generator's
    return value is the timed sample (``yield from`` gives it). The one client of the bench, the smoke check
    and the wizard's test drive."""
    started = time.perf_counter()
    first: float | None = None
    last = started
    chunks = 0
    usage_tokens: int | None = None
    text: list[str] = []

    def failed(why: str) -> RequestSample:
        return RequestSample(ok=False, ttft_s=None if first is None else first - started,
                             duration_s=time.perf_counter() - started, decode_s=0.0, output_tokens=0,
                             token_source="chunks", text="".join(text), error=why)  # fmt: skip

    body = chat_body(model=model, messages=messages, max_tokens=max_tokens, temperature=temperature)
    try:
        with session.post(f"{endpoint}/chat/completions", json=body, stream=True,
                          timeout=(10.0, read_timeout_s)) as response:  # fmt: skip
            if response.status_code != 200:
                return failed(f"HTTP {response.status_code}: {' '.join(response.text.split())[:200]}")
            for data in _sse_data(response, cancel):
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    return failed(f"the stream sent a line that is not JSON: {data[:100]!r}")
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    return failed(f"the server reported an error: {str(chunk['error'])[:200]}")
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    usage_tokens = usage["completion_tokens"]
                content = _content(chunk)
                if content:
                    now = time.perf_counter()
                    first = now if first is None else first
                    last = now
                    chunks += 1
                    text.append(content)
                    yield content
    except requests.exceptions.RequestException as error:
        return failed(f"{type(error).__name__}: {str(error)[:200]}")
    ended = time.perf_counter()
    if first is None and not usage_tokens:
        return failed("the answer had no content")
    tokens, source = (usage_tokens, "usage") if usage_tokens is not None else (chunks, "chunks")
    return RequestSample(
        ok=True,
        ttft_s=None if first is None else first - started,
        duration_s=ended - started,
        decode_s=0.0 if first is None else last - first,
        output_tokens=tokens,
        token_source=source,  # type: ignore[arg-type]
        text="".join(text),
    )


def _sse_data(response: requests.Response, cancel: Cancel | None) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive.

    ``iter_content(chunk_size=None)`` hands over each HTTP chunk as soon as it is read (``iter_lines``'
    default 512-byte buffer would hold a short first token back and inflate the time to first token).
    """
    pending = b""
    for piece in response.iter_content(chunk_size=None):
        raise_if_cancelled(cancel, message="Cancelled while the bench was sending requests.",
                           hint="Run the bench again when ready.")  # fmt: skip
        pending += piece
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                yield line[5:].strip().decode("utf-8", "replace")
    if pending.startswith(b"data:"):
        yield pending[5:].strip().decode("utf-8", "replace")


def _content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return ""
    out = []
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            for key in ("content", "reasoning_content"):  # a reasoning model's thinking is generated output too
                value = delta.get(key)
                if isinstance(value, str):
                    out.append(value)
    return "".join(out)


def server_session(api_key: str | None = None) -> requests.Session:
    """A session for the local server; with the key of an image packed with --api-key-env (the one its
    container was given: ``RunningServer.api_key``) sent as "Authorization: Bearer …"."""
    session = requests.Session()
    session.trust_env = False  # the server is on this machine: never ask an HTTP(S)_PROXY for it
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


# THE LOAD


def send_load(
    *,
    endpoint: str,
    model: str,
    prompts: Sequence[str],
    requests_count: int,
    concurrency: int,
    max_tokens: int,
    on_sample: Callable[[int, RequestSample], None] = lambda done, sample: None,
    cancel: Cancel | None = None,
    api_key: str | None = None,
) -> tuple[tuple[RequestSample, ...], float]:
    """Send ``requests_count`` streamed chat completions, at most ``concurrency`` at once, prompts in turn;
    return the samples (in order sent) and the wall time from the first request to the last answer."""
    samples: list[RequestSample | None] = [None] * requests_count
    local = threading.local()

    def one(index: int) -> RequestSample:
        raise_if_cancelled(cancel)
        if not hasattr(local, "session"):
            local.session = server_session(api_key)
        # greedy, as vLLM's benchmark client: two packs given the same prompts answer at comparable lengths
        return stream_chat(session=local.session, endpoint=endpoint, model=model,
                           prompt=prompts[index % len(prompts)], max_tokens=max_tokens, cancel=cancel,
                           temperature=0.0)  # fmt: skip

    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=min(concurrency, requests_count), thread_name_prefix="bench")
    completed = False
    try:
        running: dict[Future[RequestSample], int] = {}
        queued = iter(range(requests_count))
        for index in queued:
            running[pool.submit(one, index)] = index
            if len(running) >= concurrency:
                break
        done_count = 0
        while running:
            # wakes at least once a second, so a cancel set from a signal handler is seen
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            if not finished:
                raise_if_cancelled(cancel, message="Cancelled while the bench was sending requests.",
                                   hint="Run the bench again when ready.")  # fmt: skip
            for future in finished:
                index = running.pop(future)
                samples[index] = sample = future.result()
                done_count += 1
                on_sample(done_count, sample)
                nxt = next(queued, None)
                if nxt is not None:
                    raise_if_cancelled(cancel)
                    running[pool.submit(one, nxt)] = nxt
        completed = True
    finally:
        # On a cancel or an error, do not wait for streams still open: removing the container (the caller's
        # next step) ends them, where a silent server would hold a join for the whole read timeout.
        pool.shutdown(wait=completed, cancel_futures=True)
    wall = time.perf_counter() - started
    return tuple(s for s in samples if s is not None), wall


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# MEMORY AND METRICS


class MemoryWatch:
    """Polls a container's memory (Docker stats API) in a thread; ``peak`` is the highest use seen.

    Use is counted as ``docker stats`` shows it: usage less the inactive page cache (docker/cli
    cli/command/container/stats_helpers.go, calculateMemUsageUnixNoCache), so a model file read through the
    page cache is not counted as the server's memory."""

    def __init__(self, *, client: DockerClient, container: str, interval_s: float = MEMORY_SAMPLE_S) -> None:
        self.client = client
        self.container = container
        self.interval_s = interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        try:
            stats = self.client.api.stats(self.container, stream=False, one_shot=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return  # gone or busy: the samples already taken stand
        used = memory_in_use(stats.get("memory_stats") or {})
        if used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)


def memory_in_use(memory_stats: dict[str, Any]) -> int | None:
    """Bytes in use from a Docker stats ``memory_stats`` object (cgroup v1 or v2), as ``docker stats`` shows."""
    usage = memory_stats.get("usage")
    if not isinstance(usage, int) or usage <= 0:
        return None
    stats = memory_stats.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, then v2
        inactive = stats.get(key)
        if isinstance(inactive, int) and inactive < usage:
            return usage - inactive
    return usage


def gpu_memory_of(*, pids: Sequence[int]) -> tuple[int | None, str | None]:
    """GPU memory (bytes) NVML reports for the processes ``pids`` on every GPU, or (None, why not)."""
    try:
        import pynvml  # nvidia-ml-py: optional, only CUDA images need it
    except ImportError:
        return None, "peak GPU memory omitted: NVML's Python binding (nvidia-ml-py) is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return None, f"peak GPU memory omitted: NVML is not available here ({error})"
    try:
        wanted = set(pids)
        total = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid in wanted and process.usedGpuMemory:
                    total += int(process.usedGpuMemory)
        return total, None
    except pynvml.NVMLError as error:
        return None, f"peak GPU memory omitted: NVML could not list the GPU processes ({error})"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def container_pids(*, client: DockerClient, container: str) -> list[int]:
    """The host pids of the container's processes (``docker top``)."""
    try:
        top = client.api.top(container)
    except docker.errors.DockerException:
        return []
    titles = top.get("Titles") or []
    column = titles.index("PID") if "PID" in titles else 1
    pids = []
    for row in top.get("Processes") or []:
        with contextlib.suppress(ValueError, IndexError):
            pids.append(int(row[column]))
    return pids


class GpuWatch:
    """Samples the GPU memory of a container's processes while the load runs; ``peak`` or ``note``."""

    def __init__(self, *, client: DockerClient, container: str, interval_s: float = 1.0) -> None:
        self.client = client
        self.container = container
        self.interval_s = interval_s
        self.peak: int | None = None
        self.note: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-gpu", daemon=True)

    def __enter__(self) -> GpuWatch:
        self.sample()
        if self.note is None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s) and self.note is None:
            self.sample()

    def sample(self) -> None:
        used, note = gpu_memory_of(pids=container_pids(client=self.client, container=self.container))
        if note is not None:
            self.note = note
        elif used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)


def read_token_counter(*, url: str, api_key: str | None = None) -> tuple[float | None, str | None]:
    """The engine's count of generated tokens from its Prometheus text at ``url``: (value, counter name), or
    (None, None) when it does not answer or serves none of ``TOKEN_COUNTERS``."""
    try:
        with server_session(api_key) as session:
            response = session.get(url, timeout=10)
    except requests.exceptions.RequestException:
        return None, None
    if response.status_code != 200:
        return None, None
    return parse_token_counter(response.text)


def parse_token_counter(text: str) -> tuple[float | None, str | None]:
    """The first of ``TOKEN_COUNTERS`` in Prometheus exposition ``text``, summed over its label sets."""
    for name in TOKEN_COUNTERS:
        total: float | None = None
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            rest = line[len(name):]
            if rest[:1] not in (" ", "{"):
                continue  # another metric whose name starts with this one
            if rest.startswith("{"):
                rest = rest[rest.index("}") + 1:] if "}" in rest else ""
            words = rest.split()
            with contextlib.suppress(ValueError, IndexError):
                total = (total or 0.0) + float(words[0])
        if total is not None:
            return total, name
    return None, None


# ONE TARGET


@dataclass(frozen=True)
class BenchResult:
    """The figures of one target. Times in seconds, memory in bytes; None where it could not be measured."""

    target: str
    image: str
    engine: str
    served_model_name: str
    requests_ok: int
    requests_failed: int
    ttft_s_p50: float | None
    ttft_s_p95: float | None
    output_tokens: int
    output_tokens_per_s: float  # all output tokens over the load's wall time
    decode_tokens_per_s: float | None  # per request, first to last content chunk: the engine's decode speed
    wall_s: float
    peak_memory_bytes: int | None
    peak_gpu_memory_bytes: int | None
    token_count_source: TokenSource
    metrics_counter: str | None  # the engine counter read, e.g. llamacpp:tokens_predicted_total
    metrics_output_tokens: int | None  # its increase over the load; None without /metrics
    requests: int = 0
    concurrency: int = 1
    max_tokens: int = 0
    pack_id: str | None = None  # the history record the result was stored with
    notes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()  # the first failure messages
    samples: tuple[RequestSample, ...] = field(default=(), repr=False)

    def to_dict(self, *, with_samples: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["notes"], data["errors"] = list(self.notes), list(self.errors)
        data.pop("samples")
        if with_samples:
            data["samples"] = [asdict(s) for s in self.samples]
        return data


def summarize(
    *,
    target: str,
    server: RunningServer,
    spec: RunSpec | None,
    samples: Sequence[RequestSample],
    wall_s: float,
    requests_count: int,
    concurrency: int,
    max_tokens: int,
    peak_memory: int | None,
    peak_gpu: int | None,
    metrics: tuple[int | None, str | None],
    notes: Sequence[str] = (),
) -> BenchResult:
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    tokens = sum(s.output_tokens for s in ok)
    decoding = [s for s in ok if s.decode_s > 0 and s.output_tokens > 1]
    decode_s = sum(s.decode_s for s in decoding)
    # n tokens arrive over n - 1 gaps after the first: the rate between first and last chunk
    decode_rate = sum(s.output_tokens - 1 for s in decoding) / decode_s if decode_s > 0 else None
    sources = {s.token_source for s in ok}
    return BenchResult(
        target=target,
        image=server.image,
        engine=spec.engine if spec is not None else "",
        served_model_name=server.served_model_name,
        requests_ok=len(ok),
        requests_failed=len(samples) - len(ok),
        ttft_s_p50=percentile(ttfts, 50),
        ttft_s_p95=percentile(ttfts, 95),
        output_tokens=tokens,
        output_tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        decode_tokens_per_s=decode_rate,
        wall_s=wall_s,
        peak_memory_bytes=peak_memory,
        peak_gpu_memory_bytes=peak_gpu,
        token_count_source="usage" if sources == {"usage"} else "chunks",
        metrics_counter=metrics[1],
        metrics_output_tokens=metrics[0],
        requests=requests_count,
        concurrency=concurrency,
        max_tokens=max_tokens,
        notes=tuple(notes),
        errors=tuple(s.error for s in samples if s.error)[:KEPT_ERRORS],
        samples=tuple(samples),
    )


def bench(
    *,
    targets: Sequence[str],
    requests_count: int = 16,
    concurrency: int = 1,
    max_tokens: int = 64,
    prompts: Sequence[str] | None = None,
    port: int | None = None,
    network: Network = "bridge",
    timeout_s: float | None = None,
    history: History | None = None,
    on_event: EventSink = ignore_events,
    on_result: Callable[[BenchResult], None] = lambda result: None,
    cancel: Cancel | None = None,
    pack_ids: Sequence[str] | None = None,
) -> tuple[BenchResult, ...]:
    """Bench each of ``targets`` in turn (see the module's docstring); every input is checked, and every
    target resolved, before the first container starts. Results of targets that came from a pack in
    ``history`` are stored with that pack's record: the one ``pack_ids`` names for each target where the caller
    knows it (two records can share one image), else the one whose archive or image the target is."""
    if pack_ids is not None and len(pack_ids) != len(targets):
        raise ValueError("pack_ids names one record per target")
    validate_load(requests_count=requests_count, concurrency=concurrency, max_tokens=max_tokens, port=port)
    check_timeout(timeout_s)
    if not targets:
        raise InvalidOptionsError("No target to bench.", hint="Name one or more archives or loaded images.",
                                  field=errors.BENCH_TARGET)  # fmt: skip
    chosen = tuple(prompts) if prompts else load_prompts()
    client = docker_api.connect()
    resolved = [resolve_target(text=text, client=client) for text in targets]
    if network == "none":
        raise InvalidOptionsError("A bench needs to reach the server: --network none has no network.",
                                  hint="Use --network host or bridge.", field=errors.NETWORK)  # fmt: skip
    if port is not None:
        docker_containers.require_port_free(port=port)
    docker_containers.require_network(network=network, port=port, client=client)
    results = []
    for number, target in enumerate(resolved, 1):
        raise_if_cancelled(cancel, message="Cancelled before the next target started.",
                           hint="Run the bench again when ready.")  # fmt: skip
        on_event(Event(stage="bench", message=f"Target {number} of {len(resolved)}: {target.text}"))
        result = bench_target(target=target, requests_count=requests_count, concurrency=concurrency,
                              max_tokens=max_tokens, prompts=chosen, port=port, network=network,
                              timeout_s=timeout_s, on_event=on_event, cancel=cancel, client=client)  # fmt: skip
        result = _store(result, target=target, history=history,
                        pack_id=pack_ids[number - 1] if pack_ids is not None else None)  # fmt: skip
        results.append(result)
        on_result(result)
    return tuple(results)


def bench_target(
    *,
    target: Target,
    requests_count: int,
    concurrency: int,
    max_tokens: int,
    prompts: Sequence[str],
    port: int | None,
    network: Network,
    timeout_s: float | None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
) -> BenchResult:
    """Start one target, send the load, measure, and remove its container (whatever happens)."""
    client = client or docker_api.connect()
    with started_server(target=target, port=port, network=network, timeout_s=timeout_s, on_event=on_event,
                        cancel=cancel, client=client) as (server, spec):  # fmt: skip
        endpoint = server.endpoint or f"http://127.0.0.1:{server.port}/v1"
        notes: list[str] = []
        metrics_url = f"http://127.0.0.1:{server.port}{spec.metrics_path}" if spec and spec.metrics_path else None
        before: float | None = None
        if metrics_url is None:
            notes.append("the image serves no /metrics: the engine's own token count was not compared")
        else:
            before, _ = read_token_counter(url=metrics_url, api_key=server.api_key)
            if before is None:
                notes.append(f"{metrics_url} has no token counter EZ Runner knows: the engine's count was not compared")

        def progress(done: int, sample: RequestSample) -> None:
            on_event(Event(stage="bench", done=done, total=requests_count, unit="request",
                           message=f"{target.text}: request {done} {'ok' if sample.ok else 'failed'}"))  # fmt: skip

        gpu = spec is not None and spec.default.device == "cuda"
        with MemoryWatch(client=client, container=server.container_id) as memory, (
            GpuWatch(client=client, container=server.container_id) if gpu else contextlib.nullcontext()
        ) as gpu_watch:
            samples, wall = send_load(endpoint=endpoint, model=server.served_model_name, prompts=prompts,
                                      requests_count=requests_count, concurrency=concurrency, max_tokens=max_tokens,
                                      on_sample=progress, cancel=cancel,
                                      api_key=server.api_key)  # fmt: skip
        counted = sum(s.output_tokens for s in samples if s.ok)
        metrics: tuple[int | None, str | None] = (None, None)
        if metrics_url is not None and before is not None:
            metrics = _metrics_delta(url=metrics_url, before=before, expected=counted, api_key=server.api_key)
        peak_gpu = None
        if isinstance(gpu_watch, GpuWatch):
            peak_gpu = gpu_watch.peak
            if gpu_watch.note:
                notes.append(gpu_watch.note)
        return summarize(target=target.text, server=server, spec=spec, samples=samples, wall_s=wall,
                         requests_count=requests_count, concurrency=concurrency, max_tokens=max_tokens,
                         peak_memory=memory.peak, peak_gpu=peak_gpu, metrics=metrics, notes=notes)  # fmt: skip


def _metrics_delta(*, url: str, before: float, expected: int,
                   api_key: str | None = None) -> tuple[int | None, str | None]:  # fmt: skip
    """The counter's increase since ``before``; read again for a moment while it is below ``expected`` (an
    engine may count a request's tokens just after it sent the last chunk)."""
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        after, name = read_token_counter(url=url, api_key=api_key)
        if after is None:
            return None, None
        delta = round(after - before)
        if delta >= expected or time.monotonic() >= deadline:
            return delta, name
        time.sleep(0.2)


@contextlib.contextmanager
def started_server(
    *,
    target: Target,
    port: int | None,
    network: Network,
    timeout_s: float | None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
    name: str | None = None,
) -> Iterator[tuple[RunningServer, RunSpec | None]]:
    """Start ``target`` (loading an archive first), yield the server and its run spec, and remove the
    container when the block ends, however it ends (so an image packed with --api-key-env may run on a one-off
    key when its variable is unset here)."""
    client = client or docker_api.connect()
    name = name or f"ezrunner-bench-{uuid.uuid4().hex[:10]}"
    if target.archive is not None:
        server = run_archive(archive=target.archive, port=port, network=network, name=name, timeout_s=timeout_s,
                             on_event=on_event, cancel=cancel, one_off_key=True)  # fmt: skip
    else:
        assert target.image is not None
        server = start_image(image_ref=target.image, port=port, network=network, name=name, timeout_s=timeout_s,
                             on_event=on_event, cancel=cancel, client=client, one_off_key=True)  # fmt: skip
    try:
        with docker_api.engine_errors(action=f"inspect image {server.image}"):
            labels = client.images.get(server.image).labels or {}
        yield server, run_spec_from_labels(labels)
    finally:
        on_event(Event(stage="bench", message=f"Removing {server.container_name}"))
        docker_containers.remove_container(container=server.container_id, client=client)


def _store(result: BenchResult, *, target: Target, history: History | None, pack_id: str | None = None) -> BenchResult:
    if history is None:
        return result
    if pack_id is not None:
        record = history.get(pack_id)
    elif target.archive:
        record = history.find_pack(archive=target.archive)
    else:
        record = history.find_pack(image_tag=target.image)
    if record is None:
        return result
    stored = BenchResult(**{**{f: getattr(result, f) for f in result.__dataclass_fields__}, "pack_id": record.id})
    history.add_bench_result(record.id, result=stored.to_dict())
    return stored


# THE SMOKE CHECK


@dataclass(frozen=True)
class CheckAnswer:
    """What `run --check` shows: the start of the answer and how long its first token took."""

    text: str
    ttft_s: float
    output_tokens: int


def check_server(
    *,
    server: RunningServer,
    prompt: str = CHECK_PROMPT,
    max_tokens: int = CHECK_MAX_TOKENS,
    client: DockerClient | None = None,
    cancel: Cancel | None = None,
) -> CheckAnswer:
    """Send one short streamed chat request to a started server; ServerCheckError, with the container's last
    log lines, when it does not answer with content."""
    endpoint = server.endpoint or f"http://127.0.0.1:{server.port}/v1"
    with server_session(server.api_key) as session:
        # greedy, so that the check's verdict does not hang on a sampled end-of-text as the first token
        sample = stream_chat(session=session, endpoint=endpoint, model=server.served_model_name, prompt=prompt,
                             max_tokens=max_tokens, cancel=cancel, read_timeout_s=120.0,
                             temperature=0.0)  # fmt: skip
    if not sample.ok or sample.ttft_s is None:
        logs = docker_containers.container_logs(container=server.container_id, client=client)
        raise ServerCheckError(
            f"The server is up but did not answer a chat request ({sample.error or 'no content'}).",
            hint="Its last log lines (below) say why: fix it, then run the check again.",
            details=["Last log lines:", *logs.splitlines()],
        )
    return CheckAnswer(text=sample.text, ttft_s=sample.ttft_s, output_tokens=sample.output_tokens)


__all__ = [
    "BenchResult",
    "CheckAnswer",
    "GpuWatch",
    "MemoryWatch",
    "RequestSample",
    "Target",
    "bench",
    "bench_target",
    "check_server",
    "load_prompts",
    "memory_in_use",
    "parse_token_counter",
    "percentile",
    "resolve_target",
    "send_load",
    "started_server",
    "stream_chat",
    "summarize",
    "validate_load",
]

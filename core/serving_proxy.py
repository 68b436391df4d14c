"""A small reverse proxy in front of ``transformers serve``: API key, open ``/health``, Prometheus ``/metrics``.

``transformers serve`` (5.23) has no API key and no metrics, so the transformers image runs this file as its
ENTRYPOINT in front of it. It must stay standard-library only: ``core.render`` copies this very file into the
image (``core.engines.transformers``), whose Python has nothing of EZ Runner installed.

Started as ``python3 serving_proxy.py -- transformers serve MODEL ... --host 0.0.0.0 --port 8000``, it takes
the ``--host`` and ``--port`` the server command was given (the run spec appends the port, as for every engine),
listens there itself, and starts the server with ``--host 127.0.0.1 --port <a free loopback port>`` instead.

* When ``$EZRUNNER_API_KEY`` is set, every path but ``/health`` needs ``Authorization: Bearer <key>``
  (compared in constant time); other requests get a 401 with an OpenAI-style JSON error.
* ``/health`` asks the server's own ``/health`` (503 while it is not listening yet), so probes see loading.
* Responses stream through as the server writes them (server-sent events arrive token by token).
* ``/metrics`` counts requests by status code and the prompt and generated tokens the server reports in
  ``usage`` (JSON answers and the final chunk of streams).
* SIGTERM and SIGINT go to the server; the proxy exits with the server's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

#: The variable the proxy reads the key from (the image's ENTRYPOINT copies the user's variable into it).
API_KEY_ENV = "EZRUNNER_API_KEY"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
LOOPBACK = "127.0.0.1"
#: Longest request head (request line and headers) and body the proxy reads.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024 * 1024
#: A JSON answer larger than this is passed on without counting its usage.
MAX_COUNTED_JSON_BYTES = 16 * 1024 * 1024
READ_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
# RFC 9110 7.6.1: connection-specific headers a proxy must not forward.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "content-length", "expect"}
)  # fmt: skip
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Metrics:
    """What ``/metrics`` reports: counters since the proxy started."""

    requests: dict[int, int] = field(default_factory=dict)  # by status code
    prompt_tokens: int = 0
    generation_tokens: int = 0
    running: int = 0

    def prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = [
            "# HELP ezrunner_requests_total Requests the server answered, by HTTP status code.",
            "# TYPE ezrunner_requests_total counter",
            *(f'ezrunner_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())),
            "# HELP ezrunner_prompt_tokens_total Prompt tokens of the answered requests, as the server counted them.",
            "# TYPE ezrunner_prompt_tokens_total counter",
            f"ezrunner_prompt_tokens_total {self.prompt_tokens}",
            "# HELP ezrunner_generation_tokens_total Tokens the server generated, as it counted them.",
            "# TYPE ezrunner_generation_tokens_total counter",
            f"ezrunner_generation_tokens_total {self.generation_tokens}",
            "# HELP ezrunner_requests_running Requests being answered now.",
            "# TYPE ezrunner_requests_running gauge",
            f"ezrunner_requests_running {self.running}",
        ]
        return "\n".join(lines) + "\n"


class UsageMeter:
    """Finds the ``usage`` of one answer in its body as it streams past: the last one seen counts."""

    def __init__(self, content_type: str) -> None:
        kind = content_type.split(";", 1)[0].strip().lower()
        self.sse = kind == "text/event-stream"
        self.json = kind == "application/json"
        self._pending = b""
        self._size = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def feed(self, data: bytes) -> None:
        if self.sse:
            lines = (self._pending + data).split(b"\n")
            self._pending = lines.pop()
            for line in lines:
                self._line(line)
        elif self.json:
            self._size += len(data)
            self._pending = self._pending + data if self._size <= MAX_COUNTED_JSON_BYTES else b""

    def close(self) -> None:
        if self.sse:
            self._line(self._pending)
        elif self.json and self._size <= MAX_COUNTED_JSON_BYTES:
            self._take(self._pending)
        self._pending = b""

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload and payload != b"[DONE]":
                self._take(payload)

    def _take(self, payload: bytes) -> None:
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(value, dict):
            return
        usage = value.get("usage")
        if not isinstance(usage, dict) and isinstance(value.get("response"), dict):
            usage = value["response"].get("usage")  # the Responses API's final event
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        generated = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(prompt, int) and isinstance(generated, int) and prompt >= 0 and generated >= 0:
            self.prompt_tokens, self.generation_tokens = prompt, generated


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        return "close" not in tokens if self.version == "HTTP/1.1" else "keep-alive" in tokens


def _parse_head(head: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    text = head.decode("latin-1")
    first, *rest = text.split("\r\n")
    headers = []
    for line in rest:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"malformed header line {line[:60]!r}")
        headers.append((name, value.strip()))
    return first, tuple(headers)


async def _read_body(reader: asyncio.StreamReader, headers: Sequence[tuple[str, str]], *, keep: bool = True) -> bytes:
    """A request body by Content-Length or chunked transfer coding (RFC 9112 6); read and dropped, piece by
    piece, when not ``keep`` (a refused request's body must not be taken for the next request)."""
    found = {k.lower(): v for k, v in headers}
    if "chunked" in found.get("transfer-encoding", "").lower():
        pieces: AsyncIterator[bytes] = _chunks(reader, bad_status=400)
    else:
        length = found.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        pieces = _exactly(reader, int(length))
    parts, total = [], 0
    async for piece in pieces:
        total += len(piece)
        if total > MAX_BODY_BYTES:
            raise BadRequest(413, "The request body is too large.")
        if keep:
            parts.append(piece)
    return b"".join(parts)


async def _chunks(reader: asyncio.StreamReader, *, bad_status: int = 502) -> AsyncIterator[bytes]:
    """The data of a chunked body, chunk by chunk, as each arrives (trailers are read and dropped)."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest(bad_status, "A chunk size is not a number.") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


def _response_head(status: int, reason: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Proxy:
    """Answers clients on one socket, forwarding to ``transformers serve`` on ``upstream_port``."""

    def __init__(self, *, upstream_port: int, api_key: str | None, upstream_host: str = LOOPBACK) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._key = api_key.encode() if api_key else None
        self.metrics = Metrics()

    def authorized(self, request: Request) -> bool:
        if self._key is None or request.path == HEALTH_PATH:
            return True
        scheme, _, given = (request.header("authorization") or "").partition(" ")
        # compare_digest: how long the comparison takes says nothing about how much of the key was right
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._key)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for the next."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial.strip():
                await self._error(writer, 400, "The request ended before its headers did.")
            return False
        except asyncio.LimitOverrunError:
            await self._error(writer, 431, "The request's headers are too large.")
            return False
        try:
            first, headers = _parse_head(head[:-4])
            method, target, version = first.split(" ")
            if not version.startswith("HTTP/1.") or not target.startswith("/"):
                raise ValueError(first)
        except (BadRequest, ValueError):
            await self._error(writer, 400, "The request is not HTTP/1.x.")
            return False
        request = Request(method=method, target=target, version=version, headers=headers)
        expects_continue = (request.header("expect") or "").lower() == "100-continue"
        allowed = self.authorized(request)
        if allowed and expects_continue:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            # A refused request's body is read and dropped (closing on unread data would reset the connection
            # before the client reads the 401), unless the client waits for a 100 Continue it will not get.
            body = b"" if not allowed and expects_continue else await _read_body(reader, headers, keep=allowed)
        except BadRequest as error:
            await self._error(writer, error.status, str(error))
            return False
        if not allowed:
            await self._error(
                writer, 401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'.",
                code="invalid_api_key", extra=(("WWW-Authenticate", "Bearer"),),
                keep_alive=request.keep_alive and not expects_continue,
            )  # fmt: skip
            return request.keep_alive and not expects_continue
        if request.path == METRICS_PATH and method == "GET":
            await self._send(writer, 200, self.metrics.prometheus().encode(), "text/plain; version=0.0.4")
            return request.keep_alive
        return await self._forward(request, body, writer)

    async def _forward(self, request: Request, body: bytes, writer: asyncio.StreamWriter) -> bool:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), CONNECT_TIMEOUT_S
            )
        except (OSError, asyncio.TimeoutError):  # noqa: UP041 (distinct before 3.11; a --base-image may be older)
            if request.path == HEALTH_PATH:
                await self._send(writer, 503, b'{"status":"loading"}', "application/json")
            else:
                await self._error(writer, 503, "The model server is not ready yet.", code="not_ready")
            return request.keep_alive
        counted = request.path.startswith("/v1/")
        if counted:
            self.metrics.running += 1
        answer = _Answer()
        try:
            # The key stays here: the server behind needs none, and must not log it.
            forwarded = [(k, v) for k, v in request.headers if k.lower() not in (*_HOP_BY_HOP, "authorization")]
            head = [f"{request.method} {request.target} HTTP/1.1", *(f"{k}: {v}" for k, v in forwarded)]
            head += [f"Content-Length: {len(body)}", "Connection: close"]
            up_writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            return await self._relay(request, up_reader, writer, answer)
        except (BadRequest, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            if not answer.head_sent:
                await self._error(writer, 502, "The model server's answer was not valid HTTP.")
            return False  # an answer cut short: only closing the connection tells the client
        finally:
            if counted:
                self.metrics.running -= 1
                self.metrics.requests[answer.status] = self.metrics.requests.get(answer.status, 0) + 1
            up_writer.close()

    async def _relay(
        self, request: Request, up: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: _Answer
    ) -> bool:
        while True:
            first, headers = _parse_head((await up.readuntil(b"\r\n\r\n"))[:-4])
            _, code, *reason = first.split(" ", 2)
            status = int(code)
            if status >= 200:
                break  # an interim 1xx answer is dropped: the client's 100-continue was answered already
        answer.status = status
        found = {k.lower(): v for k, v in headers}
        passed = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        no_body = request.method == "HEAD" or status in (204, 304)
        length = found.get("content-length")
        chunked_up = "chunked" in found.get("transfer-encoding", "").lower()
        keep = request.keep_alive
        if no_body:
            pieces = None
        elif chunked_up or length is None:
            pieces = _chunks(up) if chunked_up else _until_closed(up)
            if request.version == "HTTP/1.1":
                passed.append(("Transfer-Encoding", "chunked"))
            else:
                keep = False
        else:
            pieces = _exactly(up, int(length))
            passed.append(("Content-Length", length))
        chunk_out = not no_body and ("Transfer-Encoding", "chunked") in passed
        passed.append(("Connection", "keep-alive" if keep else "close"))
        writer.write(_response_head(status, reason[0] if reason else _REASONS.get(status, ""), passed))
        answer.head_sent = True
        await writer.drain()
        meter = UsageMeter(found.get("content-type", ""))
        if pieces is not None:
            async for data in pieces:
                meter.feed(data)
                # written and drained piece by piece: a streamed answer reaches the client token by token
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunk_out else data)
                await writer.drain()
            if chunk_out:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        meter.close()
        if 200 <= status < 300 and request.path.startswith("/v1/"):
            self.metrics.prompt_tokens += meter.prompt_tokens
            self.metrics.generation_tokens += meter.generation_tokens
        return keep

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                    extra: Sequence[tuple[str, str]] = ()) -> None:  # fmt: skip
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        writer.write(_response_head(status, _REASONS.get(status, ""), headers) + body)
        await writer.drain()

    async def _error(self, writer: asyncio.StreamWriter, status: int, message: str, *, code: str | None = None,
                     extra: Sequence[tuple[str, str]] = (), keep_alive: bool = False) -> None:  # fmt: skip
        """An OpenAI-style JSON error."""
        error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                 "param": None, "code": code}  # fmt: skip
        await self._send(writer, status, json.dumps({"error": error}).encode(), "application/json",
                         (*extra, ("Connection", "keep-alive" if keep_alive else "close")))  # fmt: skip


@dataclass
class _Answer:
    """What a forwarded request got so far: its status (502 until the server answers) and whether the head
    went to the client (after which an error can only close the connection)."""

    status: int = 502
    head_sent: bool = False


async def _exactly(reader: asyncio.StreamReader, length: int) -> AsyncIterator[bytes]:
    left = length
    while left > 0:
        data = await reader.read(min(left, READ_BYTES))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(data)
        yield data


async def _until_closed(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(READ_BYTES):
        yield data


# THE PROCESS


def split_listen_address(child: Sequence[str], *, default_port: int) -> tuple[str, int, list[str]]:
    """The ``--host`` and ``--port`` the server command was given (the last of each wins, as with argparse),
    and the command with both taken out."""
    host, port, rest = "0.0.0.0", default_port, []
    words = list(child)
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in ("--host", "--port"):
            if not eq:
                if i + 1 >= len(words):
                    raise SystemExit(f"ezrunner proxy: {name} needs a value")
                value, i = words[i + 1], i + 1
            if name == "--host":
                host = value
            elif value.isdigit() and 1 <= int(value) <= 65535:
                port = int(value)
            else:
                raise SystemExit(f"ezrunner proxy: --port {value!r} is not a port")
        else:
            rest.append(word)
        i += 1
    return host, port, rest


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


async def serve(argv: Sequence[str]) -> int:
    """Listen where the server command says, start it on a loopback port, proxy until it exits."""
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: serving_proxy.py -- SERVER-COMMAND ... [--host H] [--port P]", file=sys.stderr)
        return 2
    host, port, command = split_listen_address(argv[1:], default_port=int(os.environ.get("PORT") or 8000))
    key = os.environ.get(API_KEY_ENV) or None
    upstream = free_loopback_port()
    proxy = Proxy(upstream_port=upstream, api_key=key)
    try:
        server = await asyncio.start_server(proxy.handle, host, port, limit=MAX_HEAD_BYTES)
    except OSError as error:
        print(f"ezrunner proxy: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        return 1
    child_env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # the server has no use for the key
    try:
        child = await asyncio.create_subprocess_exec(
            *command, "--host", LOOPBACK, "--port", str(upstream), env=child_env
        )
    except OSError as error:
        print(f"ezrunner proxy: cannot start {command[0]}: {error.strerror}", file=sys.stderr)
        server.close()
        return 127
    print(
        f"ezrunner proxy: listening on {host}:{port} for {command[0]} on {LOOPBACK}:{upstream}; "
        f"API key {'required' if key else 'not required'}; /metrics served here",
        file=sys.stderr,
        flush=True,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _forward_signal, child, sig)
    code = await child.wait()
    server.close()
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def _forward_signal(child: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(serve(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())

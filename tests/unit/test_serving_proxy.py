"""The proxy in front of `transformers serve` (core/serving_proxy.py), in-process against a stand-in upstream
that streams server-sent events as `transformers serve` does (its final chunk carries the usage), and as the
image runs it: a process that starts the server on a loopback port, forwards SIGTERM and exits with it."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core import serving_proxy
from core.serving_proxy import Proxy, UsageMeter, split_listen_address

KEY = "sk-test-0123456789"
FIRST = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
LAST = (
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)
ANSWER = {"choices": [{"message": {"content": "Hi"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


@dataclass
class Upstream:
    """What the stand-in server saw, and the switch that lets its stream finish."""

    port: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


async def _upstream(state: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    method, target, _ = head[0].split(" ")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    state.requests.append((f"{method} {target}", headers, body))
    if target == "/health":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n")
        writer.write(b'{"status":"ok"}\n')
    elif json.loads(body or b"{}").get("stream"):
        # chunked, as uvicorn sends a StreamingResponse; the rest waits until the test has seen the first chunk
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(FIRST), FIRST))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, state.release.wait, 10)
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(LAST), LAST))
        state.finished.set()
    else:
        data = json.dumps(ANSWER).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(data), data))  # fmt: skip
    await writer.drain()
    writer.close()


@dataclass
class Running:
    proxy: Proxy
    port: int
    upstream: Upstream

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def request(self, method: str, path: str, body: object = None, key: str | None = None) -> tuple[int, bytes]:
        connection = self.connect()
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data


def _start(*, api_key: str | None, upstream_up: bool = True) -> tuple[Running, Callable[[], None]]:
    loop = asyncio.new_event_loop()
    state = Upstream()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def setup() -> Running:
        if upstream_up:
            up = await asyncio.start_server(lambda r, w: _upstream(state, r, w), "127.0.0.1", 0)
            state.port = up.sockets[0].getsockname()[1]
        else:
            state.port = serving_proxy.free_loopback_port()  # nothing listens there
        proxy = Proxy(upstream_port=state.port, api_key=api_key)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        return Running(proxy=proxy, port=server.sockets[0].getsockname()[1], upstream=state)

    async def cancel_the_rest() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop() -> None:
        state.release.set()
        asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    return asyncio.run_coroutine_threadsafe(setup(), loop).result(10), stop


@pytest.fixture
def keyed() -> Iterator[Running]:
    running, stop = _start(api_key=KEY)
    yield running
    stop()


def test_a_stream_reaches_the_client_chunk_by_chunk_before_the_server_finishes(keyed: Running) -> None:
    connection = keyed.connect()
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    first = response.read1(65536)  # what has arrived so far: the server is still holding the rest back
    assert first == FIRST
    assert not keyed.upstream.finished.is_set()
    keyed.upstream.release.set()
    assert response.read() == LAST
    connection.close()
    metrics = keyed.request("GET", "/metrics", key=KEY)[1].decode()
    assert 'ezrunner_requests_total{code="200"} 1' in metrics
    assert "ezrunner_prompt_tokens_total 7" in metrics and "ezrunner_generation_tokens_total 2" in metrics
    assert "ezrunner_requests_running 0" in metrics


def test_without_the_key_every_path_but_health_is_refused_and_nothing_reaches_the_server(keyed: Running) -> None:
    for key in (None, "sk-wrong", KEY + "x", ""):
        status, data = keyed.request("POST", "/v1/chat/completions", {"model": "m", "messages": []}, key=key)
        assert status == 401
        assert json.loads(data)["error"]["code"] == "invalid_api_key"
    assert keyed.request("GET", "/metrics")[0] == 401
    assert keyed.request("GET", "/v1/models")[0] == 401
    assert keyed.request("POST", "/load_model", {"model": "x"})[0] == 401
    assert keyed.upstream.requests == []


def test_health_is_open_and_the_key_never_reaches_the_server(keyed: Running) -> None:
    status, data = keyed.request("GET", "/health")
    assert (status, json.loads(data)) == (200, {"status": "ok"})
    status, data = keyed.request("POST", "/v1/chat/completions", {"model": "m", "messages": []}, key=KEY)
    assert status == 200 and json.loads(data) == ANSWER
    seen = [headers for _, headers, _ in keyed.upstream.requests]
    assert seen and all("authorization" not in headers for headers in seen)
    metrics = keyed.request("GET", "/metrics", key=KEY)[1].decode()
    # /health is not an inference request; the JSON answer's usage is counted
    assert 'ezrunner_requests_total{code="200"} 1' in metrics
    assert "ezrunner_prompt_tokens_total 5" in metrics and "ezrunner_generation_tokens_total 3" in metrics


def test_one_connection_carries_several_requests_and_a_refused_body_is_not_taken_for_the_next() -> None:
    running, stop = _start(api_key=KEY)
    try:
        connection = running.connect()
        payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
        connection.request("POST", "/v1/chat/completions", body=payload)  # no key: refused, body read and dropped
        refused = connection.getresponse()
        assert refused.status == 401 and refused.getheader("Connection") == "keep-alive"
        refused.read()
        for _ in range(2):
            connection.request("POST", "/v1/chat/completions", body=payload, headers={"Authorization": f"Bearer {KEY}"})
            answer = connection.getresponse()
            assert answer.status == 200 and json.loads(answer.read()) == ANSWER
        connection.close()
        assert len(running.upstream.requests) == 2
    finally:
        stop()


def test_without_a_key_configured_everything_is_open_and_health_says_loading_until_the_server_listens() -> None:
    running, stop = _start(api_key=None, upstream_up=False)
    try:
        status, data = running.request("GET", "/health")
        assert (status, json.loads(data)) == (503, {"status": "loading"})
        status, data = running.request("POST", "/v1/chat/completions", {"model": "m", "messages": []})
        assert status == 503 and json.loads(data)["error"]["code"] == "not_ready"
        metrics = running.request("GET", "/metrics")
        assert metrics[0] == 200 and "ezrunner_generation_tokens_total 0" in metrics[1].decode()
    finally:
        stop()


def test_usage_comes_from_the_last_usage_of_a_stream_split_anywhere_and_from_responses_api_events() -> None:
    meter = UsageMeter("text/event-stream; charset=utf-8")
    stream = FIRST + LAST
    for i in range(0, len(stream), 7):  # lines split across reads
        meter.feed(stream[i : i + 7])
    meter.close()
    assert (meter.prompt_tokens, meter.generation_tokens) == (7, 2)
    meter = UsageMeter("text/event-stream")
    meter.feed(b'event: response.completed\ndata: {"response":{"usage":{"input_tokens":4,"output_tokens":6}}}\n\n')
    meter.close()
    assert (meter.prompt_tokens, meter.generation_tokens) == (4, 6)
    meter = UsageMeter("text/plain")
    meter.feed(json.dumps(ANSWER).encode())
    meter.close()
    assert (meter.prompt_tokens, meter.generation_tokens) == (0, 0)


def test_the_listen_address_is_the_server_commands_and_the_server_gets_loopback() -> None:
    command = ["transformers", "serve", "m", "--host", "0.0.0.0", "--port", "8000", "--port=9000", "--extra"]
    assert split_listen_address(command, default_port=1) == ("0.0.0.0", 9000, ["transformers", "serve", "m", "--extra"])
    assert split_listen_address(["x"], default_port=8123) == ("0.0.0.0", 8123, ["x"])
    with pytest.raises(SystemExit):
        split_listen_address(["x", "--port", "http"], default_port=1)


# A stand-in for `transformers serve`: answers /health, records how it was started, exits 3 on SIGTERM.
CHILD = r"""
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
record = {"argv": args, "key_seen": os.environ.get("EZRUNNER_API_KEY")}
open(os.environ["CHILD_RECORD"], "w").write(json.dumps(record))
def stop(signum, frame):
    open(os.environ["CHILD_RECORD"] + ".term", "w").write(str(signum))
    os._exit(3)
signal.signal(signal.SIGTERM, stop)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
HTTPServer((host, port), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_process_starts_the_server_on_loopback_forwards_sigterm_and_exits_with_it(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    record = tmp_path / "record.json"
    port = _free_port()
    env = {**os.environ, "CHILD_RECORD": str(record), serving_proxy.API_KEY_ENV: KEY}
    proxy = subprocess.Popen(
        [sys.executable, serving_proxy.__file__, "--", sys.executable, str(child), "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proxy.poll() is None, "the proxy never answered /health"
            time.sleep(0.2)
        started = json.loads(record.read_text())
        assert started["argv"][-4:-2] == ["--host", "127.0.0.1"] and int(started["argv"][-1]) != port
        assert started["key_seen"] is None  # the key stays with the proxy
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=30)
    finally:
        if proxy.poll() is None:
            proxy.kill()
    assert proxy.returncode == 3
    assert (tmp_path / "record.json.term").read_text() == str(int(signal.SIGTERM))
    assert "API key required" in stderr and KEY not in stderr

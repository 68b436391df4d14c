"""`load.sh --check` with the stand-in `docker` of test_load_sh_args: once the port answers, one streamed chat
request goes to /v1/chat/completions; the answer's first tokens and the time to first token are printed, the
container is removed and the exit is 0; a server that does not answer the chat ends non-zero with its last
log lines, the container removed. The real engine's check is in tests/integration/test_bench.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from core.plan import plan
from core.render import render
from tests.unit.test_load_sh_args import Server, _free_port, _stage, _stop_fake_server
from tests.unit.test_render import qwen05b_on_cpu

# Answers GET with 200 (health) and POST /v1/chat/completions with an event stream of three tokens, the way
# llama-server streams (a role chunk without content, content chunks, a usage chunk, [DONE]).
CHAT_SERVE = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
class Chat(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        MODE
        self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
        chunks = [{"choices": [{"delta": {"role": "assistant", "content": None}}]}]
        chunks += [{"choices": [{"delta": {"content": piece}}]} for piece in ("Hel", "lo \"there\"", "!")]
        chunks += [{"choices": [], "usage": {"completion_tokens": 3}}]
        for chunk in chunks:
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n"); self.wfile.flush(); time.sleep(0.05)
        self.wfile.write(b"data: [DONE]\n\n")
        with open(__import__("os").environ.get("FAKE_BODY", "/dev/null"), "w") as out:
            json.dump(body, out)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Chat).serve_forever()
"""
ANSWERS = CHAT_SERVE.replace("MODE", "pass")
# as an image packed with --api-key-env: 401 unless the request carries the key the container was given
KEYED = CHAT_SERVE.replace(
    "MODE", 'key = __import__("os").environ.get("MY_KEY")\n'
    '        if not key or self.headers.get("Authorization") != "Bearer " + key:\n'
    '            self.send_response(401); self.send_header("Content-Length", "4"); self.end_headers(); '
    'self.wfile.write(b"nope"); return\n'
    '        open(__import__("os").environ["FAKE_KEY"], "w").write(key)'
)
REFUSES = CHAT_SERVE.replace(
    "MODE", 'self.send_response(500); self.send_header("Content-Length", "4"); self.end_headers(); '
    'self.wfile.write(b"oops"); return'
)


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[Server]:
    server = _stage(tmp_path, split=False)
    yield server
    _stop_fake_server(server)


def test_check_prints_the_first_tokens_and_the_ttft_then_removes_the_container(stick: Server, tmp_path: Path) -> None:
    port = _free_port()
    body = tmp_path / "body.json"
    result = stick.load("--check", "--network", "host", "--port", str(port), "--timeout", "30", FAKE_SERVE=ANSWERS,
                        FAKE_BODY=str(body))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 'Answer: Hello \\"there\\"!' in result.stdout
    assert "Time to first token: " in result.stdout and " s (3 chunks)" in result.stdout
    assert "Check passed" in result.stdout and "Ready" not in result.stdout
    sent = json.loads(body.read_text())
    assert sent["stream"] is True and sent["max_tokens"] > 0 and sent["temperature"] == 0  # greedy, as run --check
    assert sent["model"] == render(plan=qwen05b_on_cpu()).served_model_name
    calls = stick.docker_calls()
    assert any(c.startswith("run ") for c in calls)
    assert any(c.startswith("rm -f ") for c in calls)  # stopped and removed


def test_check_on_a_server_that_does_not_answer_the_chat_fails_with_its_logs(stick: Server) -> None:
    port = _free_port()
    result = stick.load("--check", "--network", "host", "--port", str(port), "--timeout", "30", FAKE_SERVE=REFUSES)
    assert result.returncode == 1
    assert "did not answer a chat request" in result.stderr
    assert "HTTP/1.0 500" in result.stderr  # what it answered
    assert "Last log lines" in result.stderr and "fake log line" in result.stderr
    assert any(c.startswith("rm -f ") for c in stick.docker_calls())
    assert "Check passed" not in result.stdout


def test_check_on_a_server_that_stops_while_starting_fails_with_its_logs(stick: Server) -> None:
    result = stick.load("--check", "--network", "host", "--port", str(_free_port()), "--timeout", "30",
                        FAKE_RUNNING="false")  # fmt: skip
    assert result.returncode == 1
    assert "The server stopped while starting" in result.stderr and "fake log line" in result.stderr


def test_check_cannot_go_with_no_start(stick: Server) -> None:
    result = stick.load("--check", "--no-start")
    assert result.returncode == 2
    assert "--check starts the server" in result.stderr
    assert stick.docker_calls() == []


def test_help_lists_check(stick: Server) -> None:
    assert "--check" in stick.load("--help").stdout


@pytest.fixture
def keyed_stick(tmp_path: Path) -> Iterator[Server]:
    base = qwen05b_on_cpu()
    server = _stage(tmp_path, split=False, plan=plan(model=base.model, target=base.target,
                                                     options=replace(base.options, api_key_env="MY_KEY")))  # fmt: skip
    yield server
    _stop_fake_server(server)


@pytest.mark.parametrize("given", ["sk-the-users-own", None])
def test_check_of_a_pack_that_needs_an_api_key_sends_it(keyed_stick: Server, tmp_path: Path, given: str | None) -> None:
    """With the variable set, the check sends that key; unset, its throwaway server gets a random one that is
    never printed (a plain start still refuses: the key is the user's to choose)."""
    port = _free_port()
    seen = tmp_path / "key"
    env = {"MY_KEY": given} if given else {}
    result = keyed_stick.load("--check", "--network", "host", "--port", str(port), "--timeout", "30",
                              FAKE_SERVE=KEYED, FAKE_KEY=str(seen), **env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Check passed" in result.stdout
    key = seen.read_text()
    if given:
        assert key == given
    else:
        assert len(key) == 48 and key not in result.stdout + result.stderr + "\n".join(keyed_stick.docker_calls())
    refused = keyed_stick.load("--network", "host", "--port", str(_free_port()), "--timeout", "30",
                               FAKE_SERVE=KEYED, FAKE_KEY=str(seen))  # fmt: skip
    assert refused.returncode != 0 and "MY_KEY is not set" in refused.stdout + refused.stderr

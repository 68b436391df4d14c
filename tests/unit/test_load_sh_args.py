"""load.sh as a user on the offline server runs it, with a stand-in `docker` on PATH that records its
arguments: one argument parser (--help, unknown options refused with the usage, options that combine),
checks that take seconds before what takes minutes, damage messages with the next step, parts taken from
the parts list only, and never "Ready" unless the published port answers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.archive import names
from core.plan import Plan
from core.render import default_timeout_s, render, render_load_script
from tests.unit.test_render import qwen05b_on_cpu

FAKE_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for docker: records each call, answers as an engine would.
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  network) [ "${FAKE_BRIDGE:-1}" = 1 ] ;;
  container) exit 1 ;;  # container inspect NAME: there is no such container
  load)
    if [ "${2:-}" = -i ]; then sha256sum < "$3"; else sha256sum; fi | cut -d' ' -f1 > "$FAKE_LOADED"
    echo "Loaded image: fake" ;;
  run)
    if [ -n "${FAKE_SERVE:-}" ]; then
      for arg in "$@"; do case "$arg" in PORT=*) port=${arg#PORT=} ;; esac; done
      nohup "$FAKE_PYTHON" -c "$FAKE_SERVE" "$port" >/dev/null 2>&1 &
      echo $! > "$FAKE_SERVER_PID"
    fi
    echo 0123456789abcdef ;;
  inspect) case "$3" in *Running*) echo "${FAKE_RUNNING:-true}" ;; *) echo "${FAKE_HEALTH:-starting}" ;; esac ;;
  logs) echo "fake log line: loading the model" ;;
  rm) ;;
esac
"""

# A server that answers 200 to every GET: what the engine does once the model is loaded.
SERVE = """
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""


@dataclass
class Server:
    """A folder as the USB stick leaves it on the server, and a way to run its load.sh."""

    folder: Path
    env: dict[str, str]
    archive: str
    whole_sha256: str

    def load(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(self.folder / "load.sh"), *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def docker_calls(self) -> list[str]:
        log = Path(self.env["FAKE_DOCKER_LOG"])
        return log.read_text().splitlines() if log.exists() else []

    def loaded_sha256(self) -> str:
        return Path(self.env["FAKE_LOADED"]).read_text().strip()


def _stage(tmp_path: Path, *, split: bool, plan: Plan | None = None) -> Server:
    plan = plan or qwen05b_on_cpu()
    spec = render(plan=plan)
    folder = tmp_path / "stick"
    folder.mkdir()
    archive = folder / "m.tar"
    payload = b"a docker-archive, in three parts " * 1000
    if split:
        parts = [payload[i : i + 12_000] for i in range(0, len(payload), 12_000)]
        lines = []
        for index, piece in enumerate(parts):
            names.part_path(archive, index).write_bytes(piece)
            lines.append(f"{hashlib.sha256(piece).hexdigest()}  {names.part_name(archive.name, index)}\n")
        names.parts_checksum_path(archive).write_text("".join(lines))
        part_names = [names.part_name(archive.name, i) for i in range(len(parts))]
    else:
        archive.write_bytes(payload)
        part_names = []
    names.checksum_path(archive).write_text(f"{hashlib.sha256(payload).hexdigest()}  m.tar\n")
    script = render_load_script(plan=plan, spec=spec, archive_name="m.tar", parts=part_names)
    (folder / "load.sh").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "FAKE_LOADED": str(tmp_path / "loaded.sha256"),
        "FAKE_SERVER_PID": str(tmp_path / "server.pid"),
        "FAKE_PYTHON": sys.executable,
    }
    return Server(folder=folder, env=env, archive="m.tar", whole_sha256=hashlib.sha256(payload).hexdigest())


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[Server]:
    server = _stage(tmp_path, split=False)
    yield server
    _stop_fake_server(server)


@pytest.fixture
def split_stick(tmp_path: Path) -> Iterator[Server]:
    server = _stage(tmp_path, split=True)
    yield server
    _stop_fake_server(server)


def _stop_fake_server(server: Server) -> None:
    pid_file = Path(server.env["FAKE_SERVER_PID"])
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_help_lists_every_option_and_touches_nothing(stick: Server) -> None:
    for flag in ("--help", "-h"):
        result = stick.load(flag)
        assert result.returncode == 0, result.stderr
        for option in ("--port N", "--name NAME", "--network MODE", "--timeout SECONDS", "--no-start", "--help"):
            assert option in result.stdout
    assert stick.docker_calls() == []


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--port"], "--port needs a value"),
        (["--port", "http"], "--port http is not a port number"),
        (["--port", "70000"], "--port 70000 is not from 1 to 65535"),
        (["--port", "1234567"], "--port 1234567 is not from 1 to 65535"),
        (["--timeout", "-5"], "--timeout -5 is not a whole number"),
        (["--timeout", "0"], "--timeout 0 is not a positive number"),
        (["--network", "bridged"], "--network bridged is not bridge or host"),
        (["--name", "a;b"], "--name a;b is not a container name"),
        (["--no-start", "extra"], "unknown option extra"),
    ],
)
def test_bad_options_are_refused_with_the_usage_before_anything_runs(stick: Server, args: list[str], why: str) -> None:
    result = stick.load(*args)
    assert result.returncode == 2
    assert why in result.stderr
    assert "Usage: ./load.sh" in result.stderr
    assert stick.docker_calls() == []


def test_options_combine_in_any_order_and_in_either_spelling(stick: Server) -> None:
    port = _free_port()
    spellings = (["--port", str(port), "--timeout", "5", "--no-start"], ["--no-start", f"--port={port}", "--timeout=5"])
    for args in spellings:
        result = stick.load(*args)
        assert result.returncode == 0, result.stderr
        assert "Loaded ezrunner/" in result.stdout
    calls = stick.docker_calls()
    assert not [c for c in calls if c.startswith("run")]  # --no-start: loaded, not started
    assert calls.count("load -i m.tar") == 2
    assert stick.loaded_sha256() == stick.whole_sha256


def test_the_default_wait_is_scaled_to_the_model_as_ezrunner_run_waits(stick: Server) -> None:
    spec = render(plan=qwen05b_on_cpu()).run_spec
    assert f'TIMEOUT="${{TIMEOUT:-{default_timeout_s(spec=spec)}}}"' in (stick.folder / "load.sh").read_text()
    assert default_timeout_s(spec=spec) >= 2 * spec.start_period_s


def test_never_ready_when_the_port_does_not_answer(stick: Server) -> None:
    port = _free_port()
    # the container runs and even calls itself healthy, but nothing answers on the port
    result = stick.load("--network", "host", "--port", str(port), "--timeout", "3", timeout=60, FAKE_HEALTH="healthy")
    assert result.returncode == 1
    assert "Ready" not in result.stdout + result.stderr
    assert f"did not answer on port {port} within 3 s" in result.stderr
    assert "--timeout SECONDS" in result.stderr  # the next step
    assert "fake log line: loading the model" in result.stderr  # the container's last log lines
    calls = stick.docker_calls()
    run = next(c for c in calls if c.startswith("run "))
    assert "--network host" in run and f"PORT={port}" in run and "--name qwen2.5-0.5b" in run
    assert calls[-1] == "rm -f qwen2.5-0.5b"  # the container it started is removed


def test_ready_once_the_published_port_answers(stick: Server) -> None:
    port = _free_port()
    result = stick.load("--network", "host", "--port", str(port), "--timeout", "30", FAKE_SERVE=SERVE)
    assert result.returncode == 0, result.stderr
    assert f"Ready: http://127.0.0.1:{port}/v1" in result.stdout
    assert not [c for c in stick.docker_calls() if c.startswith("rm")]


def test_a_stopped_container_is_reported_with_its_logs_and_removed(stick: Server) -> None:
    result = stick.load("--network", "host", "--port", str(_free_port()), FAKE_RUNNING="false")
    assert result.returncode == 1
    assert "The server stopped while starting" in result.stderr and "fake log line" in result.stderr
    assert "Ready" not in result.stdout
    assert stick.docker_calls()[-1].startswith("rm -f")


def test_an_engine_without_a_bridge_fails_at_once_naming_network_host(stick: Server) -> None:
    result = stick.load("--port", str(_free_port()), FAKE_BRIDGE="0")
    assert result.returncode == 1
    assert "no bridge network" in result.stderr and "./load.sh --network host" in result.stderr
    assert [c.split()[0] for c in stick.docker_calls()] == ["network"]  # nothing verified, loaded or started


def test_a_port_in_use_fails_before_the_load_naming_port(stick: Server) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = stick.load("--network", "host", "--port", str(port))
    assert result.returncode == 1
    assert f"Port {port} on this server is already in use" in result.stderr and "--port N" in result.stderr
    assert not [c for c in stick.docker_calls() if c.startswith(("load", "run"))]


def test_parts_come_from_the_parts_list_and_a_stray_part_is_named_not_loaded(split_stick: Server) -> None:
    stray = names.part_path(split_stick.folder / "m.tar", 3)
    assert not stray.exists() and names.part_path(split_stick.folder / "m.tar", 2).exists()
    stray.write_bytes(b"a leftover of another pack")
    result = split_stick.load("--no-start")
    assert result.returncode == 0, result.stderr
    assert "Ignoring m.tar.part003: m.tar.parts.sha256 does not list it." in result.stdout
    assert split_stick.loaded_sha256() == split_stick.whole_sha256  # the stray part was not appended


def test_damage_messages_say_what_to_do_next(split_stick: Server) -> None:
    archive = split_stick.folder / "m.tar"
    first = names.part_path(archive, 0)
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    damaged = split_stick.load("--no-start")
    assert damaged.returncode == 1
    assert "m.tar.part000: FAILED" in damaged.stdout
    assert "damaged or incomplete" in damaged.stderr and "Next: Copy the file(s) marked FAILED" in damaged.stderr
    names.part_path(archive, 1).unlink()
    missing = split_stick.load("--no-start")
    assert missing.returncode == 1
    assert "m.tar.part001, one of the 3 parts of m.tar, is missing" in missing.stderr
    assert "Next: Copy it from the machine that packed the archive" in missing.stderr
    names.parts_checksum_path(archive).unlink()
    no_list = split_stick.load("--no-start")
    assert "m.tar.parts.sha256 is missing beside load.sh" in no_list.stderr
    assert not [c for c in split_stick.docker_calls() if c.startswith("load")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_removes_the_container_it_started(stick: Server, signum: int) -> None:
    script = ["bash", str(stick.folder / "load.sh"), "--network", "host", "--port", str(_free_port())]
    process = subprocess.Popen(script, env=stick.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(c.startswith("run ") for c in stick.docker_calls()):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "stopped; the container qwen2.5-0.5b was removed" in stderr
    assert stick.docker_calls()[-1] == "rm -f qwen2.5-0.5b"

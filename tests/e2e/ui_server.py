"""Start and stop a real `ezrunner ui` process for end-to-end tests and the download benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

HEALTH_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ezrunner_command() -> list[str]:
    """The installed `ezrunner` script beside this interpreter, else the module (same code either way)."""
    script = Path(sys.executable).with_name("ezrunner")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ezrunner_ui.cli"]


@dataclass
class UiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr together)."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_ui_server(*, env: Mapping[str, str], port: int | None = None, args: tuple[str, ...] = ()) -> UiServer:
    """Run `ezrunner ui --no-browser` on 127.0.0.1 and wait until /_stcore/health answers "ok"."""
    port = port or free_port()
    # A file, not a pipe: nobody reads the pipe while the test runs, and a full one would block the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed by running_ui_server
    process = subprocess.Popen(
        [*ezrunner_command(), "ui", "--no-browser", "--port", str(port), *args],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = UiServer(url=f"http://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = server.output()
            log.close()
            raise RuntimeError(f"`ezrunner ui` exited with {process.returncode}:\n{output}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.url}/_stcore/health", timeout=2).text == "ok":
                return server
        time.sleep(0.2)
    server.stop()
    output = server.output()
    log.close()
    raise RuntimeError(f"`ezrunner ui` did not answer /_stcore/health in {HEALTH_TIMEOUT_S:.0f} s:\n{output}")


@contextlib.contextmanager
def running_ui_server(*, env: Mapping[str, str], port: int | None = None) -> Iterator[UiServer]:
    server = start_ui_server(env=env, port=port)
    try:
        yield server
    finally:
        server.stop()
        server.log.close()

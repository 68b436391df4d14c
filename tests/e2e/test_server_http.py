"""The real `ezrunner ui` process over HTTP: where it listens, what it prints, and downloads through the
whole Streamlit middleware stack (the unit tests cover the routes alone)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from core.history import History
from ezrunner_ui.routes import artifact_url
from tests.e2e.ui_server import UiServer, ezrunner_command, free_port, running_ui_server, start_ui_server

pytestmark = pytest.mark.e2e
SIZE = 5 * 1024 * 1024 + 3


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ezrunner-home")


@pytest.fixture(scope="module")
def pack(home: Path) -> tuple[str, bytes]:
    content = os.urandom(SIZE)
    archive = home / "out" / "tiny.tar"
    archive.parent.mkdir()
    archive.write_bytes(content)
    history = History(home / "history.sqlite")
    record_id = history.start(
        model_id="org/tiny", source="hf", revision="main", model_commit="c" * 40, target={}, plan={},
        dockerfile="FROM scratch\n", image_tag="ezrunner/org-tiny:test",
    )
    history.finish(record_id, outcome="succeeded", archive=archive, parts=(archive,), size=SIZE,
                   sha256=hashlib.sha256(content).hexdigest())
    return record_id, content


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[UiServer]:
    with running_ui_server(env={"EZRUNNER_HOME": str(home)}) as running:
        yield running


def test_listens_on_loopback_only_and_prints_its_url(server: UiServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    listening = [
        c.laddr for c in psutil.Process(server.process.pid).net_connections(kind="tcp") if c.status == "LISTEN"
    ]
    assert listening, "the server process holds no listening socket"
    assert {(addr.ip, addr.port) for addr in listening} == {("127.0.0.1", port)}
    assert f"EZ Runner wizard: http://127.0.0.1:{port}" in server.output()
    assert "WARNING" not in server.output()


def test_download_through_streamlit_stack_is_not_gzipped(server: UiServer, pack: tuple[str, bytes]) -> None:
    record_id, content = pack
    # requests asks for gzip by default, like a browser; the tar must still arrive byte for byte.
    with requests.get(server.url + artifact_url(record_id=record_id), stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert "content-encoding" not in r.headers
        assert r.headers["content-length"] == str(SIZE)
        assert r.headers["content-disposition"] == 'attachment; filename="tiny.tar"'
        digest = hashlib.sha256()
        for chunk in r.raw.stream(1 << 20, decode_content=False):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(content).hexdigest()


def test_resume_and_head_through_the_stack(server: UiServer, pack: tuple[str, bytes]) -> None:
    record_id, content = pack
    url = server.url + artifact_url(record_id=record_id)
    r = requests.get(url, headers={"Range": "bytes=0-1023"}, timeout=30)
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-1023/{SIZE}"
    assert r.content == content[:1024]
    r = requests.head(url, timeout=30)
    assert (r.status_code, r.headers["content-length"]) == (200, str(SIZE))


def test_unknown_api_paths_get_json_not_the_app_page(server: UiServer) -> None:
    for path in ("/api/artifacts/0123456789abcdef0123456789abcdef/archive", "/api/nothing/here", "/api/jobs/x"):
        r = requests.get(server.url + path, timeout=30)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json", path


def test_foreign_host_names_are_refused(server: UiServer) -> None:
    r = requests.get(server.url + "/_stcore/health", headers={"Host": "rebound.example"}, timeout=30)
    assert r.status_code == 403
    r = requests.get(server.url + "/_stcore/health", headers={"Host": "localhost"}, timeout=30)
    assert r.status_code == 200


def test_a_busy_port_fails_with_a_next_step(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*ezrunner_command(), "ui", "--no-browser", "--port", str(port)],
            env={**os.environ, "EZRUNNER_HOME": str(home)}, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--port {port + 1}" in result.stderr


def test_host_off_loopback_prints_a_warning(home: Path) -> None:
    server = start_ui_server(env={"EZRUNNER_HOME": str(home)}, port=free_port(), args=("--host", "0.0.0.0"))
    try:
        assert "WARNING: listening on 0.0.0.0" in server.output()
        assert "SSH tunnel" in server.output()
    finally:
        server.stop()
        server.log.close()

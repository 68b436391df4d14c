"""The /api routes on a real History in a temporary EZRUNNER_HOME, through Starlette's TestClient."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from core.errors import BuildFailedError
from core.events import Event, EventSink
from core.history import History
from core.jobs import JobRegistry
from ezrunner_ui.routes import IdentityDownloads, LoopbackHostOnly, api_routes, artifact_url, job_url

ARCHIVE_SIZE = 3 * 1024 * 1024 + 17  # several FileResponse chunks, not a round number


@dataclass(frozen=True)
class Pack:
    record_id: str
    archive: Path
    content: bytes


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EZRUNNER_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture
def client(home: Path) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=api_routes())) as c:
        yield c


def _start(history: History) -> str:
    return history.start(
        model_id="org/tiny",
        source="hf",
        revision="main",
        model_commit="c" * 40,
        target={"label": "CPU"},
        plan={"engine": "transformers"},
        dockerfile="FROM scratch\n",
        image_tag="ezrunner/org-tiny:test",
    )


def _write_pack(
    folder: Path, name: str = "org-tiny.tar", *, load_script: str = "load.sh"
) -> tuple[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    content = os.urandom(ARCHIVE_SIZE)
    archive = folder / name
    archive.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    (folder / f"{name}.sha256").write_text(f"{digest}  {name}\n", encoding="utf-8")
    (folder / load_script).write_text(f"#!/bin/sh\nARCHIVE={name}\ndocker load -i \"$ARCHIVE\"\n", encoding="utf-8")
    return archive, content


@pytest.fixture
def pack(home: Path) -> Pack:
    history = History()
    record_id = _start(history)
    archive, content = _write_pack(home / "out")
    history.finish(
        record_id,
        outcome="succeeded",
        archive=archive,
        parts=(archive,),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        image_id="sha256:" + "a" * 64,
    )
    return Pack(record_id=record_id, archive=archive, content=content)


def test_archive_is_served_whole_with_length_and_file_name(client: TestClient, pack: Pack) -> None:
    r = client.get(artifact_url(record_id=pack.record_id))
    assert r.status_code == 200
    assert r.content == pack.content
    assert r.headers["content-length"] == str(ARCHIVE_SIZE)
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"] == 'attachment; filename="org-tiny.tar"'
    assert r.headers["accept-ranges"] == "bytes"


def test_range_request_gets_206_with_content_range(client: TestClient, pack: Pack) -> None:
    r = client.get(artifact_url(record_id=pack.record_id), headers={"Range": "bytes=0-1023"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-1023/{ARCHIVE_SIZE}"
    assert r.headers["content-length"] == "1024"
    assert r.content == pack.content[:1024]


def test_resume_from_an_offset_returns_the_rest(client: TestClient, pack: Pack) -> None:
    offset = ARCHIVE_SIZE - 5000
    r = client.get(artifact_url(record_id=pack.record_id), headers={"Range": f"bytes={offset}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {offset}-{ARCHIVE_SIZE - 1}/{ARCHIVE_SIZE}"
    assert r.content == pack.content[offset:]


def test_unsatisfiable_range_is_416(client: TestClient, pack: Pack) -> None:
    r = client.get(artifact_url(record_id=pack.record_id), headers={"Range": f"bytes={ARCHIVE_SIZE + 10}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{ARCHIVE_SIZE}"


def test_head_gives_headers_without_body(client: TestClient, pack: Pack) -> None:
    r = client.head(artifact_url(record_id=pack.record_id))
    assert r.status_code == 200
    assert r.headers["content-length"] == str(ARCHIVE_SIZE)
    assert r.content == b""


def test_sha256_and_load_script_kinds(client: TestClient, pack: Pack) -> None:
    r = client.get(artifact_url(record_id=pack.record_id, kind="sha256"))
    assert r.status_code == 200
    assert r.text == f"{hashlib.sha256(pack.content).hexdigest()}  org-tiny.tar\n"
    assert r.headers["content-disposition"] == 'attachment; filename="org-tiny.tar.sha256"'
    r = client.get(artifact_url(record_id=pack.record_id, kind="load.sh"))
    assert r.status_code == 200
    assert "ARCHIVE=org-tiny.tar" in r.text.splitlines()
    assert r.headers["content-disposition"] == 'attachment; filename="load.sh"'


def test_load_script_named_after_the_archive_when_the_folder_is_shared(
    client: TestClient, home: Path
) -> None:
    history = History()
    record_id = _start(history)
    # core.pack names its script <stem>.load.sh when another archive's load.sh is already in the folder
    (home / "out").mkdir()
    (home / "out" / "load.sh").write_text("ARCHIVE=other.tar\ndocker load -i other.tar\n", encoding="utf-8")
    archive, content = _write_pack(home / "out", "second.tar", load_script="second.load.sh")
    history.finish(record_id, outcome="succeeded", archive=archive, parts=(archive,), size=len(content))
    r = client.get(artifact_url(record_id=record_id, kind="load.sh"))
    assert r.status_code == 200
    assert "second.tar" in r.text
    assert r.headers["content-disposition"] == 'attachment; filename="second.load.sh"'


def test_split_pack_serves_parts_and_explains_the_missing_whole(client: TestClient, home: Path) -> None:
    history = History()
    record_id = _start(history)
    out = home / "split"
    out.mkdir()
    archive = out / "big.tar"
    chunks = [os.urandom(2000), os.urandom(1000)]
    parts = tuple(out / f"big.tar.part{n:03d}" for n in range(2))
    for path, chunk in zip(parts, chunks, strict=True):
        path.write_bytes(chunk)
    history.finish(record_id, outcome="succeeded", archive=archive, parts=parts, size=3000)

    r = client.get(artifact_url(record_id=record_id, kind="part/1"))
    assert r.status_code == 200
    assert r.content == chunks[1]
    assert r.headers["content-disposition"] == 'attachment; filename="big.tar.part001"'
    r = client.get(artifact_url(record_id=record_id))
    assert r.status_code == 404
    assert r.json()["error"] == "split_archive"
    assert r.json()["parts"] == [artifact_url(record_id=record_id, kind=f"part/{n}") for n in range(2)]
    r = client.get(artifact_url(record_id=record_id, kind="part/2"))
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_part"


@pytest.mark.parametrize(
    "path",
    [
        "/api/artifacts/not-an-id/archive",
        "/api/artifacts/0123456789ABCDEF0123456789ABCDEF/archive",  # upper case is not uuid4().hex
        "/api/artifacts/0123456789abcdef0123456789abcdef/archive",  # well formed, unknown
        "/api/artifacts/..%2F..%2F..%2Fetc%2Fpasswd/archive",
        "/api/artifacts/%2e%2e/%2e%2e/etc/passwd",
        "/api/jobs/0123456789abcdef0123456789abcdef",
        "/api/anything-else",
    ],
)
def test_bad_or_unknown_ids_are_404_json(client: TestClient, pack: Pack, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["message"]
    assert "root:" not in r.text


def test_traversal_through_the_kind_is_refused(client: TestClient, pack: Pack) -> None:
    r = client.get(f"/api/artifacts/{pack.record_id}/..%2F..%2F..%2Fetc%2Fpasswd")
    assert r.status_code == 404
    r = client.get(f"/api/artifacts/{pack.record_id}/passwd")
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_kind"


@pytest.mark.parametrize(("outcome", "phrase"), [("running", "still running"), ("failed", "ended as failed")])
def test_unfinished_packs_have_nothing_to_download(
    client: TestClient, home: Path, outcome: str, phrase: str
) -> None:
    history = History()
    record_id = _start(history)
    if outcome != "running":
        history.finish(record_id, outcome=outcome, error="boom")
    r = client.get(artifact_url(record_id=record_id))
    assert r.status_code == 404
    assert r.json()["error"] == "pack_not_finished"
    assert phrase in r.json()["message"]


def test_moved_archive_is_404_saying_so(client: TestClient, pack: Pack) -> None:
    pack.archive.rename(pack.archive.with_name("elsewhere.tar"))
    r = client.get(artifact_url(record_id=pack.record_id))
    assert r.status_code == 404
    assert r.json()["error"] == "file_missing"
    assert "moved or deleted" in r.json()["message"]


def _job_client(registry: JobRegistry) -> TestClient:
    return TestClient(Starlette(routes=api_routes(registry=registry)))


def test_job_snapshot_reports_stage_progress(home: Path) -> None:
    registry = JobRegistry()
    release = threading.Event()

    def work(on_event: EventSink, cancel: threading.Event) -> None:
        on_event(Event(stage="download", done=512, total=2048, unit="B", message="Downloading"))
        on_event(Event(stage="build", done=3, total=9, unit="step", message="Building", log="#7 [3/9] RUN x"))
        release.wait(10)

    job = registry.start(key="org/tiny", work=work)
    try:
        with _job_client(registry) as c:
            for _ in range(200):  # the worker thread posts its events right after start
                body = c.get(job_url(job_id=job.id)).json()
                if body["stage"] == "build":
                    break
                threading.Event().wait(0.01)
            assert body["state"] == "running"
            assert body["active"] is True
            by_stage = {s["stage"]: s for s in body["stages"]}
            assert (by_stage["download"]["done"], by_stage["download"]["total"]) == (512, 2048)
            assert by_stage["download"]["fraction"] == 0.25
            assert (by_stage["build"]["done"], by_stage["build"]["total"]) == (3, 9)
            assert body["log_tail"] == ["#7 [3/9] RUN x"]
            assert body["downloads"] is None
    finally:
        release.set()
        job.wait(10)


def test_finished_job_links_its_downloads_and_failed_job_its_error(home: Path) -> None:
    @dataclass(frozen=True)
    class Result:
        record_id: str

    registry = JobRegistry()

    def ok(on_event: EventSink, cancel: threading.Event) -> Result:
        return Result(record_id="f" * 32)

    def broken(on_event: EventSink, cancel: threading.Event) -> None:
        raise BuildFailedError("The build failed at step 3.", hint="Read the log above.")

    done, failed = registry.start(key="a", work=ok), registry.start(key="b", work=broken)
    done.wait(10)
    failed.wait(10)
    with _job_client(registry) as c:
        body = c.get(job_url(job_id=done.id)).json()
        assert body["state"] == "succeeded"
        assert body["downloads"]["archive"] == artifact_url(record_id="f" * 32)
        body = c.get(job_url(job_id=failed.id)).json()
        assert body["state"] == "failed"
        assert body["error_code"] == "build_failed"
        assert body["error"] == "The build failed at step 3. Read the log above."


def _gzipping_app() -> Starlette:
    # The order Streamlit stacks them: our middleware outside, its gzip inside.
    return Starlette(
        routes=api_routes(),
        middleware=[Middleware(IdentityDownloads), Middleware(GZipMiddleware, minimum_size=500)],
    )


def test_downloads_are_not_gzipped_even_when_the_client_accepts_it(home: Path, pack: Pack) -> None:
    with TestClient(_gzipping_app()) as c:
        r = c.get(artifact_url(record_id=pack.record_id), headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert "content-encoding" not in r.headers
    assert r.headers["content-length"] == str(ARCHIVE_SIZE)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(pack.content).hexdigest()


def test_without_identity_downloads_gzip_would_recompress_the_tar(home: Path, pack: Pack) -> None:
    # Guards the reason IdentityDownloads exists: if Starlette ever stops gzipping x-tar, drop it.
    app = Starlette(routes=api_routes(), middleware=[Middleware(GZipMiddleware, minimum_size=500)])
    with TestClient(app) as c:
        r = c.get(artifact_url(record_id=pack.record_id), headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"


def _host_checked_app(address: str | None) -> Starlette:
    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    return Starlette(
        routes=[Route("/", hello)], middleware=[Middleware(LoopbackHostOnly, listening_on=lambda: address)]
    )


@pytest.mark.parametrize(
    ("address", "host", "status"),
    [
        ("127.0.0.1", "127.0.0.1:8501", 200),
        ("127.0.0.1", "localhost:8501", 200),
        ("127.0.0.1", "[::1]:8501", 200),
        ("127.0.0.1", "attacker.example:8501", 403),  # DNS rebinding
        ("127.0.0.1", "192.168.1.20:8501", 403),
        ("0.0.0.0", "attacker.example:8501", 200),  # the user chose --host: any name may reach it
        (None, "attacker.example", 200),
    ],
)
def test_loopback_server_refuses_foreign_host_names(address: str | None, host: str, status: int) -> None:
    with TestClient(_host_checked_app(address)) as c:
        assert c.get("/", headers={"Host": host}).status_code == status

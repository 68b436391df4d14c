"""HTTP routes served beside the wizard: finished artifacts streamed from disk, and job snapshots.

A multi-GB archive never passes through ``st.download_button`` (which reads the whole file into
memory): the wizard links to ``/api/artifacts/<record id>/<kind>`` and Starlette's ``FileResponse``
streams it from disk with Range (resume), Content-Length and a file name. The request only names an
opaque History record id; the path always comes from the record, never from the request.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.archive import names
from core.history import History, PackRecord
from core.jobs import REGISTRY, JobRegistry, JobSnapshot
from core.render import find_load_script

#: History record ids and job ids are ``uuid4().hex``
_OPAQUE_ID = re.compile(r"^[0-9a-f]{32}$")
ARTIFACTS_PREFIX = "/api/artifacts/"
JOBS_PREFIX = "/api/jobs/"
# Sidecar kinds and the media type each is served with; parts are addressed as part/<n>.
_SIDECAR_TYPES = {"sha256": "text/plain; charset=utf-8", "load.sh": "text/x-shellscript; charset=utf-8"}
ARTIFACT_KINDS = ("archive", *_SIDECAR_TYPES, "part/<n>")
_LOG_LINES_DEFAULT = 20


def artifact_url(*, record_id: str, kind: str = "archive") -> str:
    """The route path for one file of a finished pack, e.g. ``/api/artifacts/<id>/archive``."""
    return f"{ARTIFACTS_PREFIX}{record_id}/{kind}"


def job_url(*, job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}"


def _not_found(code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=404)


def _archive_media_type(path: Path) -> str:
    if names.is_part_name(path.name):
        return "application/octet-stream"  # one slice of an archive is not an archive
    if path.name.endswith(names.ZSTD_SUFFIX):
        return "application/zstd"
    return "application/x-tar"


def load_script_path(archive: Path) -> Path | None:
    """The load.sh written beside ``archive`` (``load.sh``, or ``<stem>.load.sh``; see core.render)."""
    return find_load_script(archive)


class _DiskFile(FileResponse):
    # Starlette reads 64 KiB at a time; 1 MiB reads need far fewer event-loop round trips per GiB
    # and still keep the server's memory flat (see bench/download_rss.py).
    chunk_size = 1024 * 1024


def _file(path: Path | None, *, record: PackRecord, what: str, media_type: str) -> Response:
    if path is None or not path.is_file():
        where = f" ({path})" if path is not None else ""
        return _not_found(
            "file_missing",
            f"The {what} of pack {record.id}{where} was moved or deleted after the pack finished. "
            "Pack the model again, or download it from where you moved it.",
        )
    return _DiskFile(path, media_type=media_type, filename=path.name)


def _artifact(record: PackRecord, *, kind: str, part: int | None) -> Response:
    archive = Path(record.archive) if record.archive else None
    if archive is None:  # a succeeded pack always has one; an old or hand-edited record may not
        return _not_found("file_missing", f"Pack {record.id} has no archive on record.")
    parts = [Path(p) for p in record.parts]
    if part is not None:
        if not 0 <= part < len(parts):
            return _not_found(
                "unknown_part",
                f"Pack {record.id} has {len(parts)} part(s), numbered 0 to {len(parts) - 1}; "
                f"there is no part {part}.",
            )
        return _file(parts[part], record=record, what=f"part {part}", media_type=_archive_media_type(parts[part]))
    if kind == "archive":
        if len(parts) > 1 and not archive.is_file():
            urls = [artifact_url(record_id=record.id, kind=f"part/{n}") for n in range(len(parts))]
            return _not_found(
                "split_archive",
                f"Pack {record.id} was split into {len(parts)} parts and has no single archive file; "
                "download the parts and load them with load.sh.",
                parts=urls,
            )
        return _file(archive, record=record, what="archive", media_type=_archive_media_type(archive))
    if kind == "sha256":
        return _file(names.checksum_path(archive), record=record, what="checksum file",
                     media_type=_SIDECAR_TYPES["sha256"])
    return _file(load_script_path(archive), record=record, what="load.sh", media_type=_SIDECAR_TYPES["load.sh"])


def _record(record_id: str, history: Callable[[], History]) -> PackRecord | JSONResponse:
    if not _OPAQUE_ID.match(record_id):
        return _not_found("unknown_pack", "Not a pack id: pack ids are 32 hexadecimal characters.")
    record = history().get(record_id)
    if record is None:
        return _not_found("unknown_pack", f"No pack {record_id} in the history; it may have been deleted.")
    if record.outcome != "succeeded":
        state = "is still running" if record.outcome == "running" else f"ended as {record.outcome}"
        return _not_found(
            "pack_not_finished", f"Pack {record_id} {state}, so it has nothing to download yet.",
            outcome=record.outcome,
        )
    return record


def job_to_dict(snapshot: JobSnapshot, *, log_lines: int = _LOG_LINES_DEFAULT) -> dict[str, Any]:
    """A JSON-ready view of a job: state, current stage, per-stage progress, error and a log tail."""
    stages = [
        {**asdict(s), "fraction": s.fraction, "rate": s.rate, "eta_s": s.eta_s} for s in snapshot.stages
    ]
    record_id = getattr(snapshot.result, "record_id", None)
    return {
        "id": snapshot.id,
        "key": snapshot.key,
        "state": snapshot.state,
        "active": snapshot.active,
        "stage": snapshot.stage,
        "stages": stages,
        "error": snapshot.error,
        "error_code": snapshot.error_code,
        "started": snapshot.started,
        "finished": snapshot.finished,
        "log_tail": list(snapshot.log_tail[-log_lines:]) if log_lines > 0 else [],
        "record_id": record_id,
        "downloads": {
            kind: artifact_url(record_id=record_id, kind=kind) for kind in ("archive", *_SIDECAR_TYPES)
        } if record_id else None,
    }


def api_routes(
    *, history: Callable[[], History] = History, registry: JobRegistry = REGISTRY
) -> list[BaseRoute]:
    """The /api routes. ``history`` is called per request, so EZRUNNER_HOME is read when it is used."""

    async def artifact(request: Request) -> Response:
        found = _record(request.path_params["record_id"], history)
        if isinstance(found, Response):
            return found
        kind = request.path_params["kind"]
        if kind not in ("archive", *_SIDECAR_TYPES):
            return _not_found("unknown_kind", f"Unknown download {kind!r}: use one of {', '.join(ARTIFACT_KINDS)}.")
        return _artifact(found, kind=kind, part=None)

    async def artifact_part(request: Request) -> Response:
        found = _record(request.path_params["record_id"], history)
        if isinstance(found, Response):
            return found
        return _artifact(found, kind="part", part=request.path_params["n"])

    async def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        found = registry.get(job_id) if _OPAQUE_ID.match(job_id) else None
        if found is None:
            return _not_found(
                "unknown_job", f"No job {job_id} in this server; jobs live only as long as the `ezrunner ui` "
                "process that started them (finished packs are in the history).",
            )
        try:
            log_lines = max(0, min(int(request.query_params.get("log", _LOG_LINES_DEFAULT)), 10_000))
        except ValueError:
            return PlainTextResponse("log must be a number of lines", status_code=400)
        return JSONResponse(
            job_to_dict(found.snapshot(), log_lines=log_lines), headers={"Cache-Control": "no-store"}
        )

    async def unknown(request: Request) -> Response:
        return _not_found(
            "unknown_route", f"No API at {request.url.path}. Downloads are {ARTIFACTS_PREFIX}<pack id>/"
            f"<{'|'.join(ARTIFACT_KINDS)}>; jobs are {JOBS_PREFIX}<job id>.",
        )

    # Starlette answers HEAD for every GET route.
    return [
        Route("/api/artifacts/{record_id}/part/{n:int}", artifact_part, methods=["GET"]),
        Route("/api/artifacts/{record_id}/{kind}", artifact, methods=["GET"]),
        Route("/api/jobs/{job_id}", job, methods=["GET"]),
        # Without this, Streamlit's single-page fallback would answer a mistyped /api URL with HTML.
        Route("/api/{rest:path}", unknown, methods=["GET", "POST", "PUT", "DELETE"]),
    ]


class IdentityDownloads:
    """Keep Streamlit's gzip middleware off artifact downloads.

    Streamlit gzips every compressible response whose client accepts gzip; an x-tar is not on its
    exclusion list, so a browser download would be recompressed chunk by chunk (CPU bound) and lose
    its Content-Length (no progress bar, no size check). Dropping Accept-Encoding for our download
    paths before the request reaches that middleware keeps the bytes as they are on disk.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(ARTIFACTS_PREFIX):
            headers = MutableHeaders(scope=scope)
            if "accept-encoding" in headers:
                del headers["accept-encoding"]
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """While the server listens only on loopback, answer only requests addressed to a loopback name.

    Binding to 127.0.0.1 keeps other machines out, but a web page in the user's own browser can
    still reach it through DNS rebinding (a hostile name that resolves to 127.0.0.1). Such requests
    carry the hostile name in Host; refusing them protects the wizard (which drives Docker) and the
    downloads. ``listening_on`` is read per request, so the check follows the address in use.
    """

    def __init__(self, app: ASGIApp, *, listening_on: Callable[[], str | None]) -> None:
        self.app = app
        self.listening_on = listening_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = self.listening_on()
        if scope["type"] in ("http", "websocket") and address and is_loopback(address):
            host = Headers(scope=scope).get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if not is_loopback(name):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = PlainTextResponse(
                    f"This EZ Runner server answers only on 127.0.0.1 / localhost, not {host!r}.", status_code=403
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

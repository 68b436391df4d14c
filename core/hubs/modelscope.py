"""ModelScope through its own client (``modelscope_hub.HubApi``, the engine under ``modelscope.hub``).

``MODELSCOPE_ENDPOINT`` and ``MODELSCOPE_API_TOKEN`` are read on every call (a fresh ``HubConfig``),
so a mirror or the test hub works without restarting the process.

Pinning: ModelScope revisions are branches and tags. ``ModelInfo.commit`` is the newest per-file
commit id in the listing (the head of the revision for every file we know of); downloads use the
revision name and are then checked file by file against the sha256 values seen by ``inspect``, so a
revision that moved in between fails loudly instead of packing different weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from modelscope_hub import HubApi, HubConfig, ProgressCallback
from modelscope_hub.errors import (
    AuthenticationError,
    FileDownloadError,
    FileIntegrityError,
    HubError,
    NetworkError,
    NotExistError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)

from core import errors
from core.errors import (
    CancelledError,
    ChecksumMismatchError,
    DownloadError,
    EzRunnerError,
    GatedModelError,
    HubAnswerError,
    HubUnreachableError,
    ModelNotFoundError,
    RevisionNotFoundError,
)
from core.events import Cancel as CancelFlag
from core.events import EventSink, ignore_events
from core.hubs.assemble import (
    ByteProgress,
    StopDownload,
    cut_short,
    raise_if_cancelled,
    unreadable_answers,
    verify_download,
)
from core.hubs.base import HubName, ModelInfo, ModelSummary, SearchFilters
from core.hubs.repo import inspect_snapshot
from core.hubs.snapshot import ListedFile, RepoFacts
from core.refs import ModelRef

DEFAULT_REVISION = "master"
ANSWERED_BY = "ModelScope"
_MODEL = "model"
_PAGE_LIMIT = 50  # the OpenAPI search refuses bigger pages
_HEADER_WORKERS = 8
_SHA = re.compile(r"[0-9a-f]{7,64}")


def _api(token: str | None) -> HubApi:
    # A fresh config reads MODELSCOPE_ENDPOINT / MODELSCOPE_API_TOKEN now, not at import.
    return HubApi(config=HubConfig(token=token or None), user_agent={"invoked_by": "ezrunner"})


def endpoint() -> str:
    return HubConfig().endpoint or ""


def probe(*, repo: str, token: str | None, timeout_s: float) -> str:
    """Whether ModelScope has ``repo``, asked once with a short timeout and no retries: "found" (also when
    it exists but needs access), "missing", or why there was no answer ("ConnectTimeout", "HTTP 503").

    The request is the client's own model lookup (``OpenAPIClient.get_model``: GET
    /openapi/v1/models/{owner}/{name}, modelscope_hub/_openapi.py), made here so the client's retries
    (minutes against a blocked site) do not apply."""
    owner, _, name = repo.partition("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{endpoint().rstrip('/')}/openapi/v1/models/{owner}/{name}"
    try:
        response = requests.get(url, headers=headers, timeout=timeout_s, allow_redirects=True)
    except requests.RequestException as error:
        return type(error).__name__
    with contextlib.closing(response):
        if response.status_code == 404:
            return "missing"
        if response.status_code in (200, 401, 403):
            return "found"
        return f"HTTP {response.status_code}"


class ModelScopeHub:
    name: HubName = "ms"

    def search(self, *, query: str, limit: int = 20, filters: SearchFilters | None = None) -> list[ModelSummary]:
        chosen = filters or SearchFilters()
        api = _api(None)
        found: list[ModelSummary] = []
        page = 1
        with ms_errors(repo=None):
            while len(found) < limit:
                size = min(_PAGE_LIMIT, limit)
                result = api.list_repos(
                    _MODEL, search=query or None, sort="downloads", page_number=page, page_size=size,
                    task=chosen.task,
                )  # fmt: skip
                found.extend(_summary(item) for item in result.items)
                if len(result.items) < size or page * size >= result.total_count:
                    break
                page += 1
        return found[:limit]

    def inspect(
        self, *, ref: ModelRef, revision: str | None = None, token: str | None = None, quant: str | None = None
    ) -> ModelInfo:
        repo = str(ref.repo_id)
        wanted = revision or DEFAULT_REVISION
        api = _api(token)
        with ms_errors(repo=repo, revision=wanted):
            with unreadable_answers(
                hub="ModelScope", endpoint=endpoint(), endpoint_variable="MODELSCOPE_ENDPOINT", name=f"ms:{repo}"
            ):
                repo_info = api.get_repo(repo, _MODEL)
                branches, tags = api.legacy.list_revisions_detail(repo, _MODEL)
                known = {str(item.get("Revision")) for item in [*branches, *tags]}
                if wanted not in known and not _SHA.fullmatch(wanted):
                    raise _revision_missing(repo, wanted, known)
                entries = {
                    str(entry.get("Path") or entry.get("Name")): entry
                    for entry in api.legacy.list_repo_files(repo, _MODEL, revision=wanted, recursive=True)
                    if (entry.get("Type") or "blob") != "tree"
                }
                listing = {
                    path: ListedFile(size=_size(e), sha256=e.get("Sha256") or None) for path, e in entries.items()
                }
                snapshot = _MsSnapshot(label=repo, files=listing, api=api, repo=repo, revision=wanted)
                facts = RepoFacts(
                    ref=ModelRef(source="ms", repo_id=repo),
                    repo_id=repo,
                    revision=wanted,
                    commit=_commit(entries, wanted),
                    license=repo_info.license or None,
                    gated=bool(repo_info.gated),
                    answered_by=ANSWERED_BY,
                )
            return inspect_snapshot(snapshot=snapshot, facts=facts, quant=quant)

    def download(
        self,
        *,
        model: ModelInfo,
        token: str | None = None,
        on_event: EventSink = ignore_events,
        cancel: CancelFlag | None = None,
        cache_dir: Path | None = None,
    ) -> Path:
        """The client's snapshot download (``download_repo``, what ``modelscope.snapshot_download`` runs)
        of exactly ``model.files``; resume is its own (``.incomplete`` files continued with Range)."""
        raise_if_cancelled(cancel)
        progress = ByteProgress(on_event=on_event, total=model.total_bytes, cancel=cancel)
        api = _api(token)
        # The listing inspect saw: no second listing request, and the client checks these sha256s too.
        file_list = [{"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": "blob"} for f in model.files]
        try:
            with ms_errors(repo=model.repo_id, revision=model.revision):
                folder = api.download_repo(
                    model.repo_id,
                    _MODEL,
                    revision=model.revision,
                    cache_dir=cache_dir,
                    file_list=file_list,
                    progress_callbacks=[_callback_class(progress)],
                )
        except StopDownload:
            raise CancelledError(
                "The download was cancelled.", hint="Start it again to resume where it stopped."
            ) from None
        raise_if_cancelled(cancel)  # cancelled while the last files completed: still honour it
        progress.finish()
        verify_download(folder=Path(folder), model=model, on_event=on_event, cancel=cancel)
        return Path(folder)


def _callback_class(progress: ByteProgress) -> type[ProgressCallback]:
    class ForwardingCallback(ProgressCallback):
        """Instantiated by the client per file; ``update`` gets each chunk (negative on a restart)."""

        def update(self, size: int) -> None:
            progress.add(int(size), file=self.filename)

    return ForwardingCallback


@dataclass(frozen=True)
class _MsSnapshot:
    """A ModelScope revision read through the client's download stream (Range requests for headers)."""

    label: str
    files: Mapping[str, ListedFile]
    api: HubApi
    repo: str
    revision: str

    def read(self, path: str, *, max_bytes: int) -> bytes:
        data = self._get(path, headers={}, limit=max_bytes + 1)
        if len(data) > max_bytes:
            raise DownloadError(
                f"{path} of ms:{self.repo} is larger than {max_bytes:,} bytes.",
                hint="The repo looks broken; pick another revision or variant of the model.",
            )
        return data

    def read_range(self, path: str, *, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get(path, headers={"Range": f"bytes={start}-{start + length - 1}"}, limit=length, start=start)

    def _get(self, path: str, *, headers: dict[str, str], limit: int, start: int = 0) -> bytes:
        response = self.api.legacy.download_stream(self.repo, _MODEL, path, self.revision, headers=headers)
        try:
            if headers and response.status_code != 206 and start:
                raise _truncated(path)  # Range ignored: never stream the weights to find a header
            data = bytearray()
            try:
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    data.extend(chunk)
                    if len(data) >= limit:
                        break
            except requests.RequestException as error:  # the answer began, then stopped: not an outage
                raise cut_short(f"ms:{self.repo}", path, error) from error
            return bytes(data[:limit])
        finally:
            response.close()


def _truncated(path: str) -> DownloadError:
    return DownloadError(
        f"ModelScope did not return the header of '{path}' with a Range request.",
        hint="Try again later, or download the model and pack the local folder.",
    )


def _size(entry: Mapping[str, Any]) -> int:
    return int(entry.get("Size") or entry.get("size") or 0)


def _commit(listing: Mapping[str, Mapping[str, Any]], revision: str) -> str:
    """The newest per-file commit id; without ids, a digest of the listing (paths, sizes, sha256)."""
    dated = [
        (int(entry.get("CommittedDate") or 0), str(entry.get("Revision")))
        for entry in listing.values()
        if _SHA.fullmatch(str(entry.get("Revision") or ""))
    ]
    if dated:
        return max(dated)[1]
    digest = hashlib.sha256(revision.encode())
    for path in sorted(listing):
        digest.update(f"\n{path}\0{_size(listing[path])}\0{listing[path].get('Sha256') or ''}".encode())
    return digest.hexdigest()


def _revision_missing(repo: str, wanted: str, known: set[str]) -> RevisionNotFoundError:
    listed = ", ".join(sorted(known)[:8]) or "none"
    return RevisionNotFoundError(
        f"ms:{repo} has no revision '{wanted}' (it has: {listed}).",
        hint="Use one of those branch or tag names; ModelScope's default branch is master.",
        field=errors.REVISION,
    )


@contextmanager
def ms_errors(*, repo: str | None, revision: str | None = None) -> Iterator[None]:
    """Turn the ModelScope client's exceptions into ours, each with a next step."""
    name = f"ms:{repo}" if repo else "ModelScope search"
    try:
        yield
    except EzRunnerError:
        raise
    except FileDownloadError as error:
        failures = list(getattr(error, "failed_files", {}).items())
        for _path, cause in failures:
            if isinstance(cause, AuthenticationError | PermissionDeniedError):
                raise _gated(name, repo) from cause
        for path, cause in failures:
            if isinstance(cause, FileIntegrityError):
                raise ChecksumMismatchError(
                    f"'{path}' of {name} kept failing its size/sha256 check ({cause}).",
                    hint="Run the download again; if it keeps failing, the hub copy is broken.",
                ) from cause
        if failures and all(isinstance(c, NetworkError | RequestTimeoutError) for _p, c in failures):
            raise _unreachable(failures[0][1]) from error
        shown = ", ".join(path for path, _c in failures[:3])
        raise DownloadError(
            f"{len(failures)} file(s) of {name} failed to download ({shown}).",
            hint="Run the download again; finished files are kept and partial ones resume.",
        ) from error
    except NotExistError as error:
        raise ModelNotFoundError(
            f"{name} was not found on ModelScope ({endpoint()}).",
            hint="Check the spelling (org/name), try Hugging Face with hf:, or, for a private model, set "
            "MODELSCOPE_API_TOKEN.",
            field=errors.MODEL,
        ) from error
    except (AuthenticationError, PermissionDeniedError) as error:
        raise _gated(name, repo) from error
    except FileIntegrityError as error:
        raise ChecksumMismatchError(
            f"A file of {name} failed its size/sha256 check ({error}).",
            hint="Run the download again; it fetches the file fresh.",
        ) from error
    except (RateLimitError, QuotaExceededError) as error:
        raise HubUnreachableError(
            f"ModelScope ({endpoint()}) refused more requests for {name} now (too many requests).",
            hint="Wait a few minutes and try again, or set MODELSCOPE_API_TOKEN (signed-in users get more).",
        ) from error
    except (NetworkError, RequestTimeoutError, ServerError, requests.RequestException) as error:
        raise _unreachable(error) from error
    except HubError as error:
        raise HubAnswerError(
            f"ModelScope ({endpoint()}) answered with an error for {name}: {error}.",
            hint="Check MODELSCOPE_ENDPOINT (a proxy or captive portal may answer instead), then try again.",
        ) from error


def _gated(name: str, repo: str | None) -> GatedModelError:
    return GatedModelError(
        f"{name} needs an account that was granted access.",
        hint=f"Request access on {endpoint()}/models/{repo}, then set MODELSCOPE_API_TOKEN to a token of that "
        "account (ModelScope: Account settings → Access Token) and try again.",
        field=errors.MODEL,
    )


def _unreachable(error: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"ModelScope ({endpoint()}) cannot be reached: {type(error).__name__}.",
        hint="Check the network or proxy, set MODELSCOPE_ENDPOINT to a reachable site "
        "(https://www.modelscope.ai outside China), or take the model from Hugging Face with hf:org/name.",
    )


def _summary(item: Any) -> ModelSummary:
    updated = item.last_modified
    tasks = list(item.tasks or [])
    return ModelSummary(
        id=str(item.repo_id if item.owner and item.name else item.id),
        source="ms",
        downloads=item.downloads,
        likes=item.likes,
        updated=updated if isinstance(updated, datetime) else None,
        pipeline_tag=tasks[0] if tasks else None,
        gated=bool(item.gated),
        size_bytes=item.file_size or None,
        license=item.license or None,
    )

"""Hugging Face Hub through ``huggingface_hub`` (``HfApi``, ``hf_hub_download``, ``snapshot_download``).

``HF_ENDPOINT`` is read on every call and passed as ``endpoint=``: huggingface_hub reads it only when
it is imported, and a mirror (or the test hub) must work without restarting the process.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, get_session, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.errors import RevisionNotFoundError as HfRevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status
from tqdm.auto import tqdm

from core import errors
from core.errors import (
    CancelledError,
    DownloadError,
    GatedModelError,
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
    estimate_bytes,
    raise_if_cancelled,
    unreadable_answers,
    verify_download,
)
from core.hubs.base import HubName, ModelInfo, ModelSummary, SearchFilters
from core.hubs.repo import inspect_snapshot
from core.hubs.snapshot import ListedFile, RepoFacts
from core.refs import ModelRef

DEFAULT_ENDPOINT = "https://huggingface.co"
ANSWERED_BY = "Hugging Face"
_SEARCH_EXPAND: Any = [
    "downloads", "likes", "lastModified", "pipeline_tag", "gated", "safetensors", "tags", "library_name",
]  # fmt: skip
_HEADER_WORKERS = 8


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _token(token: str | None) -> str | None:
    # None lets huggingface_hub fall back to HF_TOKEN and a saved `hf auth login`
    return token or os.environ.get("HF_TOKEN") or None


class HuggingFaceHub:
    name: HubName = "hf"

    def _api(self, token: str | None) -> HfApi:
        return HfApi(endpoint=endpoint(), token=_token(token), library_name="ezrunner")

    def search(self, *, query: str, limit: int = 20, filters: SearchFilters | None = None) -> list[ModelSummary]:
        chosen = filters or SearchFilters()
        with hf_errors(repo=None):
            found = self._api(None).list_models(
                search=query or None,
                pipeline_tag=chosen.task,
                num_parameters=_num_parameters(chosen),
                filter="safetensors" if chosen.safetensors_only else None,
                sort="downloads",
                limit=limit,
                expand=_SEARCH_EXPAND,
            )
            return [_summary(model) for model in found]

    def inspect(
        self, *, ref: ModelRef, revision: str | None = None, token: str | None = None, quant: str | None = None
    ) -> ModelInfo:
        repo = str(ref.repo_id)
        wanted = revision or "main"
        api = self._api(token)
        with hf_errors(repo=repo, revision=wanted):
            with unreadable_answers(
                hub="Hugging Face", endpoint=endpoint(), endpoint_variable="HF_ENDPOINT", name=f"hf:{repo}"
            ):
                info = api.model_info(repo, revision=wanted)
                commit = str(info.sha)
                listing = {
                    entry.path: ListedFile(size=int(entry.size), sha256=_lfs_sha256(entry))
                    for entry in api.list_repo_tree(repo, revision=commit, recursive=True)
                    if isinstance(entry, RepoFile)
                }
                snapshot = _HfSnapshot(label=repo, files=listing, repo=repo, commit=commit, token=_token(token))
                facts = RepoFacts(
                    ref=ModelRef(source="hf", repo_id=repo),
                    repo_id=repo,
                    revision=wanted,
                    commit=commit,
                    license=_license(info.card_data, info.tags),
                    gated=bool(info.gated),
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
        """``snapshot_download`` of exactly ``model.files`` at ``model.commit``; resume is the client's own
        (``.incomplete`` blobs continued with Range requests). Returns the snapshot folder."""
        raise_if_cancelled(cancel)
        progress = ByteProgress(on_event=on_event, total=model.total_bytes, cancel=cancel)
        try:
            with hf_errors(repo=model.repo_id, revision=model.commit):
                folder = snapshot_download(
                    model.repo_id,
                    revision=model.commit,
                    allow_patterns=[glob.escape(f.path) for f in model.files],
                    tqdm_class=_progress_bar_class(progress),
                    endpoint=endpoint(),
                    token=_token(token),
                    cache_dir=str(cache_dir) if cache_dir else None,
                )
        except StopDownload:
            raise CancelledError(
                "The download was cancelled.", hint="Start it again to resume where it stopped."
            ) from None
        raise_if_cancelled(cancel)  # cancelled while the last files completed: still honour it
        progress.finish()
        verify_download(folder=Path(folder), model=model, on_event=on_event, cancel=cancel)
        return Path(folder)


@dataclass(frozen=True)
class _HfSnapshot:
    """A pinned Hugging Face commit read over the hub's HTTP API (``resolve`` URLs, Range requests)."""

    label: str
    files: Mapping[str, ListedFile]
    repo: str
    commit: str
    token: str | None

    def _stream(self, path: str, headers: dict[str, str]) -> Any:
        url = hf_hub_url(self.repo, path, revision=self.commit, endpoint=endpoint())
        return get_session().stream(
            "GET", url, headers=build_hf_headers(token=self.token, headers=headers), follow_redirects=True
        )

    def read(self, path: str, *, max_bytes: int) -> bytes:
        with self._stream(path, {}) as response:
            hf_raise_for_status(response)
            data = bytearray()
            try:
                for chunk in response.iter_bytes():
                    data.extend(chunk)
                    if len(data) > max_bytes:
                        raise DownloadError(
                            f"{path} of hf:{self.repo} is larger than {max_bytes:,} bytes.",
                            hint="The repo looks broken; pick another revision or variant of the model.",
                        )
            except httpx2.TransportError as error:  # the answer began, then stopped: not an outage
                raise cut_short(f"hf:{self.repo}", path, error) from error
            return bytes(data)

    def read_range(self, path: str, *, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._stream(path, {"Range": f"bytes={start}-{start + length - 1}"}) as response:
            hf_raise_for_status(response)
            if response.status_code != 206 and start:
                raise DownloadError(
                    f"Hugging Face ignored a Range request for {path}.",
                    hint="Use a mirror that supports Range requests, or pack a downloaded local folder.",
                )
            data = bytearray()
            try:
                for chunk in response.iter_bytes():
                    data.extend(chunk)
                    if len(data) >= length:
                        break  # a server that ignores Range at offset 0: stop at what was asked for
            except httpx2.TransportError as error:  # the answer began, then stopped: not an outage
                raise cut_short(f"hf:{self.repo}", path, error) from error
            return bytes(data[:length])


def _progress_bar_class(progress: ByteProgress) -> type[tqdm]:
    """A tqdm class for ``snapshot_download(tqdm_class=...)`` that forwards bytes instead of drawing.

    snapshot_download makes three bars from it: the file counter ("Fetching N files"), a transfer
    bar ("Downloading bytes") and the bytes-written bar that every file download feeds, including
    the bytes a resumed file already had. Only the last one is counted; all of them check cancel.
    """

    class ForwardingBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            self._counts_bytes = kwargs.get("unit") == "B" and not str(kwargs.get("desc", "")).startswith(
                "Downloading bytes"
            )
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts_bytes and n:
                progress.add(int(n))
            else:
                progress.check_cancel()
            return super().update(n)

    return ForwardingBar


@contextmanager
def hf_errors(*, repo: str | None, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into ours, each with a next step."""
    name = f"hf:{repo}" if repo else "Hugging Face search"
    try:
        yield
    except GatedRepoError as error:  # before RepositoryNotFoundError: it is a subclass
        raise GatedModelError(
            f"{name} is gated: Hugging Face only serves its files to accounts that accepted its licence.",
            hint=f"Accept the licence on {endpoint()}/{repo} with your account, then set HF_TOKEN to a read token of "
            "that account (huggingface.co/settings/tokens) and try again.",
            field=errors.MODEL,
        ) from error
    except HfRevisionNotFoundError as error:
        raise RevisionNotFoundError(
            f"{name} has no revision '{revision}'.",
            hint="Use a branch (main), a tag or a commit sha from the model's 'Files and versions' page.",
            field=errors.REVISION,
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{name} was not found on Hugging Face ({endpoint()}).",
            hint="Check the spelling (org/name, case matters), try ModelScope with ms:, or, for a private "
            "model, set HF_TOKEN to a token that can read it.",
            field=errors.MODEL,
        ) from error
    except RemoteEntryNotFoundError as error:
        raise ModelNotFoundError(
            f"A file of {name} disappeared while reading it ({error}).",
            hint="The repo changed meanwhile; inspect it again.",
        ) from error
    except (httpx2.TransportError, OfflineModeIsEnabled, LocalEntryNotFoundError) as error:
        raise _unreachable(error) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        busy = " (too many requests)" if status == 429 else ""
        raise HubUnreachableError(
            f"Hugging Face ({endpoint()}) answered HTTP {status}{busy} for {name}.",
            hint="Try again later (setting HF_TOKEN raises the request limits), use a mirror "
            "(HF_ENDPOINT=https://hf-mirror.com), or ModelScope with ms:.",
        ) from error


def _unreachable(error: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"Hugging Face ({endpoint()}) cannot be reached: {type(error).__name__}.",
        hint="Check the network or proxy, use a mirror (HF_ENDPOINT=https://hf-mirror.com), "
        "or take the model from ModelScope with ms:org/name.",
    )


def _lfs_sha256(entry: RepoFile) -> str | None:
    # git-stored files (config, tokenizer json) only have a sha1 blob id; LFS files have the sha256
    return entry.lfs.sha256 if entry.lfs is not None else None


def _num_parameters(filters: SearchFilters) -> str | None:
    bounds = []
    if filters.min_params is not None:
        bounds.append(f"min:{filters.min_params}")
    if filters.max_params is not None:
        bounds.append(f"max:{filters.max_params}")
    return ",".join(bounds) or None


def _license(card_data: Any, tags: list[str] | None) -> str | None:
    license_name = getattr(card_data, "license", None) if card_data is not None else None
    if isinstance(license_name, str) and license_name:
        return license_name
    for tag in tags or []:
        if tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None


def _summary(model: Any) -> ModelSummary:
    safetensors = getattr(model, "safetensors", None)
    by_dtype = dict(getattr(safetensors, "parameters", None) or {})
    updated = getattr(model, "last_modified", None)
    return ModelSummary(
        id=str(model.id),
        source="hf",
        downloads=getattr(model, "downloads", None),
        likes=getattr(model, "likes", None),
        updated=updated if isinstance(updated, datetime) else None,
        pipeline_tag=getattr(model, "pipeline_tag", None),
        gated=bool(getattr(model, "gated", False)),
        parameters=getattr(safetensors, "total", None) if safetensors else None,
        size_bytes=estimate_bytes(by_dtype),
        license=_license(getattr(model, "card_data", None), getattr(model, "tags", None)),
    )

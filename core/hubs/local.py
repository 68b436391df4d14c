"""A model folder on this machine: same ``ModelInfo`` as a hub, without network and without reading weights.

``commit`` is a sha256 over ``path, size, mtime_ns`` of every packed file, so it changes whenever a
packed file is replaced or touched, and computing it never reads file contents. Only the
safetensors headers (first bytes of each shard) and the small JSON files are read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import DownloadError, InvalidReferenceError
from core.events import Cancel as CancelFlag
from core.events import EventSink, ignore_events
from core.hubs.assemble import raise_if_cancelled
from core.hubs.base import HubName, ModelInfo, ModelSummary, SearchFilters
from core.hubs.repo import inspect_snapshot
from core.hubs.snapshot import ListedFile, RepoFacts
from core.refs import ModelRef

ANSWERED_BY = "local folder"
# Model folders are flat, or keep GGUF quantizations one folder down; deeper trees are not one model.
MAX_FOLDER_DEPTH = 2
MAX_FOLDER_FILES = 5000
LOCAL_REVISION = "local"


class LocalFolderHub:
    name: HubName = "local"

    def search(self, *, query: str, limit: int = 20, filters: SearchFilters | None = None) -> list[ModelSummary]:
        return []  # a folder is given by path, there is nothing to search

    def inspect(
        self, *, ref: ModelRef, revision: str | None = None, token: str | None = None, quant: str | None = None
    ) -> ModelInfo:
        folder = _folder(ref)
        snapshot = FolderSnapshot.of(folder)
        facts = RepoFacts(
            ref=ModelRef(source="local", path=folder),
            repo_id=folder.name,
            revision=LOCAL_REVISION,
            commit="",  # set below: a digest of exactly the files that will be packed
            license=None,
            gated=False,
            answered_by=ANSWERED_BY,
        )
        info = inspect_snapshot(snapshot=snapshot, facts=facts, quant=quant, read_all_gguf_headers=True)
        return replace(info, commit=folder_digest(folder, [f.path for f in info.files]))

    def download(
        self,
        *,
        model: ModelInfo,
        token: str | None = None,
        on_event: EventSink = ignore_events,
        cancel: CancelFlag | None = None,
        cache_dir: Path | None = None,
    ) -> Path:
        """Nothing to fetch: the folder itself (no copy), after checking it did not change since inspect."""
        raise_if_cancelled(cancel)
        folder = _folder(model.ref)
        if folder_digest(folder, [f.path for f in model.files]) != model.commit:
            raise DownloadError(
                f"The files in {folder} changed after the model was inspected.",
                hint="Inspect the folder again, then pack it.",
            )
        return folder


@dataclass(frozen=True)
class FolderSnapshot:
    """A model folder on this machine, read like a hub repository (symlinks followed: a Hugging Face cache
    snapshot is all symlinks)."""

    label: str
    files: Mapping[str, ListedFile]
    folder: Path

    @classmethod
    def of(cls, folder: Path) -> FolderSnapshot:
        files: dict[str, ListedFile] = {}
        pending = [(folder, 0)]
        while pending:
            directory, depth = pending.pop()
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue  # .git, .cache and editor droppings are never model files
                    with contextlib.suppress(OSError):
                        if entry.is_file():
                            relative = Path(entry.path).relative_to(folder).as_posix()
                            files[relative] = ListedFile(size=entry.stat().st_size)
                        elif entry.is_dir() and depth + 1 < MAX_FOLDER_DEPTH:
                            pending.append((Path(entry.path), depth + 1))
                    if len(files) > MAX_FOLDER_FILES:
                        raise InvalidReferenceError(
                            f"{folder} holds more than {MAX_FOLDER_FILES:,} files: it does not look like one model.",
                            hint="Point at the folder that holds config.json (or the .gguf files) of one model.",
                        )
        return cls(label=str(folder), files=dict(sorted(files.items())), folder=folder)

    def read(self, path: str, *, max_bytes: int) -> bytes:
        with (self.folder / path).open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DownloadError(
                f"{path} in {self.folder} is larger than {max_bytes:,} bytes.",
                hint="Check that the folder holds a model exported with save_pretrained.",
            )
        return data

    def read_range(self, path: str, *, start: int, length: int) -> bytes:
        with (self.folder / path).open("rb") as handle:
            handle.seek(start)
            return handle.read(max(length, 0))


def folder_digest(folder: Path, paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            stat = (folder / path).stat()
        except FileNotFoundError:
            raise DownloadError(
                f"'{path}' is missing from {folder}.", hint="Restore the file or inspect the folder again."
            ) from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _folder(ref: ModelRef) -> Path:
    if ref.path is None or not ref.path.is_dir():
        raise InvalidReferenceError(
            f"The folder '{ref.path}' does not exist.", hint="Check the path of the model folder."
        )
    return ref.path

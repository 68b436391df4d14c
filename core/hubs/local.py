"""A model folder on this machine: same ``ModelInfo`` as a hub, without network and without reading weights.

``commit`` is a sha256 over ``path, size, mtime_ns`` of every packed file, so it changes whenever a
packed file is replaced or touched, and computing it never reads file contents. Only the
safetensors headers (first bytes of each shard) and the small JSON files are read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core.errors import DownloadError, InvalidReferenceError
from core.events import Cancel as CancelFlag
from core.events import EventSink, ignore_events
from core.hubs.assemble import build_model_info, missing_config, raise_if_cancelled, read_json
from core.hubs.base import HubName, ModelFile, ModelInfo, ModelSummary, SearchFilters
from core.hubs.safetensors_header import read_local_header, weight_stats
from core.hubs.selection import CONFIG_FILE, INDEX_FILE, restrict_to_index, select_files, weight_files
from core.refs import ModelRef

ANSWERED_BY = "local folder"
LOCAL_REVISION = "local"


class LocalFolderHub:
    name: HubName = "local"

    def search(self, *, query: str, limit: int = 20, filters: SearchFilters | None = None) -> list[ModelSummary]:
        return []  # a folder is given by path, there is nothing to search

    def inspect(self, *, ref: ModelRef, revision: str | None = None, token: str | None = None) -> ModelInfo:
        folder = _folder(ref)
        label = str(folder)
        # top-level entries only; symlinks are followed (a Hugging Face cache snapshot is all symlinks)
        sizes = {entry.name: entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()}
        selected = select_files(sizes, repo=label)
        if CONFIG_FILE not in selected:
            raise missing_config(label)
        config = read_json(folder / CONFIG_FILE, repo=label)
        if INDEX_FILE in selected:
            selected = restrict_to_index(selected, read_json(folder / INDEX_FILE, repo=label), repo=label)
        entries = [e for shard in weight_files(selected) for e in read_local_header(folder / shard)]
        return build_model_info(
            ref=ModelRef(source="local", path=folder),
            repo_id=folder.name,
            revision=LOCAL_REVISION,
            commit=folder_digest(folder, selected),
            files=[ModelFile(path=p, size=sizes[p]) for p in selected],
            config=config,
            weights=weight_stats(entries),
            license=None,
            gated=False,
            answered_by=ANSWERED_BY,
        )

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

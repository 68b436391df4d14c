"""What EZ Runner keeps on disk, and clearing what can go: the packs in the history, the caches, free space.

``list_packs`` reads the history and looks at each pack's files as they are now (a user may have moved or
deleted them). ``clean_candidates`` finds what a clean may delete, with sizes, without deleting anything;
``remove`` deletes a chosen list. A clean only ever deletes EZ Runner's own working files: build contexts,
the runtime-layer cache and GGUF conversions under EZRUNNER_HOME, and ``*.partial`` files (under
EZRUNNER_HOME, and beside archives the history knows). Finished archives, their checksums and load.sh are
never candidates, wherever they lie. ``free_bytes`` measures the filesystem a path will be written on,
for paths that do not exist yet, are relative or go through symlinks.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from core.archive import names
from core.errors import EzRunnerError
from core.history import History, PackRecord
from core.render import find_load_script

CleanKind = Literal["build-contexts", "layer-cache", "conversions", "partial-files"]
CLEAN_KINDS: tuple[CleanKind, ...] = ("build-contexts", "layer-cache", "conversions", "partial-files")

# Folders under EZRUNNER_HOME, as core.pack and core.convert name them.
BUILDS_DIR = "builds"  # core.pack: work_dir default, one context-* folder per build
LAYER_CACHE_DIR = "layer-cache"  # core.pack: cache_dir of core.layer_cache
CONVERSIONS_DIR = "gguf"  # core.convert.conversion_dir
EXPORTS_DIR = "exports"  # the wizard's default output folder: finished archives live there

# A temporary file of the archive writer: ``NAME.partial`` today, ``.NAME.<pid>-<hex>.partial`` once the
# writer tags its temporaries with their process (then only those whose process is gone are removed).
_OWNED_PARTIAL = re.compile(r"^\..+\.(?P<pid>[0-9]+)-[0-9a-f]+" + re.escape(names.PARTIAL_SUFFIX) + "$")


# FREE SPACE


def disk_probe(*, path: Path) -> Path:
    """The existing folder whose filesystem ``path`` will be written on.

    ``path`` may be relative (to the current folder), may not exist yet (nor its parents), and may go
    through symlinks, dangling ones included: the symlinks are followed first, so the filesystem is the
    one the data will land on, then the nearest existing ancestor is taken. A folder this user may not
    look into counts as not existing (its parent is measured).
    """
    absolute = Path(os.path.abspath(path.expanduser()))
    try:
        target = absolute.resolve()
    except (OSError, RuntimeError):  # a symlink loop: measure what lies before it
        target = absolute
    probe = target
    while True:
        try:
            if stat.S_ISDIR(probe.stat().st_mode):
                return probe
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP, errno.EPERM):
                raise
        if probe == probe.parent:
            return probe
        probe = probe.parent


def free_bytes(*, path: Path) -> int:
    """Free bytes (for this user) on the filesystem ``path`` will be written on (see ``disk_probe``)."""
    return shutil.disk_usage(disk_probe(path=path)).free


# THE PACKS IN THE HISTORY


@dataclass(frozen=True)
class PackFile:
    """One file of a pack as it is on disk now: ``size`` is None when the file is gone."""

    path: Path
    size: int | None

    @property
    def exists(self) -> bool:
        return self.size is not None


@dataclass(frozen=True)
class PackEntry:
    """One pack of the history, with its files as they are now."""

    record_id: str
    model_id: str
    engine: str | None
    outcome: str  # running | succeeded | failed | cancelled
    started: float
    finished: float | None
    archive: Path | None  # the archive's name (for a split archive: the reassembled file's)
    files: tuple[PackFile, ...]  # the archive, or its parts
    load_script: Path | None
    recorded_size: int | None  # bytes of the archive when it was written
    sha256: str | None
    error: str | None

    @property
    def present(self) -> bool:
        """Whether every file of the archive is still where the pack wrote it."""
        return bool(self.files) and all(f.exists for f in self.files)

    @property
    def size_on_disk(self) -> int:
        return sum(f.size or 0 for f in self.files)


def _file_size(path: Path) -> int | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _entry(record: PackRecord) -> PackEntry:
    archive = Path(record.archive) if record.archive else None
    paths = [Path(p) for p in record.parts] or ([archive] if archive else [])
    engine = record.plan.get("engine") if isinstance(record.plan, dict) else None
    return PackEntry(
        record_id=record.id,
        model_id=record.model_id,
        engine=str(engine) if engine else None,
        outcome=record.outcome,
        started=record.started,
        finished=record.finished,
        archive=archive,
        files=tuple(PackFile(path=p, size=_file_size(p)) for p in paths),
        load_script=find_load_script(archive) if archive else None,
        recorded_size=record.size,
        sha256=record.sha256,
        error=record.error,
    )


def list_packs(*, history: History, limit: int = 200) -> list[PackEntry]:
    """The newest ``limit`` packs of ``history``, newest first, each with its files' state now."""
    return [_entry(record) for record in history.list(limit=limit)]


def pack_entry_to_dict(entry: PackEntry) -> dict[str, Any]:
    """A JSON-ready view of ``entry`` (paths as strings, times as Unix seconds)."""
    return {
        "id": entry.record_id,
        "model": entry.model_id,
        "engine": entry.engine,
        "outcome": entry.outcome,
        "started": entry.started,
        "finished": entry.finished,
        "archive": str(entry.archive) if entry.archive else None,
        "files": [{"path": str(f.path), "size": f.size, "exists": f.exists} for f in entry.files],
        "load_script": str(entry.load_script) if entry.load_script else None,
        "present": entry.present,
        "size_on_disk": entry.size_on_disk,
        "recorded_size": entry.recorded_size,
        "sha256": entry.sha256,
        "error": entry.error,
    }


# CLEAN


@dataclass(frozen=True)
class CleanItem:
    """One file or folder a clean may delete, with the bytes it holds (each hard-linked file counted once)."""

    kind: CleanKind
    path: Path
    size: int


@dataclass(frozen=True)
class CleanResult:
    removed: tuple[CleanItem, ...]
    failed: tuple[tuple[CleanItem, str], ...]  # the item and why it could not be deleted

    @property
    def freed(self) -> int:
        return sum(item.size for item in self.removed)


def running_packs(*, history: History) -> list[PackRecord]:
    """The packs the history says are running now (a running pack uses the build folder and the caches)."""
    return [record for record in history.list(limit=10_000) if record.outcome == "running"]


def _tree_size(path: Path) -> int:
    """Bytes under ``path`` without following symlinks, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for entry in _walk(path):
        try:
            info = entry.lstat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def _walk(path: Path) -> Iterator[Path]:
    yield path
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, followlinks=False):
            for name in (*dirs, *files):
                yield Path(root, name)


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    return pid == os.getpid() or psutil.pid_exists(pid)


def _is_stale_partial(path: Path) -> bool:
    if not path.name.endswith(names.PARTIAL_SUFFIX) or path.is_symlink() or not path.is_file():
        return False
    owned = _OWNED_PARTIAL.fullmatch(path.name)
    return owned is None or not _pid_alive(int(owned["pid"]))


def _partial_files(*, data_dir: Path, history: History, skip: Collection[Path]) -> list[Path]:
    """``*.partial`` under ``data_dir`` (outside the folders removed whole) and in the folders of the
    archives the history knows: the temporaries of writes that never finished."""
    found: set[Path] = set()
    for path in _walk(data_dir):
        if any(path == s or s in path.parents for s in skip):
            continue
        if _is_stale_partial(path):
            found.add(path)
    folders = {Path(record.archive).parent for record in history.list(limit=10_000) if record.archive}
    folders |= {Path(p).parent for record in history.list(limit=10_000) for p in record.parts}
    for folder in folders:
        found.update(p for p in _children(folder) if _is_stale_partial(p))
    return sorted(found)


def clean_candidates(
    *, data_dir: Path, history: History, kinds: Collection[CleanKind] = CLEAN_KINDS
) -> tuple[CleanItem, ...]:
    """What a clean of ``kinds`` would delete, with sizes. Deletes nothing.

    Raises EzRunnerError while the history shows a pack running: it works in those folders.
    """
    running = running_packs(history=history)
    if running:
        first = running[0]
        raise EzRunnerError(
            f"A pack of {first.model_id} is running (history record {first.id[:12]}); cleaning now would delete "
            "the build folder and caches it is using.",
            hint="Wait for it to finish or cancel it, then run `ezrunner clean` again.",
        )
    items: list[CleanItem] = []
    whole: list[Path] = []
    if "build-contexts" in kinds:
        for path in _children(data_dir / BUILDS_DIR):
            items.append(CleanItem(kind="build-contexts", path=path, size=_tree_size(path)))
        whole.append(data_dir / BUILDS_DIR)
    if "layer-cache" in kinds and (data_dir / LAYER_CACHE_DIR).exists():
        path = data_dir / LAYER_CACHE_DIR
        items.append(CleanItem(kind="layer-cache", path=path, size=_tree_size(path)))
        whole.append(path)
    if "conversions" in kinds:
        for path in _children(data_dir / CONVERSIONS_DIR):
            items.append(CleanItem(kind="conversions", path=path, size=_tree_size(path)))
        whole.append(data_dir / CONVERSIONS_DIR)
    if "partial-files" in kinds:
        for path in _partial_files(data_dir=data_dir, history=history, skip=whole):
            items.append(CleanItem(kind="partial-files", path=path, size=_tree_size(path)))
    return tuple(items)


def remove(*, items: Sequence[CleanItem]) -> CleanResult:
    """Delete ``items`` (as ``clean_candidates`` found them); a symlink is removed, never followed."""
    removed: list[CleanItem] = []
    failed: list[tuple[CleanItem, str]] = []
    for item in items:
        try:
            if item.path.is_dir() and not item.path.is_symlink():
                shutil.rmtree(item.path)
            else:
                item.path.unlink(missing_ok=True)
        except OSError as error:
            failed.append((item, error.strerror or str(error)))
        else:
            removed.append(item)
    return CleanResult(removed=tuple(removed), failed=tuple(failed))

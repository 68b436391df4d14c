"""What a hub hands the shared inspection: one pinned commit's files, small reads and range reads.

Each hub implements ``RepoSnapshot`` (one transport per model source); ``core.hubs.repo`` and
``core.hubs.gguf_repo`` decide, once for every hub, what is read and packed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from core.refs import ModelRef


@dataclass(frozen=True)
class ListedFile:
    size: int
    sha256: str | None = None  # the hub's LFS sha256, where it gives one


class RepoSnapshot(Protocol):
    """A pinned commit of one repository, as one hub's client reads it."""

    @property
    def label(self) -> str:
        """"org/name" or the folder path, for messages."""
        ...

    @property
    def files(self) -> Mapping[str, ListedFile]:
        """Every file of the commit, by its "/"-separated path."""
        ...

    def read(self, path: str, *, max_bytes: int) -> bytes:
        """The whole (small) file; more than ``max_bytes`` is an error, not a big read."""
        ...

    def read_range(self, path: str, *, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer only at the end of the file); never the whole file."""
        ...


@dataclass(frozen=True)
class RepoFacts:
    """What the hub says about the repository besides its files."""

    ref: ModelRef
    repo_id: str
    revision: str
    commit: str
    license: str | None
    gated: bool
    answered_by: str

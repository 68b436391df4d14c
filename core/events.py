"""The one progress type every long step reports through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Stage = Literal["check", "pull", "download", "convert", "verify", "stage", "build", "export", "load", "run", "done"]


@dataclass(frozen=True)
class Event:
    """One progress report. ``total`` is None when unknown; ``unit`` is "B", "step" or "file"."""

    stage: Stage
    done: int = 0
    total: int | None = None
    unit: str = ""
    message: str = ""
    file: str | None = None  # the file a download event is about
    log: str | None = None  # a raw log line (docker build output) to append to the log tail


EventSink = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """An ``EventSink`` for callers that do not show progress."""

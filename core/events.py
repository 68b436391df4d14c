"""The one progress type every long step reports through, and the one way to cancel a long step.

Progress: a step calls its ``on_event`` (an ``EventSink``) with ``Event``s; the CLI prints them, the
wizard's job keeps the latest per stage. Cancel: the caller hands the step a ``Cancel`` (set it from
any thread); the step calls ``raise_if_cancelled`` between chunks, which raises ``CancelledError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from core.errors import CancelledError

Stage = Literal[
    "check", "pull", "download", "convert", "verify", "stage", "build", "export", "load", "push", "run", "bench", "done"
]


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


#: Set by whoever wants the step to stop (the wizard's Cancel button, a test); read by the step. A plain
#: ``threading.Event`` rather than a class of our own, so that callers need nothing but the standard
#: library and every step takes the same flag. Steps take ``Cancel | None``: None never cancels.
Cancel = threading.Event


def raise_if_cancelled(
    cancel: Cancel | None, *, message: str = "Cancelled.", hint: str = "Start again when you are ready."
) -> None:
    """Raise ``CancelledError(message, hint=hint)`` when ``cancel`` is set; return at once otherwise."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(message, hint=hint)

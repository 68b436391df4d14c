"""The CLI's progress display: ``core.events.Event``s in, lines on stderr out.

On a terminal, one line per phase is rewritten in place (at most ten times a second) with the bytes done,
the speed and the time left; elsewhere (CI logs, a pipe) a plain line is printed every ``interval_s``
and when a phase completes. Stage changes, status messages and build output lines are printed as lines
of their own. The figures shown never go backwards: when a stage starts counting again from a lower
value towards another total (the export fills the layer cache, then writes the archive), that is a new
phase on a new line; a lower count towards the same total is a late report, and is not shown.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from core.events import Event

#: Seconds of samples the speed is measured over: long enough to smooth out chunk bursts, short enough
#: to follow a download that slows down.
RATE_WINDOW_S = 10.0
#: Seconds between redraws of the in-place line on a terminal.
TTY_REDRAW_S = 0.1
#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 5.0


def human_bytes(n: float | None) -> str:
    """1536 → '1.5 KiB'; binary units, as the rest of EZ Runner reports sizes."""
    if n is None:
        return "?"
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float) -> str:
    """75 → '1:15', 3700 → '1:01:40'."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Phase:
    """One run of increasing counts within a stage."""

    stage: str
    unit: str
    started: float
    done: int = 0
    total: int | None = None
    file: str | None = None  # what the counts are about now: a file, a layer
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    finished: bool = False
    shown_percent: float = 0.0
    estimated: bool = False  # the total turned out to be an estimate: shown without it from then on

    def advance(self, *, done: int, total: int | None, file: str | None, now: float) -> None:
        self.done = max(self.done, done)
        if total is not None and total < self.done:
            self.estimated = True  # counted past its total: the total was an estimate (the layer cache's)
        self.total = None if self.estimated else total
        self.file = file or self.file
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float | None:
        """Units per second over the last ``RATE_WINDOW_S``; None until there is a second of samples."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 1.0 else None

    def eta_s(self) -> float | None:
        rate = self.rate()
        if not rate or self.total is None:
            return None
        return max(0.0, (self.total - self.done) / rate)

    @property
    def complete(self) -> bool:
        return self.total is not None and self.done >= self.total

    def text(self, now: float) -> str:
        if self.unit == "B":
            amount = human_bytes(self.done) + (f" / {human_bytes(self.total)}" if self.total else "")
        elif self.unit == "s":
            amount = f"{self.done} s" + (f" / {self.total} s" if self.total else "")
        else:
            amount = f"{self.unit} {self.done}" + (f"/{self.total}" if self.total else "")
        parts = [f"    {self.stage}"]
        if self.total:
            # A total that grows (a writer that finds more bytes than announced) must not pull it back.
            self.shown_percent = max(self.shown_percent, 100 * self.done / self.total)
            parts.append(f"{self.shown_percent:5.1f}%")
        parts.append(amount)
        rate = self.rate()
        if self.unit == "B" and rate is not None:
            parts.append(f"{human_bytes(rate)}/s")
        eta = self.eta_s()
        if self.complete:
            parts.append(f"in {human_duration(now - self.started)}")
        elif self.unit == "B" and eta is not None:
            parts.append(f"ETA {human_duration(eta)}")
        else:
            parts.append(f"{human_duration(now - self.started)} elapsed")
        if self.file:
            parts.append(self.file)
        return "  ".join(parts)


class ProgressRenderer:
    """An ``EventSink`` for the CLI. Call ``close()`` when the step ends (ends an unfinished line)."""

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = PLAIN_INTERVAL_S,
        width: int | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.interval_s = interval_s
        self.width = width
        self.stage = ""
        self.message = ""
        self.phase: _Phase | None = None
        self.last_draw = float("-inf")
        self.drawn = False  # a progress line is on screen without its newline (terminal only)

    # output

    def _columns(self) -> int:
        return self.width or shutil.get_terminal_size(fallback=(100, 24)).columns

    def _line(self, text: str) -> None:
        """Print a line of its own, above the in-place progress line."""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False

    def _draw(self, *, final: bool) -> None:
        phase = self.phase
        if phase is None:
            return
        now = self.clock()
        text = phase.text(now)
        if self.tty:
            # Never wider than the terminal: a wrapped line cannot be rewritten in place.
            self.stream.write("\r\x1b[K" + text[: max(10, self._columns() - 1)])
            self.drawn = True
            if final:
                self.stream.write("\n")
                self.drawn = False
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last_draw = now

    def _end_phase(self) -> None:
        phase = self.phase
        if phase is not None and not phase.finished:
            # Leave the last figures on screen: on a terminal always (a log line may have cleared them),
            # in a log when they changed since the last line.
            if self.tty or (phase.done and self.last_draw < phase.samples[-1][0]):
                self._draw(final=True)
            phase.finished = True
        self.phase = None

    # the sink

    def __call__(self, event: Event) -> None:
        if event.stage != self.stage:
            self._end_phase()
            self.stage, self.message = event.stage, event.message
            self._line(f"==> {event.stage}: {event.message}" if event.message else f"==> {event.stage}")
        elif event.message and event.message != self.message and not event.log:
            self.message = event.message
            if event.total is None and not event.done:
                self._line(f"    {event.message}")  # a status line within the stage
        if event.log:
            self._line(f"    {event.log.rstrip()}")
        if (event.total is None and not event.done) or event.stage == "done":
            return  # "done" carries the archive's size, which the export line already showed
        self._progress(event)

    def _progress(self, event: Event) -> None:
        now = self.clock()
        phase = self.phase
        if phase is not None and phase.finished and event.unit == phase.unit and event.done == phase.done:
            return  # the same end reported twice (the last file, then the whole download)
        if phase is not None and not phase.finished and event.done < phase.done and event.total == phase.total:
            return  # a late report of the same count: not shown, the figures only go forward
        if phase is not None and (event.done < phase.done or event.unit != phase.unit or phase.finished):
            self._end_phase()  # counting starts again: a new phase, never a step back
            phase = None
        if phase is None:
            phase = self.phase = _Phase(stage=event.stage, unit=event.unit, started=now)
        phase.advance(done=event.done, total=event.total, file=event.file or event.message or None, now=now)
        if phase.complete:
            self._draw(final=True)
            phase.finished = True
            return
        due = TTY_REDRAW_S if self.tty else self.interval_s
        if now - self.last_draw >= due:
            self._draw(final=False)

    def close(self) -> None:
        """End the current phase's line (after success, an error or an interrupt)."""
        self._end_phase()
        self._clear()
        self.stream.flush()

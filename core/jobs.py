"""Long work (a pack) in a background thread, observed by polling.

The wizard keeps only a job id; any script run, tab or HTTP route can look the job up in the
process-wide ``REGISTRY`` and take a ``snapshot()``. One active job per key (per model), so a second
click re-attaches instead of starting a second build.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import CancelledError, EzRunnerError
from core.events import Cancel, Event, EventSink

JobState = Literal["running", "succeeded", "failed", "cancelled"]
LOG_TAIL_LINES = 500


@dataclass(frozen=True)
class StageProgress:
    stage: str
    done: int
    total: int | None
    unit: str
    message: str
    file: str | None
    started: float
    updated: float

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    @property
    def rate(self) -> float | None:
        """Units per second since the stage started (bytes/s for byte stages)."""
        elapsed = self.updated - self.started
        return self.done / elapsed if elapsed > 0.5 and self.done else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        if not rate or not self.total:
            return None
        return max(0.0, (self.total - self.done) / rate)


@dataclass(frozen=True)
class JobSnapshot:
    id: str
    key: str
    state: JobState
    stage: str | None
    stages: tuple[StageProgress, ...]  # in the order they started
    log_tail: tuple[str, ...]
    started: float
    finished: float | None
    error: str | None = None
    error_code: str | None = None
    result: Any = None

    @property
    def active(self) -> bool:
        return self.state == "running"

    def progress(self, stage: str) -> StageProgress | None:
        return next((s for s in self.stages if s.stage == stage), None)


@dataclass
class Job:
    """One background run of ``work(on_event, cancel)``; thread-safe snapshots for any observer."""

    key: str
    work: Callable[[EventSink, Cancel], Any]
    on_finish: Callable[[Job], None] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cancel: Cancel = field(default_factory=Cancel, repr=False)
    _stages: dict[str, StageProgress] = field(default_factory=dict, repr=False)
    _log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES), repr=False)
    _state: JobState = "running"
    _stage: str | None = None
    _started: float = field(default_factory=time.time)
    _finished: float | None = None
    _error: EzRunnerError | Exception | None = None
    _result: Any = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Job:
        self._thread = threading.Thread(target=self._run, name=f"job-{self.id[:8]}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    def on_event(self, event: Event) -> None:
        now = time.time()
        with self._lock:
            if event.log is not None:
                self._log.append(event.log.rstrip("\n"))
            prev = self._stages.get(event.stage)
            if event.log is not None and prev is not None and not event.total and not event.done:
                return  # a bare log line: keep the stage's numbers
            self._stage = event.stage
            self._stages[event.stage] = StageProgress(
                stage=event.stage,
                done=event.done,
                total=event.total,
                unit=event.unit,
                message=event.message or (prev.message if prev else ""),
                file=event.file,
                started=prev.started if prev else now,
                updated=now,
            )

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            error = self._error
            return JobSnapshot(
                id=self.id,
                key=self.key,
                state=self._state,
                stage=self._stage,
                stages=tuple(sorted(self._stages.values(), key=lambda s: s.started)),
                log_tail=tuple(self._log),
                started=self._started,
                finished=self._finished,
                error=str(error) if error else None,
                error_code=getattr(error, "code", "error") if error else None,
                result=self._result,
            )

    def _run(self) -> None:
        try:
            result = self.work(self.on_event, self._cancel)
        except CancelledError as exc:
            self._finish("cancelled", error=exc)
        except EzRunnerError as exc:
            self._finish("failed", error=exc)
        except Exception as exc:  # a bug: keep the job observable instead of dying silently
            self._finish("failed", error=exc)
        else:
            self._finish("succeeded", result=result)

    def _finish(self, state: JobState, *, error: Exception | None = None, result: Any = None) -> None:
        with self._lock:
            self._state = state
            self._error = error
            self._result = result
            self._finished = time.time()
            if error is not None:
                self._log.append(f"{type(error).__name__}: {error}")
        if self.on_finish is not None:
            self.on_finish(self)


class JobRegistry:
    """Process-wide: the wizard's script runs and the HTTP routes share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def start(
        self,
        *,
        key: str,
        work: Callable[[EventSink, Cancel], Any],
        on_finish: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start ``work`` unless a job for ``key`` is still running; then return that one."""
        with self._lock:
            for job in self._jobs.values():
                if job.key == key and job.snapshot().active:
                    return job
            job = Job(key=key, work=work, on_finish=on_finish)
            self._jobs[job.id] = job
        return job.start()

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())


REGISTRY = JobRegistry()

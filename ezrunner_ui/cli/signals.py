"""Ctrl-C and SIGTERM for the long subcommands (pack, run): stop means stop.

The first SIGINT or SIGTERM sets the work's ``Cancel`` (``core.events``): every stage stops at its next
check, removes what it had started (partial files, the container it started) and records the pack as
cancelled, then the command exits 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM). A second
signal, or work that has not stopped within ``grace_s`` of the first, raises KeyboardInterrupt in the
main thread instead, which unwinds through the same clean-up (``finally`` blocks, ``pack``'s history
record). The exit is ``os._exit`` once the work has unwound: threads a hub client left downloading (they
only look at the cancel between 10 MiB chunks) must not hold the process open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from core.errors import EzRunnerError
from core.events import Cancel
from ezrunner_ui.cli.common import print_json

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds the work gets, after the first signal, to stop by itself before it is interrupted.
GRACE_S = 10.0


@contextlib.contextmanager
def stop_on_signals(*, what: str, json_output: bool = False, grace_s: float = GRACE_S) -> Iterator[Cancel]:
    """Yield the ``Cancel`` that SIGINT/SIGTERM set while the block runs (``what``: "the pack")."""
    cancel = Cancel()
    received: list[int] = []
    finished = threading.Event()
    main = threading.main_thread()

    def interrupt_if_still_running() -> None:
        if not finished.wait(grace_s) and main.ident is not None:
            signal.pthread_kill(main.ident, signal.SIGINT)  # wakes a blocking call there too (EINTR)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt
        cancel.set()
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping {what} and removing what it started …", file=sys.stderr, flush=True)
        threading.Thread(target=interrupt_if_still_running, name="stop-watchdog", daemon=True).start()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield cancel
    except BaseException as error:
        finished.set()
        if not received or isinstance(error, SystemExit):
            raise
        for signum in STOP_SIGNALS:  # the clean-up is done: nothing left to interrupt
            signal.signal(signum, signal.SIG_IGN)
        _report(error, what=what, json_output=json_output)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + received[0])
    finally:
        finished.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _report(error: BaseException, *, what: str, json_output: bool) -> None:
    if isinstance(error, EzRunnerError):
        code, message = error.code, str(error)
    else:  # interrupted before its own check saw the cancel; its finally blocks cleaned up all the same
        code, message = "cancelled", f"Stopped {what}; what it had started was removed. Start it again when ready."
    if json_output:
        print_json({"error": code, "message": message})
    else:
        print(f"Error: {message}", file=sys.stderr)

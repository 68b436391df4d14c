"""`ezrunner run`'s wait for the server: one line rewritten in place on a terminal, a plain line now and
then otherwise (never one line per second)."""

from __future__ import annotations

import io

import pytest

from core.events import Event
from ezrunner_ui.cli import run as run_command


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait(seconds: int, message: str = "not listening yet") -> Event:
    return Event(stage="run", done=seconds, total=300, unit="s", message=message)


def test_on_a_terminal_the_wait_is_one_line_updated_in_place() -> None:
    screen = Terminal()
    others: list[Event] = []
    line = run_command.WaitLine(screen, other=others.append)
    for second in range(30):
        line(_wait(second))
    line(_wait(31, "healthy"))
    text = screen.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended once the server answered
    assert text.count("\r") == 31
    assert "waiting for the server: 31 s of 300 s (healthy)" in text
    assert others == []


def test_without_a_terminal_plain_lines_come_seldom(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    clock = iter(range(1000))
    monkeypatch.setattr(run_command.time, "monotonic", lambda: float(next(clock)))
    line = run_command.WaitLine(log, other=lambda event: None)
    for second in range(60):
        line(_wait(second))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert 3 <= len(lines) <= 5  # one per PLAIN_WAIT_LINE_EVERY_S (15 s), not one per second


def test_other_events_end_the_line_and_go_to_the_usual_progress() -> None:
    screen = Terminal()
    others: list[Event] = []
    line = run_command.WaitLine(screen, other=others.append)
    line(_wait(1))
    load = Event(stage="load", message="Loading tiny.tar")
    line(load)
    assert screen.getvalue().endswith("\n") and others == [load]

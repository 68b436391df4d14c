"""The CLI's progress renderer: bytes, speed and ETA; in place on a terminal, plain lines elsewhere; never back."""

from __future__ import annotations

import io
import re

from core.events import Event
from ezrunner_ui.cli.progress import ProgressRenderer, human_bytes, human_duration

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _renderer(*, tty: bool, interval_s: float = 5.0, width: int = 200) -> tuple[ProgressRenderer, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return ProgressRenderer(stream=out, tty=tty, clock=clock, interval_s=interval_s, width=width), out, clock


def _download(renderer: ProgressRenderer, clock: Clock, *, total: int, step: int, seconds_per_step: float) -> None:
    for done in range(0, total + 1, step):
        renderer(Event(stage="download", done=done, total=total, unit="B", file="model.safetensors"))
        clock.now += seconds_per_step


def test_sizes_and_durations_read_as_people_write_them() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_bytes(5 * 2**40) == "5.0 TiB"
    assert human_bytes(None) == "?"
    assert human_duration(75) == "1:15"
    assert human_duration(3700) == "1:01:40"


def test_plain_output_prints_a_line_every_interval_with_speed_and_eta() -> None:
    renderer, out, clock = _renderer(tty=False, interval_s=5.0)
    # 100 MiB at 10 MiB/s, one event per 0.5 s (1 MiB each... 5 MiB per step): 20 s in all.
    _download(renderer, clock, total=100 * MIB, step=5 * MIB, seconds_per_step=0.5)
    renderer.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = [line for line in text.splitlines() if line.strip().startswith("download")]
    # one line at the start, then one per 5 s of the 10 s run, and the completed one: never one per event
    assert 2 <= len(lines) <= 5
    assert text.splitlines()[0] == "==> download"
    assert any(re.search(r"10\.0 MiB/s\s+ETA 0:0\d", line) for line in lines)
    assert "100.0%  100.0 MiB / 100.0 MiB" in lines[-1] and "in 0:10" in lines[-1]
    assert lines[-1].endswith("model.safetensors")


def test_a_terminal_gets_one_line_rewritten_in_place_no_wider_than_the_terminal() -> None:
    renderer, out, clock = _renderer(tty=True, width=40)
    _download(renderer, clock, total=10 * MIB, step=MIB, seconds_per_step=0.5)
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 10
    drawn = [chunk.split("\n")[0] for chunk in text.split("\r\x1b[K")[1:]]
    assert drawn and all(len(chunk) <= 39 for chunk in drawn)
    assert text.endswith("\n")  # the completed phase stays on screen on its own line


def test_lines_between_progress_updates_do_not_mix_with_the_progress_line() -> None:
    renderer, out, clock = _renderer(tty=True)
    renderer(Event(stage="build", done=1, total=3, unit="step", message="FROM base", log="Step 1/3 : FROM base"))
    clock.now += 1
    renderer(Event(stage="build", done=2, total=3, unit="step", message="COPY x", log="Step 2/3 : COPY x"))
    renderer(Event(stage="build", done=2, total=3, unit="step", message="COPY x", log=" ---> abc"))
    renderer(Event(stage="export", done=0, total=10, unit="B", message="Writing m.tar"))
    renderer.close()
    text = out.getvalue()
    # the last log line cleared the step line; it is drawn once more, whole, before the next stage
    assert re.search(r"\r\x1b\[K    build   66\.7%  step 2/3 [^\r\n]*\n==> export: Writing m.tar\n", text)
    # every log line starts at column 0 of a line of its own: the progress line was cleared first
    for line in ("    Step 1/3 : FROM base\n", "    Step 2/3 : COPY x\n"):
        index = text.index(line)
        assert text[index - 1] == "\n" or text[index - len("\r\x1b[K") : index] == "\r\x1b[K"
    assert "build   66.7%  step 2/3" in text
    assert text.endswith("\n")


def _percentages(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"(\d+\.\d)%", text)]


def test_figures_never_go_backwards_when_counting_restarts_or_the_total_grows() -> None:
    renderer, out, clock = _renderer(tty=False, interval_s=0.0)
    for done in (0, 40, 80):  # a total that holds
        renderer(Event(stage="export", done=done * MIB, total=80 * MIB, unit="B", message="Runtime layer 1/2"))
        clock.now += 1
    for done in (0, 30, 60, 30, 90):  # counting again, towards another total; a late lower count is not shown
        renderer(Event(stage="export", done=done * MIB, total=90 * MIB, unit="B", message="Model layer w-0"))
        clock.now += 1
    renderer.close()
    first, second = out.getvalue().split("100.0%", 1)  # the first phase ends at 100%, then a new line
    assert _percentages(first) == [0.0, 50.0]
    assert [p for p in _percentages(second) if p < 100] == [0.0, 33.3, 66.7]
    assert out.getvalue().count("100.0%") == 2


def test_a_total_that_turns_out_to_be_an_estimate_is_dropped_not_shown_past_100_percent() -> None:
    renderer, out, clock = _renderer(tty=False, interval_s=0.0)
    # The layer cache's total is an estimate the real bytes overshoot; then the archive is written from 0.
    for done in (0, 50, 100, 101, 102, 103):
        renderer(Event(stage="export", done=done * MIB, total=100 * MIB, unit="B", message="Caching"))
        clock.now += 1
    renderer(Event(stage="export", done=0, total=200 * MIB, unit="B", message="Writing m.tar"))
    renderer.close()
    text = out.getvalue()
    assert max(_percentages(text)) <= 100.0
    assert text.count("100.0%") <= 1  # not a "complete" line per overshooting report
    cache_lines = [line for line in text.splitlines() if line.endswith("Caching")]
    assert "103.0 MiB" in cache_lines[-1] and "/" not in cache_lines[-1].split("MiB")[1]
    assert text.splitlines()[-1].startswith("    export    0.0%  0 B / 200.0 MiB")


def test_the_same_end_reported_twice_is_printed_once_and_done_adds_no_progress_line() -> None:
    renderer, out, clock = _renderer(tty=False)
    renderer(Event(stage="download", done=0, total=MIB, unit="B", file="a"))
    clock.now += 2
    renderer(Event(stage="download", done=MIB, total=MIB, unit="B", file="a"))
    renderer(Event(stage="download", done=MIB, total=MIB, unit="B"))
    renderer(Event(stage="done", done=MIB, total=MIB, unit="B", message="Wrote /x/m.tar"))
    renderer.close()
    text = out.getvalue()
    assert text.count("100.0%") == 1
    assert text.splitlines()[-1] == "==> done: Wrote /x/m.tar"


def test_status_messages_without_counts_are_lines_and_counted_ones_label_the_progress_line() -> None:
    renderer, out, clock = _renderer(tty=False, interval_s=0.0)
    renderer(Event(stage="check", message="Checking Docker"))
    renderer(Event(stage="check", message="Fast path: ..."))
    renderer(Event(stage="export", done=0, total=10, unit="B", message="Writing m.tar"))
    clock.now += 1
    renderer(Event(stage="export", done=5, total=10, unit="B", message="Model layer weights-0"))
    renderer.close()
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["==> check: Checking Docker", "    Fast path: ..."]
    assert "==> export: Writing m.tar" in lines
    assert lines[-1].endswith("Model layer weights-0") and "50.0%" in lines[-1]
    assert "    Model layer weights-0" not in lines

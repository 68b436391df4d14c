"""core.history: a row never stays "running" once its process is gone, and a reused pid does not fool it."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil

from core.history import History


def _start(history: History) -> str:
    return history.start(
        model_id="org/m", source="hf", revision="main", model_commit="c" * 40, target={}, plan={},
        dockerfile="FROM x", image_tag="ezrunner/m:c",
    )


def _set_owner(history: History, record_id: str, *, pid: int | None, host: str | None, started: float | None) -> None:
    with sqlite3.connect(history.path) as db:
        db.execute(
            "UPDATE packs SET owner_pid = ?, owner_host = ?, owner_started = ? WHERE id = ?",
            (pid, host, started, record_id),
        )


def _outcome(path: Path, record_id: str) -> str:
    record = History(path).get(record_id)  # opening the history is what repairs it
    assert record is not None
    return record.outcome


def test_rows_of_gone_processes_are_repaired_and_live_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    history = History(path)
    mine = _start(history)
    record = history.get(mine)
    assert record is not None and record.owner_pid == os.getpid() and record.owner_host == socket.gethostname()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(dead.stdout)
    gone = _start(history)
    _set_owner(history, gone, pid=gone_pid, host=socket.gethostname(), started=1.0)
    # this very pid, but a process that started at another time: the pid was reused, the owner is gone
    reused = _start(history)
    _set_owner(history, reused, pid=os.getpid(), host=socket.gethostname(),
               started=psutil.Process().create_time() - 1000)  # fmt: skip
    elsewhere = _start(history)
    _set_owner(history, elsewhere, pid=gone_pid, host="another-host.example", started=1.0)
    legacy = _start(history)  # written before owners were recorded
    _set_owner(history, legacy, pid=None, host=None, started=None)

    assert _outcome(path, mine) == "running"
    assert _outcome(path, gone) == "cancelled"
    assert _outcome(path, reused) == "cancelled"
    assert _outcome(path, elsewhere) == "running"  # its process cannot be seen from here
    assert _outcome(path, legacy) == "cancelled"
    repaired = History(path).get(gone)
    assert repaired is not None and repaired.finished is not None
    assert repaired.error is not None and "ended before the pack finished" in repaired.error


def test_a_killed_pack_process_leaves_a_row_that_the_next_reader_repairs(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from core.history import History\n"
        f"h = History(Path({str(path)!r}))\n"
        "print(h.start(model_id='org/m', source='hf', revision='main', model_commit='c' * 40, target={}, plan={},"
        " dockerfile='FROM x', image_tag='ezrunner/m:c'), flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    try:
        assert child.stdout is not None
        record_id = child.stdout.readline().strip()
        assert _outcome(path, record_id) == "running"  # its process still runs
    finally:
        child.kill()
        child.wait()
    assert _outcome(path, record_id) == "cancelled"

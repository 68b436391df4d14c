"""A local SQLite record of every pack: what was packed, for which target, how it went, where it lies.

A row is "running" while its pack runs; it names the process that owns it (pid, host and the process's
start time, so a reused pid is not taken for the owner). Opening the history repairs the rows whose
process is gone (killed, the machine rebooted): they become "cancelled", with the reason, instead of
staying "running" for ever.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from core.archive import names
from core.hardware import default_data_dir
from core.render import find_load_script

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    model_id TEXT NOT NULL,
    source TEXT NOT NULL,
    revision TEXT NOT NULL,
    model_commit TEXT NOT NULL,
    target TEXT NOT NULL,
    plan TEXT NOT NULL,
    dockerfile TEXT NOT NULL,
    image_tag TEXT,
    image_id TEXT,
    archive TEXT,
    parts TEXT,
    size INTEGER,
    sha256 TEXT,
    run_command TEXT,
    outcome TEXT NOT NULL,
    error TEXT,
    log TEXT
)
"""


# Bench figures of a pack (`ezrunner bench`), one row per benched target run; a table of its own, so that
# history files of earlier versions gain it by CREATE TABLE IF NOT EXISTS and nothing else changes.
_BENCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pack_id TEXT NOT NULL,
    recorded REAL NOT NULL,
    result TEXT NOT NULL
)
"""

_ADDED_COLUMNS = (
    ("run_command", "TEXT"),
    ("owner_pid", "INTEGER"),  # the process running the pack: os.getpid()
    ("owner_host", "TEXT"),  # socket.gethostname() of its machine (a history on a shared disk)
    ("owner_started", "REAL"),  # its start time (psutil), which tells it from a later process with its pid
)
#: How much two readings of one process's start time may differ (psutil derives it from clock ticks).
_START_TIME_SLACK_S = 1.0


@dataclass(frozen=True)
class PackRecord:
    id: str
    started: float
    finished: float | None
    model_id: str
    source: str
    revision: str
    model_commit: str
    target: Mapping[str, Any]
    plan: Mapping[str, Any]
    dockerfile: str
    image_tag: str | None
    image_id: str | None
    archive: str | None
    parts: tuple[str, ...]
    size: int | None
    sha256: str | None
    run_command: str | None
    outcome: str  # running | succeeded | failed | cancelled
    error: str | None
    log: str | None
    owner_pid: int | None = None  # the process that ran (runs) the pack, where recorded
    owner_host: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


def default_history_path() -> Path:
    return default_data_dir() / "history.sqlite"


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_history_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)
            db.execute(_BENCH_SCHEMA)
            # Columns added after the first release of the schema: add them to older files in place.
            have = {row["name"] for row in db.execute("PRAGMA table_info(packs)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in have:
                    db.execute(f"ALTER TABLE packs ADD COLUMN {column} {kind}")
        self.repair_stale()

    def repair_stale(self) -> builtins.list[str]:
        """Mark "running" rows whose process is gone as cancelled; return their ids.

        Rows of another host are left alone (their process cannot be seen from here). Rows written before
        owners were recorded are taken as gone: should such a pack still finish, its own ``finish()``
        records the real outcome over this one.
        """
        host = socket.gethostname()
        with self._db() as db:
            rows = db.execute(
                "SELECT id, owner_pid, owner_host, owner_started FROM packs WHERE outcome = 'running'"
            ).fetchall()
            repaired = []
            for row in rows:
                pid, owner_host = row["owner_pid"], row["owner_host"]
                if owner_host not in (None, host) or (pid is not None and _alive(pid, row["owner_started"])):
                    continue
                who = f"the process that ran it (pid {pid} on {owner_host})" if pid is not None else "its process"
                db.execute(
                    "UPDATE packs SET outcome = 'cancelled', finished = ?, error = ? WHERE id = ?"
                    " AND outcome = 'running'",
                    (time.time(), f"Interrupted: {who} ended before the pack finished. Start it again.", row["id"]),
                )
                repaired.append(str(row["id"]))
        return repaired

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def start(
        self, *, model_id: str, source: str, revision: str, model_commit: str, target: Mapping[str, Any],
        plan: Mapping[str, Any], dockerfile: str, image_tag: str,
    ) -> str:
        record_id = uuid.uuid4().hex
        pid = os.getpid()
        with self._db() as db:
            db.execute(
                "INSERT INTO packs (id, started, model_id, source, revision, model_commit, target, plan, dockerfile,"
                " image_tag, outcome, owner_pid, owner_host, owner_started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (record_id, time.time(), model_id, source, revision, model_commit, json.dumps(target),
                 json.dumps(plan), dockerfile, image_tag, pid, socket.gethostname(), _start_time(pid)),
            )
        return record_id

    def finish(
        self, record_id: str, *, outcome: str, error: str | None = None, log: str | None = None,
        image_id: str | None = None, archive: Path | None = None, parts: tuple[Path, ...] = (),
        size: int | None = None, sha256: str | None = None, run_command: str | None = None,
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE packs SET finished=?, outcome=?, error=?, log=?, image_id=?, archive=?, parts=?, size=?,"
                " sha256=?, run_command=? WHERE id=?",
                (time.time(), outcome, error, log, image_id, str(archive) if archive else None,
                 json.dumps([str(p) for p in parts]), size, sha256, run_command, record_id),
            )
            if archive is not None:
                # A pack to the same path replaced the files older records point at: those are gone.
                db.execute(
                    "UPDATE packs SET archive = NULL, parts = '[]' WHERE id != ? AND archive = ?",
                    (record_id, str(archive)),
                )

    def list(self, *, limit: int = 200) -> builtins.list[PackRecord]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM packs ORDER BY started DESC LIMIT ?", (limit,)).fetchall()
        return [_record(row) for row in rows]

    def get(self, record_id: str) -> PackRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM packs WHERE id=?", (record_id,)).fetchone()
        return _record(row) if row else None

    def find_pack(self, *, archive: Path | None = None, image_tag: str | None = None) -> PackRecord | None:
        """The latest succeeded pack that wrote ``archive`` (or one of its parts), or tagged ``image_tag``."""
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM packs WHERE outcome = 'succeeded' ORDER BY started DESC LIMIT 1000"
            ).fetchall()
        for row in rows:
            record = _record(row)
            if archive is not None and record.archive is not None:
                written = {Path(record.archive).resolve(), *(Path(p).resolve() for p in record.parts)}
                if archive.resolve() in written:
                    return record
            if image_tag is not None and record.image_tag == image_tag:
                return record
        return None

    def add_bench_result(self, record_id: str, *, result: Mapping[str, Any]) -> None:
        """Keep one bench result (``core.bench.BenchResult.to_dict()``) with the pack ``record_id``."""
        with self._db() as db:
            db.execute(
                "INSERT INTO bench_results (pack_id, recorded, result) VALUES (?, ?, ?)",
                (record_id, time.time(), json.dumps(dict(result), sort_keys=True)),
            )

    def bench_results(self, record_id: str) -> builtins.list[dict[str, Any]]:
        """The bench results kept with the pack ``record_id``, oldest first, each with its ``recorded`` time."""
        with self._db() as db:
            rows = db.execute(
                "SELECT recorded, result FROM bench_results WHERE pack_id = ? ORDER BY id", (record_id,)
            ).fetchall()
        return [{**json.loads(row["result"]), "recorded": row["recorded"]} for row in rows]

    def delete(self, record_id: str, *, files: bool) -> builtins.list[Path]:
        """Forget a pack; with ``files`` also delete its archive, parts and sidecars. Returns deleted paths."""
        record = self.get(record_id)
        deleted: builtins.list[Path] = []
        if record is None:
            return deleted
        if files and record.archive:
            archive = Path(record.archive)
            candidates = [archive, *(Path(p) for p in record.parts)]
            candidates += [names.checksum_path(archive), names.parts_checksum_path(archive)]
            load_script = find_load_script(archive)
            if load_script is not None:
                candidates.append(load_script)
            with self._db() as db:  # files a newer pack to the same path wrote are that pack's, not ours
                shared = db.execute(
                    "SELECT 1 FROM packs WHERE id != ? AND archive = ?", (record_id, record.archive)
                ).fetchone()
            for path in dict.fromkeys(candidates if not shared else []):
                if path.is_file():
                    path.unlink()
                    deleted.append(path)
        with self._db() as db:
            db.execute("DELETE FROM packs WHERE id=?", (record_id,))
            db.execute("DELETE FROM bench_results WHERE pack_id=?", (record_id,))
        return deleted


def _record(row: sqlite3.Row) -> PackRecord:
    return PackRecord(
        id=row["id"], started=row["started"], finished=row["finished"], model_id=row["model_id"],
        source=row["source"], revision=row["revision"], model_commit=row["model_commit"],
        target=json.loads(row["target"]), plan=json.loads(row["plan"]), dockerfile=row["dockerfile"],
        image_tag=row["image_tag"], image_id=row["image_id"], archive=row["archive"],
        parts=tuple(json.loads(row["parts"] or "[]")), size=row["size"], sha256=row["sha256"],
        run_command=row["run_command"],
        outcome=row["outcome"], error=row["error"], log=row["log"],
        owner_pid=row["owner_pid"], owner_host=row["owner_host"],
    )


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not merely a later one with its pid)."""
    try:
        process = psutil.Process(pid)
        now_started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
            return False
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except (psutil.Error, OSError):
        return True  # cannot look (another user's process): never repair what may still run
    return started is None or abs(now_started - started) <= _START_TIME_SLACK_S

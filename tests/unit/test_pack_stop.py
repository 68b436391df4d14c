"""core.pack's guards: an existing archive is kept unless overwrite, and a cancel does not wait for a
download that looks at it only now and then."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.archive import names
from core.errors import CancelledError, InvalidOptionsError
from core.events import Cancel
from core.pack import existing_output, refuse_existing_output, until_cancelled


def test_an_existing_archive_its_parts_or_its_checksum_count_as_an_earlier_pack(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    assert existing_output(archive) is None
    refuse_existing_output(archive=archive)  # nothing there: fine
    for earlier in (archive, names.checksum_path(archive), names.part_path(archive, 0)):
        earlier.write_bytes(b"x")
        assert existing_output(archive) == earlier
        with pytest.raises(InvalidOptionsError, match=r"already exists.*--overwrite"):
            refuse_existing_output(archive=archive)
        earlier.unlink()


def test_until_cancelled_returns_the_result_or_the_error_of_the_work() -> None:
    assert until_cancelled(lambda: 42, cancel=Cancel(), grace_s=1, name="t") == 42
    assert until_cancelled(lambda: 43, cancel=None, grace_s=1, name="t") == 43

    def broken() -> int:
        raise ValueError("hub answered garbage")

    with pytest.raises(ValueError, match="garbage"):
        until_cancelled(broken, cancel=Cancel(), grace_s=1, name="t")


def test_a_cancel_stops_the_caller_within_the_grace_even_when_the_work_does_not_look() -> None:
    cancel = Cancel()
    release = threading.Event()

    def deaf_download() -> str:
        release.wait(60)  # a slow link: the client looks at the cancel only after its next 10 MiB
        return "done"

    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(CancelledError, match="cancelled"):
            until_cancelled(deaf_download, cancel=cancel, grace_s=0.5, name="t")
        assert time.monotonic() - started < 30  # not the 60 s the work would have taken
    finally:
        release.set()

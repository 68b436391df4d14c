"""core.archive: the names of an archive's pieces, the parts writer, the reader and the checksum check."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from core.archive import names, writer
from core.archive.compression import ZSTD_MAGIC
from core.archive.names import archive_parts
from core.archive.reader import read_stream, verify_archive
from core.archive.writer import _InFlight, write_stream
from core.errors import ArtifactInvalidError, CancelledError, InvalidOptionsError
from core.events import Cancel, Event, raise_if_cancelled


def _chunks(payload: bytes, size: int) -> list[bytes]:
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def _payload(size: int) -> bytes:
    # half random (incompressible, like weights), half repetitive (like text), so that zstd matters
    repetitive = b"layer.tar " * (size // 20 + 1)
    return (os.urandom(size // 2) + repetitive)[:size]


def test_write_stream_plain_file_has_sha256_of_its_bytes_and_no_partial(tmp_path: Path) -> None:
    payload = _payload(300_000)
    events: list[Event] = []
    written = write_stream(_chunks(payload, 65536), tmp_path / "image.tar", total=len(payload), on_event=events.append)

    assert written.paths == (tmp_path / "image.tar",)
    assert (tmp_path / "image.tar").read_bytes() == payload
    assert written.size == len(payload)
    assert written.sha256 == hashlib.sha256(payload).hexdigest() == written.part_sha256[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]
    assert [e.done for e in events if e.unit == "B"][-1] == len(payload)
    assert all(e.stage == "export" for e in events)


def test_write_stream_split_parts_reassemble_and_carry_their_own_sums(tmp_path: Path) -> None:
    payload = _payload(250_001)
    written = write_stream(_chunks(payload, 70_000), tmp_path / "image.tar", split_bytes=100_000)

    assert [p.name for p in written.paths] == ["image.tar.part000", "image.tar.part001", "image.tar.part002"]
    assert [p.stat().st_size for p in written.paths] == [100_000, 100_000, 50_001]
    on_disk = b"".join(p.read_bytes() for p in written.paths)
    assert on_disk == payload
    assert written.sha256 == hashlib.sha256(on_disk).hexdigest()
    assert written.part_sha256 == tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in written.paths)
    # the parts list is written with the parts: readers take the parts from it
    listing = names.parts_checksum_path(tmp_path / "image.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([listing.name, *(p.name for p in written.paths)])
    sums = zip(written.part_sha256, written.paths, strict=True)
    assert listing.read_text() == "".join(f"{s}  {p.name}\n" for s, p in sums)
    assert b"".join(read_stream(tmp_path / "image.tar")) == payload
    assert archive_parts(tmp_path / "image.tar.part000") == list(written.paths)


@pytest.mark.parametrize("split_bytes", [None, 4096])
def test_write_stream_zstd_round_trips_through_read_stream(tmp_path: Path, split_bytes: int | None) -> None:
    payload = _payload(1_000_000)
    out = tmp_path / "image.tar.zst"
    written = write_stream(_chunks(payload, 100_000), out, compress="zstd", split_bytes=split_bytes)

    on_disk = b"".join(p.read_bytes() for p in written.paths)
    assert on_disk.startswith(ZSTD_MAGIC)
    assert written.size == len(on_disk) < len(payload)
    assert written.sha256 == hashlib.sha256(on_disk).hexdigest()
    # the standard decoder reads what we wrote, and so does our reader
    assert zstandard.ZstdDecompressor().stream_reader(on_disk, read_across_frames=True).read() == payload
    events: list[Event] = []
    assert b"".join(read_stream(out, chunk_bytes=50_000, on_event=events.append)) == payload
    assert events[-1].done == events[-1].total == written.size
    assert all(e.stage == "load" and e.unit == "B" for e in events)


def test_write_stream_cancel_leaves_no_file(tmp_path: Path) -> None:
    seen: list[Event] = []
    cancel = Cancel()

    def on_event(event: Event) -> None:
        seen.append(event)
        if len(seen) >= 5:
            cancel.set()

    with pytest.raises(CancelledError):
        write_stream(
            _chunks(_payload(200_000), 10_000),
            tmp_path / "image.tar",
            split_bytes=30_000,
            on_event=on_event,
            cancel=cancel,
        )
    assert len(seen) == 5  # stopped at the next chunk, with parts already on disk as .partial
    assert list(tmp_path.iterdir()) == []


def test_write_stream_failing_source_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> list[bytes]:
        yield b"x" * 1000
        raise RuntimeError("engine went away")

    with pytest.raises(RuntimeError, match="engine went away"):
        write_stream(broken(), tmp_path / "image.tar", compress="zstd")
    assert list(tmp_path.iterdir()) == []


def test_read_stream_rejects_missing_and_corrupt_archives(tmp_path: Path) -> None:
    with pytest.raises(ArtifactInvalidError, match="no archive"):
        list(read_stream(tmp_path / "nothing.tar"))
    corrupt = tmp_path / "bad.tar.zst"
    corrupt.write_bytes(ZSTD_MAGIC + os.urandom(5000))
    with pytest.raises(ArtifactInvalidError, match="not a valid zstd archive"):
        list(read_stream(corrupt))


def test_names_of_an_archive_its_parts_and_sidecars(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar.zst"
    assert names.archive_name("m.tar", compression="zstd") == "m.tar.zst"
    assert names.archive_name("m.tar.zst", compression="zstd") == "m.tar.zst"
    assert names.archive_name("m.tar", compression="none") == "m.tar"
    assert [names.is_archive_name(n) for n in ("m.tar", "m.tar.zst", "m.zip", "m.tar.gz")] == [True, True, False, False]
    assert names.part_path(archive, 7) == tmp_path / "m.tar.zst.part007"
    assert names.checksum_path(archive) == tmp_path / "m.tar.zst.sha256"
    assert names.parts_checksum_path(archive) == tmp_path / "m.tar.zst.parts.sha256"
    partial = names.partial_path(names.part_path(archive, 0), owner=f"{os.getpid()}-0badcafe")
    assert partial == tmp_path / f".m.tar.zst.part000.{os.getpid()}-0badcafe.partial"
    assert names.partial_of(partial.name) == ("m.tar.zst.part000", os.getpid())
    assert names.partial_of("m.tar.zst.part000") is None
    assert names.partial_owner() != names.partial_owner()  # two writers in one process never share a name
    assert names.archive_of(tmp_path / "m.tar.zst.part000") == archive
    assert names.archive_of(tmp_path / "m.tar.zst.part001") == tmp_path / "m.tar.zst.part001"  # not the first part
    assert names.archive_of(archive) == archive
    assert [names.is_part_name(n) for n in ("m.tar.part000", "m.tar.zst.part12", "m.tar.partxyz", "m.tar")] == [
        True,
        False,
        False,
        False,
    ]
    assert names.load_script_candidates(archive) == (tmp_path / "load.sh", tmp_path / "m.load.sh")


def _listed(archive: Path, count: int) -> None:
    """Write ``count`` parts of ``archive`` and the parts list naming them."""
    lines = []
    for index in range(count):
        part = names.part_path(archive, index)
        part.write_bytes(b"x%d" % index)
        lines.append(f"{hashlib.sha256(part.read_bytes()).hexdigest()}  {part.name}\n")
    names.parts_checksum_path(archive).write_text("".join(lines))


def test_archive_parts_come_from_the_parts_list_and_stray_parts_are_named(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    _listed(archive, 2)
    names.part_path(archive, 2).write_bytes(b"a stray next-numbered part")
    names.part_path(archive, 5).write_bytes(b"another stray")
    (tmp_path / "m.tar.part0001").write_bytes(b"not a part: four digits")
    assert archive_parts(archive) == [names.part_path(archive, 0), names.part_path(archive, 1)]
    assert names.stray_parts(archive) == [names.part_path(archive, 2), names.part_path(archive, 5)]
    assert names.numbered_parts(archive) == [names.part_path(archive, i) for i in (0, 1, 2, 5)]
    assert b"".join(read_stream(archive)) == b"x0x1"  # the stray parts are not appended
    (tmp_path / "m.tar.sha256").write_text(hashlib.sha256(b"x0x1").hexdigest() + "  m.tar\n")
    assert verify_archive(archive=archive) == hashlib.sha256(b"x0x1").hexdigest()
    archive.write_bytes(b"whole")  # a whole archive wins over parts
    assert archive_parts(tmp_path / "m.tar.part000") == [archive]
    assert names.stray_parts(archive) == []


def test_parts_without_their_list_or_a_damaged_list_are_refused_with_the_next_step(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    _listed(archive, 2)
    listing = names.parts_checksum_path(archive)
    names.part_path(archive, 1).unlink()
    with pytest.raises(ArtifactInvalidError, match=r"1 of the 2 parts of m.tar are missing: m.tar.part001.*Copy"):
        archive_parts(archive)
    _listed(archive, 2)
    listing.write_text(listing.read_text().replace("m.tar.part001", "../etc/passwd"))
    wrong = re.escape("line 2 names '../etc/passwd' where 'm.tar.part001' belongs")
    with pytest.raises(ArtifactInvalidError, match=wrong):
        archive_parts(archive)
    listing.write_text("")
    with pytest.raises(ArtifactInvalidError, match="lists no parts"):
        archive_parts(archive)
    listing.unlink()
    with pytest.raises(ArtifactInvalidError, match=r"m.tar.parts.sha256 is missing beside m.tar.part000.*Copy"):
        archive_parts(archive)


def test_an_empty_stream_gives_one_empty_file_with_the_empty_sha256(tmp_path: Path) -> None:
    written = write_stream([], tmp_path / "empty.tar")
    assert written.paths == (tmp_path / "empty.tar",) and written.size == 0
    assert written.sha256 == hashlib.sha256(b"").hexdigest() == written.part_sha256[0]


def test_unknown_compression_is_refused_before_any_file_is_made(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionsError, match="Use 'none' or 'zstd'"):
        write_stream([b"x"], tmp_path / "m.tar", compress="gzip")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_the_parts_writer_holds_at_most_its_budget_of_unpooled_bytes() -> None:
    budget = _InFlight(100)
    give_back_first = budget.take(60)
    give_back_second = budget.take(40)  # exactly the limit: still goes
    third_taken = threading.Event()

    def take_third() -> None:
        budget.take(10)()
        third_taken.set()

    threading.Thread(target=take_third, daemon=True).start()
    assert not third_taken.wait(0.2)  # 110 > 100: it waits for bytes to come back
    give_back_first()
    assert third_taken.wait(5)
    give_back_second()
    budget.take(500)()  # a chunk larger than the whole budget still goes when nothing is held


def test_write_stream_does_not_outrun_the_hashers_by_more_than_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[int] = []
    real_take = _InFlight.take

    def watched_take(self: _InFlight, count: int) -> Callable[[], None]:
        give_back = real_take(self, count)
        held.append(self._held)
        return give_back

    monkeypatch.setattr(writer, "UNPOOLED_BYTES_IN_FLIGHT", 3 * 65536)
    monkeypatch.setattr(_InFlight, "take", watched_take)
    payload = _payload(2_000_000)
    written = write_stream(_chunks(payload, 65536), tmp_path / "m.tar", split_bytes=300_000)
    assert b"".join(p.read_bytes() for p in written.paths) == payload
    assert held and max(held) <= 3 * 65536


def test_verify_archive_checks_a_split_archive_named_by_its_first_part(tmp_path: Path) -> None:
    payload = _payload(100_000)
    written = write_stream(_chunks(payload, 10_000), tmp_path / "m.tar", split_bytes=30_000)
    names.checksum_path(tmp_path / "m.tar").write_text(f"{written.sha256}  m.tar\n")
    events: list[Event] = []
    assert verify_archive(archive=tmp_path / "m.tar.part000", on_event=events.append) == written.sha256
    assert events[-1].done == events[-1].total == len(payload) and events[-1].stage == "verify"
    with names.part_path(tmp_path / "m.tar", 2).open("r+b") as part:
        part.write(b"!")  # one byte damaged in transit: the message names the part
    with pytest.raises(ArtifactInvalidError, match=r"do not match their checksums: m\.tar\.part002"):
        verify_archive(archive=tmp_path / "m.tar")
    names.checksum_path(tmp_path / "m.tar").unlink()
    with pytest.raises(ArtifactInvalidError, match=r"m\.tar\.sha256 is missing"):
        verify_archive(archive=tmp_path / "m.tar")


def test_raise_if_cancelled_raises_only_once_set() -> None:
    cancel = Cancel()
    raise_if_cancelled(None)
    raise_if_cancelled(cancel)
    cancel.set()
    with pytest.raises(CancelledError, match=r"^Stopped here\. Go on later\.$") as raised:
        raise_if_cancelled(cancel, message="Stopped here.", hint="Go on later.")
    assert raised.value.code == "cancelled"


def test_two_writers_of_one_name_never_share_a_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "m.tar"
    with writer.PartsWriter(out, split_bytes=1000) as first, writer.PartsWriter(out, split_bytes=1000) as second:
        first.write_bytes(b"1" * 1500)
        second.write_bytes(b"2" * 2500)
        temporary = sorted(p.name for p in tmp_path.iterdir())
        assert len(temporary) == 5 and all(n.startswith(".m.tar.part") and n.endswith(".partial") for n in temporary)
        written = first.finish()
        # the second one stops (an error, a cancel): it removes its own files, never the first one's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.part000", "m.tar.part001", "m.tar.parts.sha256"]
    assert b"".join(p.read_bytes() for p in written.paths) == b"1" * 1500

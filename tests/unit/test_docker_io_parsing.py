"""Pure parts of core.docker_io: build-output parsing and the archive writer and reader."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import zstandard

from core.docker_io import (
    ZSTD_MAGIC,
    BuildStep,
    archive_parts,
    dockerfile_base_images,
    parse_build_step,
    read_stream,
    write_stream,
)
from core.errors import ArtifactInvalidError, CancelledError
from core.events import Event


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Step 1/7 : FROM python:3.11-slim\n", BuildStep(1, 7, "FROM python:3.11-slim")),
        ('Step 12/12 : CMD ["serve"]', BuildStep(12, 12, 'CMD ["serve"]')),
        ("Step 3/5 : COPY model/ /model/\r\n", BuildStep(3, 5, "COPY model/ /model/")),
    ],
)
def test_parse_build_step_reads_number_total_and_instruction(line: str, expected: BuildStep) -> None:
    assert parse_build_step(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        " ---> Running in 0123456789ab",
        "Successfully built 0123456789ab",
        "Step x/5 : RUN",
        "",
        "Step 1 : RUN",
    ],
)
def test_parse_build_step_ignores_other_lines(line: str) -> None:
    assert parse_build_step(line) is None


def test_dockerfile_base_images_skips_stages_scratch_and_args() -> None:
    text = (
        "ARG BASE=python:3.11\n"
        "FROM ezrunner/transformers-cpu:1 AS builder\n"
        "RUN echo from here is not a FROM line\n"
        "from --platform=linux/amd64 vllm/vllm-openai:v0.11.0 as runtime\n"
        "FROM builder\n"
        "FROM scratch\n"
        "FROM ${BASE}\n"
    )
    assert dockerfile_base_images(text) == ["ezrunner/transformers-cpu:1", "vllm/vllm-openai:v0.11.0"]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in written.paths]
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
    with pytest.raises(CancelledError):
        write_stream(
            _chunks(_payload(200_000), 10_000),
            tmp_path / "image.tar",
            split_bytes=30_000,
            on_event=seen.append,
            cancel=lambda: len(seen) >= 5,
        )
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

"""Reproducible archives: the same inputs give the same bytes, whenever, wherever and however fast they are written.

What the fast export path writes itself is checked here without Docker: the tar headers (times, owners,
PAX records), the member order, the config's and our history entries' times, the manifest, and the zstd
frames (header flags; output independent of threads, input chunking and scheduling).
tests/integration/test_reproducible_pack.py checks whole packs through the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import threading
import time
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import pytest
import zstandard

import core.image_archive
from core.archive import compression
from core.archive.compression import zstd_compressor, zstd_threads
from core.archive.writer import PartsWriter
from core.hubs.base import ModelFile
from core.image_archive import REPRODUCIBLE_CREATED, ArchiveResult, _header, write_image_archive
from tests.unit.test_image_archive import _model, _random, _runtime, _sources

EPOCH_TEXT = "1970-01-01T00:00:00Z"
#: Far enough that any second, minute, hour or day field of a clock-derived stamp differs.
CLOCK_SHIFT = timedelta(days=3, hours=5, minutes=7, seconds=11)
#: The PAX records a header may need: a name or link past ustar's 100 bytes (or not ASCII), a size past
#: 8 GiB. Anything else (atime, ctime, mtime with a fraction) would carry the moment of writing.
ALLOWED_PAX_KEYS = {"path", "linkpath", "size"}


def _shift_clock(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """Move this process's wall clock as the writer could read it: time.time[_ns] and datetime.now."""
    seconds = by.total_seconds()
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(seconds * 1e9))

    class ShiftedDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> ShiftedDatetime:
            return super().now(tz) + by

    monkeypatch.setattr(core.image_archive, "datetime", ShiftedDatetime)


def _copy_model(source: Path, dest: Path, *, mtime: float) -> None:
    """The same files in another folder, with other times (as a second download gives them)."""
    shutil.copytree(source, dest)
    for path in [dest, *dest.rglob("*")]:
        os.utime(path, (mtime, mtime))


def _write(tmp: Path, folder: Path, files: list[ModelFile], out: Path, **kwargs: object) -> ArchiveResult:
    return write_image_archive(
        runtime=_runtime(tmp),
        model_root="/models/tiny",
        layers=_sources(folder, files),
        repo_tag="ezrunner/tiny:1",
        out=out,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("options", [{}, {"compress": "zstd"}, {"compress": "zstd", "split_bytes": 200_003}])
def test_two_writes_apart_from_two_copies_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, object]
) -> None:
    first_folder = tmp_path / "home-a" / "model"
    files = _model(first_folder)
    first = _write(tmp_path / "home-a", first_folder, files, tmp_path / "a" / "tiny.tar", **options)

    second_folder = tmp_path / "home-b" / "snapshot" / "model"
    _copy_model(first_folder, second_folder, mtime=time.time() - 86_400 * 400)
    time.sleep(1.1)  # a real second as well as the shifted clock
    _shift_clock(monkeypatch, CLOCK_SHIFT)
    second = _write(tmp_path / "home-b", second_folder, files, tmp_path / "b" / "tiny.tar", **options)

    assert [p.read_bytes() for p in first.paths] == [p.read_bytes() for p in second.paths]
    assert first.sha256 == second.sha256
    assert first.part_sha256 == second.part_sha256
    assert first.image_id == second.image_id
    assert first.model_diff_ids == second.model_diff_ids


def _layer_members(archive: bytes) -> tuple[list[tarfile.TarInfo], dict[str, list[tarfile.TarInfo]]]:
    """The archive's members, and the members of each layer tar inside it, by layer member name."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as outer:
        members = outer.getmembers()
        inner = {}
        for member in members:
            if member.name.endswith("/layer.tar"):
                body = outer.extractfile(member)
                assert body is not None
                with tarfile.open(fileobj=io.BytesIO(body.read())) as layer:
                    inner[member.name] = layer.getmembers()
    return members, inner


def test_every_header_we_write_has_fixed_times_owners_and_pax_records(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    files = _model(folder)
    deep = "very-long-folder-name-" * 6 + "/tökenizer.json"  # past ustar's 100 bytes, and not ASCII
    (folder / deep).parent.mkdir(parents=True)
    (folder / deep).write_bytes(b"{}")
    os.link(folder / "tokenizer.json", folder / "tokenizer-copy.json")  # kept as a hard link
    files += [ModelFile(path=deep, size=2), ModelFile(path="tokenizer-copy.json", size=len(b'{"version": "1.0"}'))]
    result = _write(tmp_path, folder, files, tmp_path / "out" / "tiny.tar")
    members, inner = _layer_members(result.paths[0].read_bytes())
    runtime = _runtime(tmp_path)
    runtime_member = runtime.diff_ids[0].removeprefix("sha256:") + "/layer.tar"

    ours = [m for m in members] + [m for name, layer in inner.items() if name != runtime_member for m in layer]
    assert len(ours) > 20
    for member in ours:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", ""), member.name
        assert set(member.pax_headers) <= ALLOWED_PAX_KEYS, (member.name, member.pax_headers)
    assert any("path" in m.pax_headers for m in ours)  # the long name really went through PAX
    assert any(m.islnk() for m in ours)

    # Fixed order: runtime layers bottom first, model layers in plan order, then config and manifest.
    names = [m.name for m in members]
    model_layers = [s.layer.name + "/layer.tar" for s in _sources(folder, files)]
    assert names[: 1 + len(model_layers)] == [runtime_member, *model_layers]
    assert names[-1] == "manifest.json" and names[-2] == result.image_id.removeprefix("sha256:") + ".json"
    for layer in model_layers:
        paths = [m.name for m in inner[layer]]
        assert paths == sorted(paths)  # by name: a folder right before what it holds
    # The runtime layer is the cached blob, byte for byte (its diff_id is what `docker load` checks).
    with tarfile.open(result.paths[0]) as outer:
        body = outer.extractfile(runtime_member)
        assert body is not None and body.read() == runtime.blobs[0].read_bytes()


def test_config_and_manifest_carry_no_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _shift_clock(monkeypatch, CLOCK_SHIFT)
    folder = tmp_path / "model"
    files = _model(folder)
    result = _write(tmp_path, folder, files, tmp_path / "out" / "tiny.tar")
    with tarfile.open(result.paths[0]) as outer:
        config_body = outer.extractfile(result.image_id.removeprefix("sha256:") + ".json")
        manifest_body = outer.extractfile("manifest.json")
        assert config_body is not None and manifest_body is not None
        config_bytes, manifest_bytes = config_body.read(), manifest_body.read()
    config = json.loads(config_bytes)
    assert "sha256:" + hashlib.sha256(config_bytes).hexdigest() == result.image_id
    assert config["created"] == EPOCH_TEXT == REPRODUCIBLE_CREATED.strftime("%Y-%m-%dT%H:%M:%SZ")
    runtime_history = json.loads(_runtime(tmp_path).config_bytes)["history"]
    ours = [h for h in config["history"] if h not in runtime_history]
    assert len(ours) == len(result.model_diff_ids)
    assert all(h["created"] == EPOCH_TEXT for h in ours)
    assert [h for h in config["history"] if h in runtime_history] == runtime_history  # Docker's, untouched
    # One image, its layers in order; compact JSON with keys in a fixed order, so the bytes are fixed too.
    manifest = json.loads(manifest_bytes)
    assert manifest_bytes == json.dumps(manifest, separators=(",", ":")).encode()
    assert [list(entry) for entry in manifest] == [["Config", "RepoTags", "Layers"]]
    assert manifest[0]["Layers"][1:] == [s.layer.name + "/layer.tar" for s in _sources(folder, files)]


@pytest.mark.parametrize(
    ("name", "size", "pax"),
    [
        ("models/m/config.json", 5, set()),
        ("models/m/" + "x" * 120 + ".safetensors", 5, {"path"}),
        ("models/m/tökenizer.json", 5, {"path"}),
        ("models/m/model.safetensors", 9 << 30, {"size"}),
    ],
)
def test_header_is_a_pure_function_of_its_arguments(
    monkeypatch: pytest.MonkeyPatch, name: str, size: int, pax: set[str]
) -> None:
    first = _header(name, kind=tarfile.REGTYPE, size=size, mode=0o644, mtime=0)
    _shift_clock(monkeypatch, CLOCK_SHIFT)
    assert _header(name, kind=tarfile.REGTYPE, size=size, mode=0o644, mtime=0) == first
    assert len(first) % 512 == 0
    blocks = [first[i : i + 512] for i in range(0, len(first), 512)]
    # Every ustar block, the PAX extended header's own included: mtime, uid and gid fields all zero,
    # empty owner names; Python names the PAX block "././@PaxHeader" (GNU tar puts its PID in it).
    headers = [blocks[0]] if not pax else [blocks[0], blocks[-1]]
    for block in headers:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    if pax:
        assert blocks[0][:14] == b"././@PaxHeader"
    with tarfile.open(fileobj=io.BytesIO(first + b"\0" * 1024), mode="r:") as tar:
        read = tar.next()
    assert read is not None
    assert (read.name, read.size, set(read.pax_headers)) == (name, size, pax)


# ZSTD


def _sample(size: int) -> bytes:
    """Half random (weights), half repetitive (JSON and tokenizers): both kinds of zstd block."""
    random_part = _random(7, size // 2)
    text = b'{"token": "hello", "id": 12345}, ' * (size // 2 // 33 + 1)
    return random_part + text[: size - len(random_part)]


def _compress(
    data: bytes, *, threads: int, pieces: list[int] | None = None, jitter: random.Random | None = None
) -> bytes:
    compressor = zstd_compressor(threads=threads)
    out = []
    offset = 0
    for count in pieces or [len(data)]:
        out.append(compressor.compress(data[offset : offset + count]))
        offset += count
        if jitter is not None:
            time.sleep(jitter.random() / 500)
    assert offset == len(data)
    out.append(compressor.flush())
    return b"".join(out)


def _cut(total: int, size: int) -> list[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])


def test_zstd_output_depends_only_on_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 MiB: several of the 8 MiB jobs multi-threaded zstd cuts at level 3, so the workers really split it.
    data = _sample(40 << 20)
    reference = _compress(data, threads=1)
    assert zstandard.ZstdDecompressor().decompress(reference, max_output_size=len(data)) == data
    assert _compress(data, threads=2, pieces=_cut(len(data), 1 << 20)) == reference
    assert _compress(data, threads=4, pieces=_cut(len(data), 777_777)) == reference
    # Scheduling: the feeding thread pauses at random while another thread competes for the GIL and cores.
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            hashlib.sha256(data[: 1 << 20]).digest()

    competitor = threading.Thread(target=busy, daemon=True)
    competitor.start()
    try:
        jittered = _compress(data, threads=3, pieces=_cut(len(data), 3 << 20), jitter=random.Random(1))
    finally:
        stop.set()
        competitor.join()
    assert jittered == reference
    monkeypatch.setattr(compression.os, "cpu_count", lambda: 16)
    assert _compress(data, threads=zstd_threads()) == reference


def test_zstd_frame_header_has_no_content_size_dictionary_or_checksum() -> None:
    frame = _compress(_sample(1 << 20), threads=2)
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert params.dict_id == 0
    assert params.has_checksum is False
    assert frame[:4] == compression.ZSTD_MAGIC
    assert frame[4] & 0b1110_0111 == 0  # frame header descriptor: no size field, no checksum, no dictionary id


@pytest.mark.parametrize("cores", [None, 1, 2, 64])
def test_zstd_never_runs_single_threaded(monkeypatch: pytest.MonkeyPatch, cores: int | None) -> None:
    # threads=0 is zstd's single-threaded mode, whose bytes differ from the multi-threaded ones.
    monkeypatch.setattr(compression.os, "cpu_count", lambda: cores)
    assert zstd_threads() == max(1, cores or 1)


def test_parts_writer_output_does_not_depend_on_how_it_is_fed(tmp_path: Path) -> None:
    data = _sample(12 << 20)
    results = []
    for index, piece in enumerate((len(data), 1 << 20, 65_537)):
        out = tmp_path / str(index) / "m.tar.zst"
        out.parent.mkdir()
        with PartsWriter(out, compress="zstd", split_bytes=1_000_003) as writer:
            for offset in range(0, len(data), piece):
                writer.write_bytes(data[offset : offset + piece])
            written = writer.finish()
        results.append((written.sha256, written.part_sha256, [p.read_bytes() for p in written.paths]))
    assert results[0] == results[1] == results[2]

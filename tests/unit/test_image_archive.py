"""The streaming docker-archive writer, checked by reading its output back with ``tarfile``."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from core import image_archive
from core.errors import CancelledError, ExportFailedError
from core.events import Event
from core.hubs.base import ModelFile
from core.image_archive import (
    ArchiveResult,
    ModelLayerSource,
    _header,
    exact_archive_size,
    write_image_archive,
)
from core.layer_cache import RuntimeLayers, cached_runtime_layers, prune_layer_cache, runtime_layers
from core.layers import plan_layers

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _runtime(tmp: Path) -> RuntimeLayers:
    """A one-layer "runtime image": an /etc/hello file, a config with history and a USER after the layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        body = b"hello\n"
        info = tarfile.TarInfo("etc/hello")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    blob = tmp / "runtime-layer.tar"
    blob.write_bytes(buf.getvalue())
    diff_id = "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2025-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "User": "10001:10001", "Labels": {"a": "1"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created_by": "/bin/sh -c #(nop) ADD file:x in / "},
            {"created_by": "/bin/sh -c #(nop)  USER 10001:10001", "empty_layer": True},
        ],
    }
    config_bytes = json.dumps(config).encode()
    return RuntimeLayers(
        image_id="sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        config_bytes=config_bytes,
        diff_ids=(diff_id,),
        blobs=(blob,),
        sizes=(len(buf.getvalue()),),
    )


def _model(folder: Path, *, shard_seed: dict[str, int] | None = None) -> list[ModelFile]:
    """A few files: metadata (one nested), three 300 KB shards with random bytes."""
    seeds = {
        "model-00001-of-00003.safetensors": 1,
        "model-00002-of-00003.safetensors": 2,
        "model-00003-of-00003.safetensors": 3,
        **(shard_seed or {}),
    }
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}',
        "nested/dir/tokenizer_config.json": b"{}",
        **{name: _random(seed, 300_000 + seed) for name, seed in seeds.items()},
    }
    for rel, body in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    os.chmod(folder / "config.json", 0o600)  # COPY keeps source modes; so must we
    return [ModelFile(path=rel, size=len(body)) for rel, body in files.items()]


def _random(seed: int, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


def _sources(folder: Path, files: list[ModelFile]) -> list[ModelLayerSource]:
    return [ModelLayerSource(layer=layer, folder=folder) for layer in plan_layers(files=files, cap_bytes=700_000)]


def _write(tmp: Path, folder: Path, files: list[ModelFile], **kwargs: object) -> ArchiveResult:
    args: dict[str, object] = dict(
        runtime=_runtime(tmp),
        model_root="/models/tiny",
        layers=_sources(folder, files),
        repo_tag="ezrunner/tiny:1",
        out=tmp / "out" / "tiny.tar",
        created=CREATED,
    )
    args.update(kwargs)
    return write_image_archive(**args)  # type: ignore[arg-type]


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, list[ModelFile]]:
    folder = tmp_path / "model"
    return folder, _model(folder)


def test_archive_layout_matches_what_docker_load_checks(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    runtime = _runtime(tmp_path)
    sources = _sources(folder, files)
    expected_size = exact_archive_size(
        runtime=runtime, model_root="/models/tiny", layers=sources, repo_tag="ezrunner/tiny:1"
    )
    result = write_image_archive(
        runtime=runtime,
        model_root="/models/tiny",
        layers=sources,
        repo_tag="ezrunner/tiny:1",
        out=tmp_path / "tiny.tar",
    )
    data = (tmp_path / "tiny.tar").read_bytes()
    assert len(data) == expected_size == result.tar_size == result.size
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert list(tmp_path.glob("*.partial")) == []

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert members[-1].name == "manifest.json"
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["ezrunner/tiny:1"]
        config_bytes = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        layer_digests = [
            "sha256:" + hashlib.sha256(tar.extractfile(n).read()).hexdigest()  # type: ignore[union-attr]
            for n in manifest[0]["Layers"]
        ]
    config = json.loads(config_bytes)
    assert result.image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    assert config["rootfs"]["diff_ids"] == layer_digests
    assert layer_digests[0] == runtime.diff_ids[0]
    assert tuple(layer_digests[1:]) == result.model_diff_ids
    assert len(result.model_diff_ids) == len(sources) == 3  # meta + two capped weight layers
    # History: one non-empty entry per layer, ours before the runtime's trailing USER entry.
    non_empty = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(non_empty) == len(layer_digests)
    assert config["history"][-1]["created_by"].endswith("USER 10001:10001")
    assert "COPY dir:" in config["history"][1]["created_by"]
    assert config["config"]["User"] == "10001:10001"


def test_model_layers_hold_what_copy_would(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    folder.chmod(0o750)
    (folder / "nested" / "dir").chmod(0o700)
    os.link(folder / "tokenizer.json", folder / "tokenizer-copy.json")
    files.append(ModelFile(path="tokenizer-copy.json", size=(folder / "tokenizer.json").stat().st_size))
    result = _write(tmp_path, folder, files)
    with tarfile.open(result.paths[0]) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        entries: dict[str, tarfile.TarInfo] = {}
        contents: dict[str, bytes] = {}
        for name in manifest[0]["Layers"][1:]:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(name).read())) as inner:  # type: ignore[union-attr]
                for info in inner:
                    entries[info.name] = info
                    if info.isfile():
                        contents[info.name] = inner.extractfile(info).read()  # type: ignore[union-attr]
    assert entries["models"].isdir() and entries["models"].mode == 0o755
    assert entries["models/tiny"].mode == 0o755  # as COPY makes it, whatever the source folder's mode
    assert entries["models/tiny/nested/dir"].isdir() and entries["models/tiny/nested/dir"].mode == 0o700
    assert all(info.uid == 0 and info.gid == 0 for info in entries.values())
    assert entries["models/tiny/config.json"].mode == 0o600
    # The two hard-linked names: one regular file (first in name order), one link to it, as COPY keeps them.
    first, second = "models/tiny/tokenizer-copy.json", "models/tiny/tokenizer.json"
    assert entries[second].islnk() and entries[second].linkname == first
    contents[second] = contents[first]
    for f in files:
        assert contents[f"models/tiny/{f.path}"] == (folder / f.path).read_bytes()
        assert entries[f"models/tiny/{f.path}"].mode == (folder / f.path).stat().st_mode & 0o7777


def test_unchanged_layers_keep_their_diff_ids_across_model_versions(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    files1 = _model(v1)
    files2 = _model(v2, shard_seed={"model-00003-of-00003.safetensors": 99})
    first = _write(tmp_path, v1, files1, out=tmp_path / "a.tar", created=CREATED)
    second = _write(tmp_path, v2, files2, out=tmp_path / "b.tar", created=datetime.now(UTC))
    names = [s.layer.name for s in _sources(v1, files1)]
    assert names == [s.layer.name for s in _sources(v2, files2)] == ["00-meta", "01-weights", "02-weights"]
    by_name1 = dict(zip(names, first.model_diff_ids, strict=True))
    by_name2 = dict(zip(names, second.model_diff_ids, strict=True))
    assert by_name1["00-meta"] == by_name2["00-meta"]
    assert by_name1["01-weights"] == by_name2["01-weights"]
    assert by_name1["02-weights"] != by_name2["02-weights"]  # the shard that changed


def test_split_parts_concatenate_to_the_plain_archive(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    plain = _write(tmp_path, folder, files, out=tmp_path / "plain" / "tiny.tar")
    split = _write(tmp_path, folder, files, out=tmp_path / "split" / "tiny.tar", split_bytes=300_007)
    whole = plain.paths[0].read_bytes()
    assert len(split.files) == -(-len(whole) // 300_007) > 1
    assert [p.name for p in split.paths][:2] == ["tiny.tar.part000", "tiny.tar.part001"]
    assert b"".join(p.read_bytes() for p in split.paths) == whole
    assert split.sha256 == plain.sha256 == hashlib.sha256(whole).hexdigest()
    assert split.part_sha256 == tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in split.paths)
    assert split.image_id == plain.image_id


def test_zstd_archive_decompresses_to_the_plain_archive(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    plain = _write(tmp_path, folder, files, out=tmp_path / "plain" / "tiny.tar")
    packed = _write(
        tmp_path, folder, files, out=tmp_path / "zstd" / "tiny.tar.zst", compress="zstd", split_bytes=200_000
    )
    stream = b"".join(p.read_bytes() for p in packed.paths)
    assert packed.sha256 == hashlib.sha256(stream).hexdigest()
    assert packed.tar_size == plain.tar_size
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream)) as reader:
        assert reader.read() == plain.paths[0].read_bytes()


def test_cancel_leaves_no_file(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    cancel = threading.Event()
    seen: list[Event] = []

    def on_event(event: Event) -> None:
        seen.append(event)
        if event.done > 0:
            cancel.set()

    with pytest.raises(CancelledError):
        _write(tmp_path, folder, files, on_event=on_event, cancel=cancel)
    assert seen and seen[0].total is not None
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_shrinking_during_the_pack_fails_and_leaves_no_file(
    tmp_path: Path, model: tuple[Path, list[ModelFile]]
) -> None:
    folder, files = model
    shard = folder / "model-00003-of-00003.safetensors"

    def shrink(event: Event) -> None:
        if event.done == 0 and shard.stat().st_size > 10:
            shard.write_bytes(b"short")

    with pytest.raises(ExportFailedError, match="got shorter"):
        _write(tmp_path, folder, files, on_event=shrink)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_that_differs_from_the_listing_is_refused_before_writing(
    tmp_path: Path, model: tuple[Path, list[ModelFile]]
) -> None:
    folder, files = model
    wrong = [ModelFile(path=f.path, size=f.size + 1) if f.path == "config.json" else f for f in files]
    with pytest.raises(ExportFailedError, match=r"config\.json"):
        _write(tmp_path, folder, wrong)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_exact_size_holds_for_long_and_non_ascii_names(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    long_dir = "d" * 120
    files_bodies = {
        f"{long_dir}/{'x' * 150}.json": b"{}",
        "模型/配置.json": b"[1]",
        "w.safetensors": b"\1" * 1000,
    }
    for rel, body in files_bodies.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    files = [ModelFile(path=rel, size=len(body)) for rel, body in files_bodies.items()]
    sources = _sources(folder, files)
    runtime = _runtime(tmp_path)
    size = exact_archive_size(
        runtime=runtime, model_root="/models/a-very-long-name" + "z" * 80, layers=sources, repo_tag="x/y:z"
    )
    result = write_image_archive(
        runtime=runtime,
        model_root="/models/a-very-long-name" + "z" * 80,
        layers=sources,
        repo_tag="x/y:z",
        out=tmp_path / "a.tar",
    )
    assert result.paths[0].stat().st_size == size == result.tar_size
    with tarfile.open(result.paths[0]) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        names = []
        for layer in manifest[0]["Layers"][1:]:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(layer).read())) as inner:  # type: ignore[union-attr]
                names += inner.getnames()
    assert "models/a-very-long-name" + "z" * 80 + "/模型/配置.json" in names
    assert any(n.endswith("x" * 150 + ".json") for n in names)


def test_headers_past_8_gib_use_pax_sizes() -> None:
    size = 9 << 30
    header = _header("models/m/model.safetensors", kind=tarfile.REGTYPE, size=size, mode=0o644, mtime=0)
    assert len(header) == 3 * 512  # PAX extended header (header + one record) + the ustar header
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024), mode="r:") as tar:
        info = tar.next()
        assert info is not None
        assert info.name == "models/m/model.safetensors" and info.size == size


def test_a_bare_repository_name_gets_the_latest_tag(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    result = _write(tmp_path, folder, files, repo_tag="localhost:5000/ezrunner/tiny")
    assert result.repo_tag == "localhost:5000/ezrunner/tiny:latest"


def test_the_layer_cache_answers_from_disk_and_prunes_what_no_image_uses(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    cache = tmp_path / "cache"
    for sub in ("blobs/sha256", "images"):
        (cache / sub).mkdir(parents=True)
    blob = cache / "blobs" / "sha256" / runtime.diff_ids[0].removeprefix("sha256:")
    blob.write_bytes(runtime.blobs[0].read_bytes())
    stray = cache / "blobs" / "sha256" / ("f" * 64)
    stray.write_bytes(b"old layer")
    record = {
        "config": runtime.config_bytes.decode(),
        "layers": [{"diff_id": runtime.diff_ids[0], "size": runtime.sizes[0]}],
    }
    (cache / "images" / f"{runtime.image_id.removeprefix('sha256:')}.json").write_text(json.dumps(record))

    found = runtime_layers(client=None, image_id=runtime.image_id, cache_dir=cache)  # no engine needed
    assert found.diff_ids == runtime.diff_ids and found.blobs == (blob,) and found.config == runtime.config
    assert prune_layer_cache(cache_dir=cache, keep_image_ids=[runtime.image_id]) == len(b"old layer")
    assert blob.exists() and not stray.exists()

    blob.write_bytes(b"truncated")  # a blob of the wrong size is not trusted
    assert cached_runtime_layers(image_id=runtime.image_id, cache_dir=cache) is None
    assert prune_layer_cache(cache_dir=cache, keep_image_ids=[]) == len(b"truncated")
    assert list((cache / "images").iterdir()) == []


@pytest.mark.parametrize("split", [None, 250_000])
def test_the_kernel_copy_writes_the_bytes_read_and_write_would(
    tmp_path: Path, model: tuple[Path, list[ModelFile]], monkeypatch: pytest.MonkeyPatch, split: int | None
) -> None:
    """Model files go in by copy_file_range where the kernel can (the bytes then read back for the hashes);
    where it refuses (another file system: EXDEV) the writer reads and writes instead. Both give the same
    archive, to the byte, also with chunks smaller than a file and parts that split a file."""
    folder, files = model
    monkeypatch.setattr(image_archive, "CHUNK_BYTES", 64 << 10)
    real = os.copy_file_range
    copies: list[int] = []

    def counting(*args: int) -> int:
        copies.append(args[2])
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", counting)
    (tmp_path / "kernel").mkdir()
    kernel = _write(tmp_path / "kernel", folder, files, split_bytes=split)
    assert copies and max(copies) <= 64 << 10  # model bytes went through the kernel, a chunk at a time

    def refused(*args: int) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    (tmp_path / "read").mkdir()
    read = _write(tmp_path / "read", folder, files, split_bytes=split)
    assert (kernel.sha256, kernel.image_id, kernel.tar_size) == (read.sha256, read.image_id, read.tar_size)
    assert b"".join(p.read_bytes() for p in kernel.paths) == b"".join(p.read_bytes() for p in read.paths)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in kernel.paths] == list(kernel.part_sha256)


def test_a_model_file_the_kernel_cannot_copy_midway_is_read_and_written(
    tmp_path: Path, model: tuple[Path, list[ModelFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime layers copied by the kernel, then a model file on another file system (EXDEV from its first
    chunk on): that chunk and the rest go by read + write, and the archive is the same."""
    folder, files = model
    (tmp_path / "plain").mkdir()
    plain = _write(tmp_path / "plain", folder, files)
    real = os.copy_file_range
    calls = [0]

    def second_file_elsewhere(*args: int) -> int:
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", second_file_elsewhere)
    (tmp_path / "mixed").mkdir()
    mixed = _write(tmp_path / "mixed", folder, files)
    assert calls[0] == 2  # one copy went through, the refusal switched the rest to read + write
    assert (mixed.sha256, mixed.image_id) == (plain.sha256, plain.image_id)

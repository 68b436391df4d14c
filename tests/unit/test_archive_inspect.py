"""Reading the run spec back from an archive without docker: plain, zstd and split archives from the real
writer, and the layout ``docker save`` writes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from core.archive import inspect as archive_inspect
from core.archive.inspect import archive_run_spec, read_archive_image
from core.errors import ArtifactInvalidError
from core.events import Event
from core.hardware import describe_target
from core.hubs.base import ModelFile
from core.image_archive import write_image_archive
from core.plan import plan
from core.render import render
from core.runspec import RUN_SPEC_LABEL, RunSpec
from tests.unit.test_image_archive import CREATED, _model, _runtime, _sources
from tests.unit.test_sizing import model_info


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[dict[str, str], RunSpec, Path, list[ModelFile]]:
    """The labels a real pack of an 8B model for 2 × L4 bakes in, and a tiny model folder to pack them with."""
    target = describe_target(gpu_preset="l4", gpu_count=2)
    build = render(plan=plan(model=model_info("Llama-3.1-8B-Instruct"), target=target))
    folder = tmp_path / "model"
    return dict(build.labels), build.run_spec, folder, _model(folder)


def _pack(
    tmp: Path, labels: dict[str, str], folder: Path, files: list[ModelFile], *, name: str = "tiny.tar", **kwargs: object
) -> Path:
    """What ``core.image_archive`` writes for the tiny model with ``labels``; returns the archive's path."""
    out = tmp / "out" / name
    write_image_archive(
        runtime=_runtime(tmp),
        model_root="/models/tiny",
        layers=_sources(folder, files),
        repo_tag="ezrunner/tiny:1",
        out=out,
        labels=labels,
        created=CREATED,
        **kwargs,  # type: ignore[arg-type]
    )
    return out


@pytest.mark.parametrize(
    ("compress", "split_bytes"),
    [("none", None), ("zstd", None), ("none", 200_000), ("zstd", 4_000)],
    ids=["tar", "tar.zst", "tar-parts", "tar.zst-parts"],
)
def test_the_run_spec_comes_back_from_every_archive_form(
    tmp_path: Path,
    labelled: tuple[dict[str, str], RunSpec, Path, list[ModelFile]],
    compress: str,
    split_bytes: int | None,
) -> None:
    labels, spec, folder, files = labelled
    name = "tiny.tar.zst" if compress == "zstd" else "tiny.tar"
    out = _pack(tmp_path, labels, folder, files, name=name, compress=compress, split_bytes=split_bytes)
    if split_bytes:
        assert not out.exists() and len(list(out.parent.glob(name + ".part*"))) > 2
    # The archive, or its first part, both name it.
    for path in (out, out.with_name(name + ".part000")) if split_bytes else (out,):
        image = read_archive_image(archive=path)
        assert image.repo_tags == ("ezrunner/tiny:1",)
        assert image.compressed == (compress == "zstd")
        assert image.labels[RUN_SPEC_LABEL] == labels[RUN_SPEC_LABEL]
        assert image.labels["a"] == "1"  # the runtime image's own labels stay
        assert image.run_spec == spec
        assert archive_run_spec(archive=path) == spec


def test_a_plain_tar_is_read_by_its_headers_not_its_layers(
    tmp_path: Path, labelled: tuple[dict[str, str], RunSpec, Path, list[ModelFile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    labels, spec, folder, files = labelled
    out = _pack(tmp_path, labels, folder, files)
    read = 0
    real_readinto = archive_inspect._PartsFile.readinto

    def counting(self: archive_inspect._PartsFile, buffer: object) -> int:
        nonlocal read
        count = real_readinto(self, buffer)
        read += count
        return count

    monkeypatch.setattr(archive_inspect._PartsFile, "readinto", counting)
    assert read_archive_image(archive=out).run_spec == spec
    size = out.stat().st_size
    assert size > 900_000  # three 300 kB shards
    print(f"read {read} of {size} bytes")
    assert read < 64 << 10  # tar headers, manifest.json and the config


def test_a_zstd_archive_reports_progress_as_it_is_read(
    tmp_path: Path, labelled: tuple[dict[str, str], RunSpec, Path, list[ModelFile]]
) -> None:
    labels, spec, folder, files = labelled
    out = _pack(tmp_path, labels, folder, files, name="tiny.tar.zst", compress="zstd")
    events: list[Event] = []
    assert read_archive_image(archive=out, on_event=events.append).run_spec == spec
    assert events and events[-1].total == out.stat().st_size and events[-1].done == events[-1].total


def _docker_save_layout(*, manifest_first: bool, labels: dict[str, str]) -> bytes:
    """An OCI-layout archive as Docker 25+ `docker save` writes it: the config as blobs/sha256/<hex>."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("etc/hello")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer_hex = hashlib.sha256(layer.getvalue()).hexdigest()
    config = json.dumps(
        {"config": {"Labels": labels}, "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_hex]}}
    ).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    layers = [f"blobs/sha256/{layer_hex}"]
    entry = {"Config": f"blobs/sha256/{config_hex}", "RepoTags": ["ezrunner/x:1"], "Layers": layers}
    manifest = json.dumps([entry]).encode()
    members = [(f"blobs/sha256/{layer_hex}", layer.getvalue()), (f"blobs/sha256/{config_hex}", config)]
    members = [("manifest.json", manifest), *members] if manifest_first else [*members, ("manifest.json", manifest)]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in [*members, ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.mark.parametrize("manifest_first", [False, True])
@pytest.mark.parametrize("compressed", [False, True])
def test_docker_save_layouts_are_read_too(tmp_path: Path, manifest_first: bool, compressed: bool) -> None:
    data = _docker_save_layout(manifest_first=manifest_first, labels={"io.ezrunner.engine": "vllm"})
    path = tmp_path / ("saved.tar.zst" if compressed else "saved.tar")
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compressed else data)
    image = read_archive_image(archive=path)
    assert image.repo_tags == ("ezrunner/x:1",)
    assert dict(image.labels) == {"io.ezrunner.engine": "vllm"}
    assert image.config_name.startswith("blobs/sha256/")
    assert image.run_spec is None
    with pytest.raises(ArtifactInvalidError, match="carries no run spec") as error:
        archive_run_spec(archive=path)
    assert error.value.hint and "Pack the model again" in error.value.hint


def test_damaged_archives_are_refused_with_a_next_step(tmp_path: Path) -> None:
    not_tar = tmp_path / "junk.tar"
    not_tar.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(ArtifactInvalidError, match="not a readable image archive") as error:
        read_archive_image(archive=not_tar)
    assert error.value.hint and "sha256" in error.value.hint

    no_manifest = tmp_path / "plain.tar"
    with tarfile.open(no_manifest, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ArtifactInvalidError, match=r"no manifest\.json"):
        read_archive_image(archive=no_manifest)

    bad_json = tmp_path / "bad.tar"
    with tarfile.open(bad_json, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"[{,]}"))
    with pytest.raises(ArtifactInvalidError, match=r"manifest\.json is not valid JSON"):
        read_archive_image(archive=bad_json)

    cut = tmp_path / "cut.tar.zst"
    whole = zstandard.ZstdCompressor().compress(_docker_save_layout(manifest_first=False, labels={}))
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactInvalidError):
        read_archive_image(archive=cut)

    with pytest.raises(ArtifactInvalidError, match="There is no archive"):
        read_archive_image(archive=tmp_path / "missing.tar")


def test_a_config_the_manifest_names_must_be_there(tmp_path: Path) -> None:
    manifest = json.dumps([{"Config": "abc.json", "RepoTags": ["ezrunner/x:1"], "Layers": []}]).encode()
    path = tmp_path / "lost.tar"
    with tarfile.open(path, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(ArtifactInvalidError, match=r"image config abc\.json that manifest\.json names is missing"):
        read_archive_image(archive=path)

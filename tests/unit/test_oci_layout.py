"""The one-pass writer's OCI image layout: oci-layout, index.json, a manifest and every blob under
blobs/sha256/<its digest> (model layers as hard links to the member written in the pass), plus docker's
manifest.json; the same config and layer digests as the docker-archive of the same inputs; exact size."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from core.hubs.base import ModelFile
from core.image_archive import exact_archive_size
from tests.unit.test_image_archive import CREATED, _model, _runtime, _sources, _write


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, list[ModelFile]]:
    folder = tmp_path / "model"
    return folder, _model(folder)


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.getmember("blobs/sha256/" + digest.removeprefix("sha256:"))
    data = tar.extractfile(member)  # follows a hard link to the member it names
    assert data is not None
    return data.read()


def test_oci_layout_has_the_docker_archives_digests_and_its_blobs_match_them(
    tmp_path: Path, model: tuple[Path, list[ModelFile]]
) -> None:
    folder, files = model
    docker = _write(tmp_path, folder, files, out=tmp_path / "docker" / "tiny.tar")
    oci = _write(tmp_path, folder, files, out=tmp_path / "oci" / "tiny.tar", format="oci-layout")
    assert oci.image_id == docker.image_id  # the same config bytes
    assert oci.model_diff_ids == docker.model_diff_ids
    size = exact_archive_size(runtime=_runtime(tmp_path), model_root="/models/tiny", layers=_sources(folder, files),
                              repo_tag="ezrunner/tiny:1", created=CREATED, format="oci-layout")  # fmt: skip
    assert oci.tar_size == size == oci.paths[0].stat().st_size

    with tarfile.open(oci.paths[0]) as tar:
        assert json.loads(tar.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        [entry] = index["manifests"]
        assert entry["annotations"] == {"io.containerd.image.name": "ezrunner/tiny:1",
                                        "org.opencontainers.image.ref.name": "1"}  # fmt: skip
        manifest_bytes = _blob(tar, entry["digest"])
        assert hashlib.sha256(manifest_bytes).hexdigest() == entry["digest"].removeprefix("sha256:")
        assert len(manifest_bytes) == entry["size"]
        manifest = json.loads(manifest_bytes)
        config = _blob(tar, manifest["config"]["digest"])
        assert "sha256:" + hashlib.sha256(config).hexdigest() == manifest["config"]["digest"] == docker.image_id
        digests = [layer["digest"] for layer in manifest["layers"]]
        assert digests == json.loads(config)["rootfs"]["diff_ids"]
        assert digests[-len(oci.model_diff_ids):] == list(oci.model_diff_ids)
        for layer in manifest["layers"]:
            data = _blob(tar, layer["digest"])
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"] and len(data) == layer["size"]
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        # docker load (and core.archive.inspect) read manifest.json, the last member
        assert tar.getnames()[-1] == "manifest.json"
        [docker_entry] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert docker_entry["Config"] == "blobs/sha256/" + docker.image_id.removeprefix("sha256:")
        assert docker_entry["RepoTags"] == ["ezrunner/tiny:1"]
        layer_data = [tar.extractfile(name).read() for name in docker_entry["Layers"]]  # type: ignore[union-attr]
        assert ["sha256:" + hashlib.sha256(d).hexdigest() for d in layer_data] == digests


def test_oci_layout_is_reproducible(tmp_path: Path, model: tuple[Path, list[ModelFile]]) -> None:
    folder, files = model
    first = _write(tmp_path, folder, files, out=tmp_path / "a" / "tiny.tar", format="oci-layout")
    second = _write(tmp_path, folder, files, out=tmp_path / "b" / "tiny.tar", format="oci-layout")
    assert first.sha256 == second.sha256

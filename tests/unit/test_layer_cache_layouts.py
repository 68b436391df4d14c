"""The runtime-layer cache reads both `docker save` layouts: Docker ≤ 24 (<id>/layer.tar) and Docker ≥ 25
(an OCI layout, everything under blobs/sha256/); an engine that stores compressed layers (containerd
image store) is reported as unusable so pack can fall back to the docker-build path.

The engine is stood in for by an object with the two engine-API calls the cache makes, serving a tar
built here in each layout.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import LayerCacheUnusableError
from core.layer_cache import runtime_layers


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


LAYERS = [tar_bytes({"etc/os-release": b"ID=test\n"}), tar_bytes({"usr/bin/engine": b"\x7fELF" + b"\0" * 2000})]
CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(x)}" for x in LAYERS]},
    }
).encode()
IMAGE_ID = f"sha256:{sha(CONFIG)}"


def classic_save() -> bytes:
    files = {f"{sha(layer)}/layer.tar": layer for layer in LAYERS}
    files[f"{sha(CONFIG)}.json"] = CONFIG
    files["manifest.json"] = json.dumps(
        [{"Config": f"{sha(CONFIG)}.json", "RepoTags": ["t:1"], "Layers": [f"{sha(x)}/layer.tar" for x in LAYERS]}]
    ).encode()
    return tar_bytes(files)


def oci_save(*, compress: bool = False) -> bytes:
    blobs = [gzip.compress(layer) for layer in LAYERS] if compress else LAYERS
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": f"sha256:{sha(CONFIG)}", "size": len(CONFIG)},
            "layers": [{"digest": f"sha256:{sha(b)}", "size": len(b)} for b in blobs],
        }
    ).encode()
    files = {f"blobs/sha256/{sha(b)}": b for b in blobs}
    files[f"blobs/sha256/{sha(CONFIG)}"] = CONFIG
    files[f"blobs/sha256/{sha(manifest)}"] = manifest
    files["index.json"] = json.dumps({"manifests": [{"digest": f"sha256:{sha(manifest)}"}]}).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{sha(CONFIG)}",
                "RepoTags": ["t:1"],
                "Layers": [f"blobs/sha256/{sha(b)}" for b in blobs],
            }
        ]
    ).encode()
    return tar_bytes(files)


class Engine:
    """The two engine-API calls the cache makes (inspect, then `docker save` as chunks)."""

    def __init__(self, saved: bytes) -> None:
        self.saved = saved
        self.api = self
        self.saves = 0

    def inspect_image(self, image_id: str) -> dict[str, int]:
        return {"Size": len(self.saved)}

    def get_image(self, image_id: str, chunk_size: int) -> Iterator[bytes]:
        self.saves += 1
        return iter([self.saved[i : i + 4096] for i in range(0, len(self.saved), 4096)])


@pytest.mark.parametrize("saved", [classic_save(), oci_save()], ids=["docker-24", "docker-25-oci"])
def test_both_save_layouts_fill_the_cache(saved: bytes, tmp_path: Path) -> None:
    engine = Engine(saved)
    layers = runtime_layers(client=engine, image_id=IMAGE_ID, cache_dir=tmp_path)
    assert layers.config_bytes == CONFIG
    assert layers.diff_ids == tuple(f"sha256:{sha(x)}" for x in LAYERS)
    assert [p.read_bytes() for p in layers.blobs] == LAYERS
    # the manifests and index of the OCI layout are not mistaken for layers
    assert sorted(p.name for p in (tmp_path / "blobs" / "sha256").iterdir()) == sorted(sha(x) for x in LAYERS)
    # filled once: the next pack reads the cache without asking the engine
    assert runtime_layers(client=None, image_id=IMAGE_ID, cache_dir=tmp_path).diff_ids == layers.diff_ids
    assert engine.saves == 1


def test_compressed_layers_are_reported_as_unusable(tmp_path: Path) -> None:
    with pytest.raises(LayerCacheUnusableError) as error:
        runtime_layers(client=Engine(oci_save(compress=True)), image_id=IMAGE_ID, cache_dir=tmp_path)
    assert "docker-build" in str(error.value)

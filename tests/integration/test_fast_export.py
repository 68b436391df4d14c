"""The fast export path gives the image `docker build` gives, on the real engine.

The same Dockerfile (the shape of templates/base.Dockerfile.j2) is built two ways from a small synthetic
model: classically (the engine COPYs the model layers), and fast (the engine builds the Dockerfile minus
the model COPY lines, we write the archive). Both images' file trees (via `docker export`) and configs
must match, and the fast archive must `docker load` and run.

The base image is a few MB made here from the host's own /bin/sh and libc, so the test stays fast and
needs no registry; the Dockerfile steps use only shell built-ins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from docker import DockerClient

from bench.workload import DOCKERFILE, host_rootfs
from core.hubs.base import ModelFile
from core.image_archive import ModelLayerSource, write_image_archive
from core.layer_cache import cached_runtime_layers, runtime_layers
from core.layers import plan_layers
from tests.fixtures.docker_plugin import DockerScratch
from tests.fixtures.image_compare import image_config, image_tree

pytestmark = pytest.mark.docker

MODEL_ROOT = "/models/tiny"
LAYER_CAP = 3 << 20

ENTRYPOINT = 'read -r line < {model_root}/config.json; echo "config: $line"; echo "home: $HOME port: $PORT"\n'


@pytest.fixture
def tiny_base(docker_client: DockerClient, docker_scratch: DockerScratch) -> str:
    ref = docker_scratch.image_ref("tiny-base")
    repository, tag = ref.rsplit(":", 1)
    docker_client.api.import_image_from_data(
        host_rootfs(),
        repository=repository,
        tag=tag,
        changes=[f"LABEL {k}={v}" for k, v in docker_scratch.labels.items()],
    )
    return ref


def _write_model(folder: Path, *, variant: int = 0) -> list[ModelFile]:
    """Metadata (one nested, one hard link, one 0640 file) and four 1 MB-ish random shards."""
    rng = hashlib.sha256(f"tiny-{variant}".encode()).digest()
    bodies: dict[str, bytes] = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}',
        "generation_config.json": b'{"do_sample": false}',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "nested/chat/template.jinja": b"{{ messages }}",
        "model.safetensors.index.json": b'{"weight_map": {}}',
    }
    for i in range(1, 5):
        bodies[f"model-0000{i}-of-00004.safetensors"] = (
            os.urandom(1_000_000 + i * 4096) if i != 1 else rng * 40_000
        )
    for rel, body in bodies.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    (folder / "generation_config.json").chmod(0o640)
    (folder / "nested").chmod(0o700)
    os.link(folder / "tokenizer.json", folder / "tokenizer-alias.json")
    bodies["tokenizer-alias.json"] = bodies["tokenizer.json"]
    return [ModelFile(path=rel, size=len(body)) for rel, body in bodies.items()]


def _dockerfile(base: str, layer_names: list[str] | None) -> str:
    copies = "".join(f"COPY layers/{name}/ {MODEL_ROOT}/\n" for name in layer_names or [])
    return DOCKERFILE.format(base=base, model_copies=copies, model_root=MODEL_ROOT)


def _context(folder: Path, dockerfile: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(dockerfile)
    (folder / "entrypoint.sh").write_text(ENTRYPOINT.format(model_root=MODEL_ROOT))
    return folder


def _build(client: DockerClient, context: Path, tag: str, labels: dict[str, str]) -> str:
    image, _ = client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, labels=labels)
    return str(image.id)


def test_fast_archive_is_the_image_docker_build_makes(
    tmp_path: Path, docker_client: DockerClient, docker_scratch: DockerScratch, tiny_base: str
) -> None:
    model_dir = tmp_path / "model"
    files = _write_model(model_dir)
    layers = plan_layers(files=files, cap_bytes=LAYER_CAP)
    assert [layer.name for layer in layers] == ["00-meta", "01-weights", "02-weights"]
    labels = docker_scratch.labels

    # Classic: the whole Dockerfile, the model hard-linked into the context (as core.pack stages it).
    classic_context = _context(tmp_path / "classic", _dockerfile(tiny_base, [layer.name for layer in layers]))
    for layer in layers:
        for f in layer.files:
            target = classic_context / "layers" / layer.name / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(model_dir / f.path, target)
    for layer in layers:  # COPY makes the model folder 0755 whatever its source folder's mode is
        (classic_context / "layers" / layer.name).chmod(0o750)
    (classic_context / "layers" / "00-meta" / "nested").chmod(0o700)
    classic = _build(docker_client, classic_context, docker_scratch.image_ref("classic"), labels)

    # Fast: the runtime image from the engine, the rest written by us.
    runtime_ref = docker_scratch.image_ref("runtime")
    runtime_id = _build(
        docker_client, _context(tmp_path / "runtime", _dockerfile(tiny_base, None)), runtime_ref, labels
    )
    cache = tmp_path / "layer-cache"
    runtime = runtime_layers(client=docker_client, image_id=runtime_id, cache_dir=cache)
    fast_ref = docker_scratch.image_ref("fast")
    result = write_image_archive(
        runtime=runtime,
        model_root=MODEL_ROOT,
        layers=[ModelLayerSource(layer=layer, folder=model_dir) for layer in layers],
        repo_tag=fast_ref,
        out=tmp_path / "out" / "tiny.tar",
    )
    with open(result.paths[0], "rb") as archive:
        answer = list(docker_client.api.load_image(archive))
    assert any(f"Loaded image: {fast_ref}" in str(line.get("stream", "")) for line in answer), answer
    fast = docker_client.api.inspect_image(fast_ref)
    assert fast["Id"] == result.image_id

    assert image_tree(docker_client, fast_ref) == image_tree(docker_client, classic)
    assert image_config(docker_client, fast_ref) == image_config(docker_client, classic)
    # `docker history` pairs the non-empty history entries with the layers: each of ours got a layer.
    copies = [h for h in docker_client.api.history(fast_ref) if "COPY dir:" in h["CreatedBy"]]
    assert len(copies) == len(layers) and all(h["Size"] > 0 for h in copies)
    assert len(fast["RootFS"]["Layers"]) == len(runtime.diff_ids) + len(layers)

    output = docker_client.containers.run(fast_ref, network_mode="none", remove=True)
    config_line = (model_dir / "config.json").read_text()
    assert output.decode() == f"config: {config_line}\nhome: /home/ezrunner port: 8000\n"

    # The layer cache answers later packs without asking the engine (no client, so no docker save).
    again = runtime_layers(client=None, image_id=runtime_id, cache_dir=cache)
    assert again == runtime == cached_runtime_layers(image_id=runtime_id, cache_dir=cache)
    assert [hashlib.sha256(blob.read_bytes()).hexdigest() for blob in runtime.blobs] == [
        d.removeprefix("sha256:") for d in runtime.diff_ids
    ]


def test_split_archive_loads_after_concatenation(
    tmp_path: Path, docker_client: DockerClient, docker_scratch: DockerScratch, tiny_base: str
) -> None:
    model_dir = tmp_path / "model"
    layers = plan_layers(files=_write_model(model_dir), cap_bytes=LAYER_CAP)
    runtime_id = _build(
        docker_client,
        _context(tmp_path / "runtime", _dockerfile(tiny_base, None)),
        docker_scratch.image_ref("runtime"),
        docker_scratch.labels,
    )
    runtime = runtime_layers(client=docker_client, image_id=runtime_id, cache_dir=tmp_path / "cache")
    fast_ref = docker_scratch.image_ref("split")
    result = write_image_archive(
        runtime=runtime,
        model_root=MODEL_ROOT,
        repo_tag=fast_ref,
        out=tmp_path / "out" / "tiny.tar",
        layers=[ModelLayerSource(layer=layer, folder=model_dir) for layer in layers],
        split_bytes=1 << 20,
    )
    assert len(result.paths) > 3
    joined = tmp_path / "joined.tar"
    with open(joined, "wb") as out:
        for part in result.paths:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    with open(joined, "rb") as archive:
        list(docker_client.api.load_image(archive))
    assert docker_client.api.inspect_image(fast_ref)["Id"] == result.image_id
    output = docker_client.containers.run(fast_ref, network_mode="none", remove=True)
    assert output.startswith(b"config: ")

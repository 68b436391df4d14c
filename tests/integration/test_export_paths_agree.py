"""The product's two export paths, on the real template and engine, make the same image.

The docker-build path (docker build with the weights, then docker save) is the reference; the fast
path (engine layers built by Docker, weights streamed into the archive by us) must give a container
the same files, modes, owners and contents, and the same config (env, user, entrypoint, labels,
healthcheck, ports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from docker import DockerClient

from core import hubs
from core.docker import api as docker_api
from core.hardware import describe_target
from core.pack import pack
from core.plan import Options, plan
from core.refs import parse_ref
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED
from tests.fixtures.image_compare import image_config, image_tree

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_fast_and_docker_build_paths_make_the_same_image(
    fake_hub: FakeHub, offline_base_image: str, tmp_path: Path, docker_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    model = hubs.inspect(ref=parse_ref(f"hf:{HF_SHARDED}"))
    the_plan = plan(
        model=model,
        target=describe_target(cpu_only=True, ram_gib=8),
        options=Options(base_image=offline_base_image),
    )
    reference = pack(plan=the_plan, output=tmp_path / "reference.tar", export_path="docker-build")
    tag = reference.image_tag
    try:
        assert reference.export_path == "docker-build"
        expected_tree = image_tree(docker_client, tag)
        expected_config = image_config(docker_client, tag)
        docker_api.remove_image(ref=tag, force=True, client=docker_client)

        fast = pack(plan=the_plan, output=tmp_path / "fast.tar", export_path="auto")
        assert fast.export_path == "fast"
        assert not docker_api.image_exists(ref=tag, client=docker_client)  # the weights never went to Docker
        assert tag in docker_api.load_image(tar=fast.archive, client=docker_client)
        assert docker_client.images.get(tag).id == fast.image_id

        tree = image_tree(docker_client, tag)
        assert sorted(tree) == sorted(expected_tree)
        different = {path: (tree[path], expected_tree[path]) for path in tree if tree[path] != expected_tree[path]}
        assert different == {}
        model_files = {p for p in tree if p.startswith("models/")}
        assert {f"models/tiny-llama-sharded/{f.path}" for f in model.files} <= model_files
        assert image_config(docker_client, tag) == expected_config
    finally:
        for ref in (tag, f"{tag}-runtime"):
            docker_api.remove_image(ref=ref, force=True, client=docker_client)

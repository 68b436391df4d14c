"""`pack --format oci-layout` of the tiny model (fast path, offline base image): skopeo imports the OCI
archive, into a directory and into a loopback registry, with the config digest of the docker-archive pack
of the same inputs and the same layer digests; `docker load` takes the OCI tar too (so load.sh does)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core import hubs
from core.docker import api as docker_api
from core.hardware import describe_target
from core.pack import pack
from core.plan import Options, plan
from core.refs import parse_ref
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED
from tests.fixtures.registry import Registry, registry, registry_factory

pytestmark = [pytest.mark.docker, pytest.mark.slow]
__all__ = ["registry", "registry_factory"]  # the fixtures, imported so pytest finds them here

SKOPEO = shutil.which("skopeo") or ""
assert SKOPEO, "skopeo is needed by this test: apt-get install skopeo (scripts/test-all installs it)"


def _docker_archive_config(archive: Path) -> dict[str, object]:
    with tarfile.open(archive) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        parsed: dict[str, object] = json.loads(tar.extractfile(entry["Config"]).read())  # type: ignore[union-attr]
    return parsed


def test_skopeo_imports_the_oci_layout_with_the_docker_archives_digests(
    fake_hub: FakeHub, offline_base_image: str, tmp_path: Path, docker_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch, registry: Registry,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    model = hubs.inspect(ref=parse_ref(f"hf:{HF_SHARDED}"))
    the_plan = plan(
        model=model, target=describe_target(cpu_only=True, ram_gib=8), options=Options(base_image=offline_base_image)
    )
    docker = pack(plan=the_plan, output=tmp_path / "docker" / "m.tar", export_path="fast")
    oci = pack(plan=the_plan, output=tmp_path / "oci" / "m.tar", export_path="fast", archive_format="oci-layout")
    try:
        assert oci.format == "oci-layout" and oci.image_id == docker.image_id
        diff_ids = _docker_archive_config(docker.archive)["rootfs"]["diff_ids"]  # type: ignore[index]

        # into a directory (skopeo's dir: keeps layers as they are; oci: and registries compress them): the
        # manifest names the same config and the same layers, and each blob has its digest
        copied = tmp_path / "copied"
        subprocess.run([SKOPEO, "copy", f"oci-archive:{oci.archive}", f"dir:{copied}"], check=True,
                       capture_output=True)  # fmt: skip
        manifest = json.loads((copied / "manifest.json").read_text())
        assert manifest["config"]["digest"] == docker.image_id
        assert [layer["digest"] for layer in manifest["layers"]] == diff_ids
        for digest in [manifest["config"]["digest"], *diff_ids]:
            blob = (copied / digest.removeprefix("sha256:")).read_bytes()
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == digest

        # into a loopback registry: the image there has the docker-archive pack's config digest
        destination = f"docker://{registry.host}/tiny/m:1"
        subprocess.run([SKOPEO, "copy", "--dest-tls-verify=false", f"oci-archive:{oci.archive}", destination],
                       check=True, capture_output=True)  # fmt: skip
        answer = requests.get(
            f"{registry.url}/v2/tiny/m/manifests/1", timeout=10,
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                               "application/vnd.docker.distribution.manifest.v2+json"},
        )  # fmt: skip
        answer.raise_for_status()
        assert answer.json()["config"]["digest"] == docker.image_id
        config = requests.get(f"{registry.url}/v2/tiny/m/blobs/{docker.image_id}", timeout=10)
        assert config.json()["rootfs"]["diff_ids"] == diff_ids

        # docker load takes the OCI tar as well (its manifest.json), with the same image id
        docker_api.remove_image(ref=docker.image_tag, force=True, client=docker_client)
        assert docker.image_tag in docker_api.load_image(tar=oci.archive, client=docker_client)
        assert docker_client.images.get(docker.image_tag).id == docker.image_id
    finally:
        for ref in (docker.image_tag, f"{docker.image_tag}-runtime"):
            docker_api.remove_image(ref=ref, force=True, client=docker_client)

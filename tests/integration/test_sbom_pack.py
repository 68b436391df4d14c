"""A real pack (tiny model, transformers CPU engine, offline base image, fast path) writes a CycloneDX SBOM
beside the archive and into the image: it validates against the CycloneDX 1.6 schema with
cyclonedx-python-lib's validator, lists every model file with the sha256 and size that are really in the
tar, and lists the engine image's Python packages (read from its layers, never by running it). The same
pack signed with --sign verifies with `ezrunner verify`; `ezrunner inspect ARCHIVE` summarises it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from core import hubs, sbom, signing
from core.archive import names
from core.docker import api as docker_api
from core.engines.versions import TRANSFORMERS_VERSION
from core.hardware import describe_target
from core.pack import pack
from core.plan import Options, plan
from core.refs import parse_ref
from core.render import render
from ezrunner_ui.cli import main
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _files_in_tar(archive: Path, *, under: str) -> dict[str, tuple[int, str]]:
    """Every regular file below ``under`` in the image's layers: size and sha256, as the tar holds them."""
    found: dict[str, tuple[int, str]] = {}
    with tarfile.open(archive) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for layer_name in manifest[0]["Layers"]:
            layer = outer.extractfile(layer_name)
            assert layer is not None
            with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
                for member in inner:
                    if member.isfile() and member.name.startswith(under):
                        data = inner.extractfile(member).read()  # type: ignore[union-attr]
                        found[member.name.removeprefix(under)] = (len(data), hashlib.sha256(data).hexdigest())
    return found


def _model_files(document: dict[str, Any]) -> dict[str, tuple[int, str]]:
    model = next(c for c in document["components"] if c["type"] == "machine-learning-model")
    listed = {}
    for entry in model["components"]:
        size = next(int(p["value"]) for p in entry["properties"] if p["name"] == "ezrunner:size")
        sha256 = next(h["content"] for h in entry["hashes"] if h["alg"] == "SHA-256")
        listed[entry["name"]] = (size, sha256)
    return listed


def test_pack_writes_a_valid_sbom_of_what_is_in_the_tar_and_signs_it(
    fake_hub: FakeHub, offline_base_image: str, tmp_path: Path, docker_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    key = tmp_path / "packer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packer", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"packer@example.org {kind} {blob}\n")

    model = hubs.inspect(ref=parse_ref(f"hf:{HF_SHARDED}"))
    the_plan = plan(
        model=model, target=describe_target(cpu_only=True, ram_gib=8), options=Options(base_image=offline_base_image)
    )
    artifact = pack(plan=the_plan, output=tmp_path / "out" / "m.tar", export_path="fast", sign_key=key)
    try:
        assert artifact.export_path == "fast"
        assert artifact.sbom == names.sbom_path(artifact.archive)
        beside = artifact.sbom.read_bytes()
        assert sbom.validation_errors(beside) is None
        document = json.loads(beside)
        assert document["specVersion"] == "1.6" and document["serialNumber"].startswith("urn:uuid:")
        assert "timestamp" not in document["metadata"]

        # every model file, with the bytes really in the tar
        in_tar = _files_in_tar(artifact.archive, under=render(plan=the_plan).model_root.strip("/") + "/")
        assert set(in_tar) == {f.path for f in model.files}
        assert _model_files(document) == in_tar

        # the same SBOM inside the image, where plan.json and run-spec.json are
        etc = _files_in_tar(artifact.archive, under="etc/ezrunner/")
        assert {"plan.json", "run-spec.json", "sbom.cdx.json"} <= set(etc)
        assert etc["sbom.cdx.json"] == (len(beside), hashlib.sha256(beside).hexdigest())

        # the engine image's Python and OS packages, read from its layers
        purls = {c.get("purl", "") for c in document["components"]}
        assert f"pkg:pypi/transformers@{TRANSFORMERS_VERSION}" in purls
        assert any(p.startswith("pkg:pypi/torch@") for p in purls)
        counted = sbom.counts(document)
        assert counted.os_packages > 50 and counted.python_packages > 20
        assert counted.model_files == len(model.files) and counted.model_bytes == model.total_bytes

        # the archive still loads, with the image id the pack reported
        assert artifact.image_tag in docker_api.load_image(tar=artifact.archive, client=docker_client)
        assert docker_client.images.get(artifact.image_tag).id == artifact.image_id

        # signed: it verifies, by the identity allowed_signers gives the key
        assert artifact.signature == names.signature_path(artifact.archive)
        verified = signing.verify(archive=artifact.archive, allowed_signers=allowed)
        assert verified.signers == ("packer@example.org",) and verified.sha256 == artifact.sha256

        # ezrunner inspect ARCHIVE: model, engine, plan, SBOM counts
        assert main(["inspect", str(artifact.archive), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["model"]["repo_id"] == HF_SHARDED and summary["engine"] == the_plan.engine
        assert summary["sbom"]["python_packages"] == counted.python_packages
        assert summary["sbom"]["model_files"] == len(model.files)
        assert main(["inspect", str(artifact.archive)]) == 0
        text = capsys.readouterr().out
        assert HF_SHARDED in text and "SBOM" in text
    finally:
        for ref in (artifact.image_tag, f"{artifact.image_tag}-runtime"):
            docker_api.remove_image(ref=ref, force=True, client=docker_client)

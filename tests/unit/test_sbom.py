"""core.sbom: packages read from layer tars as overlayfs stacks them, model files with their sha256, and a
CycloneDX document that validates and is the same bytes for the same inputs (no clock, no random ids)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from core.hubs.base import ModelFile
from core.sbom import (
    ImagePackage,
    ModelFileEntry,
    SbomInputs,
    build_sbom,
    counts,
    image_packages,
    model_file_entries,
    validation_errors,
)

DPKG_STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library
 a continuation line: Package: not-a-package

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
"""


def _metadata(name: str, version: str, license_text: str = "") -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + (
        f"License: {license_text}\n" if license_text else ""
    ) + "\nThe long description.\n"


def _layer(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_packages_come_from_the_layers_as_overlayfs_stacks_them(tmp_path: Path) -> None:
    site = "usr/local/lib/python3.11/site-packages"
    bottom = _layer(tmp_path / "0.tar", {
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n',
        "var/lib/dpkg/status": "Package: old\nStatus: install ok installed\nVersion: 0\n",
        f"{site}/pip-24.0.dist-info/METADATA": _metadata("pip", "24.0", "MIT"),
        f"{site}/six-1.16.0.dist-info/METADATA": _metadata("six", "1.16.0"),
        f"{site}/six-1.16.0.dist-info/RECORD": "",
    })  # fmt: skip
    top = _layer(tmp_path / "1.tar", {
        "var/lib/dpkg/status": DPKG_STATUS,  # replaces the lower layer's
        f"{site}/.wh.six-1.16.0.dist-info": "",  # pip uninstall six
        f"{site}/torch-2.13.0.dist-info/METADATA": _metadata("torch", "2.13.0", "BSD-3-Clause"),
        f"{site}/big-1.0.dist-info/METADATA": _metadata("big", "1.0", "Permission is hereby granted\n" * 20),
    })  # fmt: skip
    packages, distro = image_packages(layer_tars=[bottom, top])
    assert distro == "debian"
    assert packages == (
        ImagePackage(kind="deb", name="libc6", version="2.36-9+deb12u10", arch="amd64"),
        ImagePackage(kind="deb", name="zlib1g", version="1:1.2.13.dfsg-1", arch="amd64"),
        ImagePackage(kind="pypi", name="big", version="1.0", license="Permission is hereby granted"),
        ImagePackage(kind="pypi", name="pip", version="24.0", license="MIT"),
        ImagePackage(kind="pypi", name="torch", version="2.13.0", license="BSD-3-Clause"),
    )


def test_model_files_take_the_hubs_sha256_and_hash_the_others(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"a": 1}')
    files = (ModelFile(path="model.safetensors", size=5, sha256="AB" * 32), ModelFile(path="config.json", size=8))
    assert model_file_entries(files=files, folder=tmp_path) == (
        ModelFileEntry(path="config.json", size=8, sha256=hashlib.sha256(b'{"a": 1}').hexdigest()),
        ModelFileEntry(path="model.safetensors", size=5, sha256="ab" * 32),
    )


def _inputs(**changes: object) -> SbomInputs:
    values: dict[str, object] = dict(
        image_tag="ezrunner/qwen2.5-0.5b:transformers-abc", base_image="python:3.11-slim-bookworm",
        engine="transformers", hub="hf", repo_id="Qwen/Qwen2.5-0.5B", revision="main", commit="a" * 40,
        license="apache-2.0",
        model_files=(ModelFileEntry(path="config.json", size=8, sha256="1" * 64),
                     ModelFileEntry(path="model.safetensors", size=1000, sha256="2" * 64)),
        packages=(ImagePackage(kind="deb", name="libc6", version="2.36", arch="amd64"),
                  ImagePackage(kind="pypi", name="torch", version="2.13.0", license="BSD-3-Clause"),
                  ImagePackage(kind="pypi", name="odd", version="1", license="Some Custom Licence")),
        distro="debian", plan={"engine": "transformers", "max_model_len": 4096}, ezrunner_version="0.1.0",
    )  # fmt: skip
    values.update(changes)
    return SbomInputs(**values)  # type: ignore[arg-type]


def test_the_document_validates_and_says_what_is_inside() -> None:
    document = build_sbom(_inputs())
    assert validation_errors(document) is None
    parsed = json.loads(document)
    assert parsed["bomFormat"] == "CycloneDX" and parsed["specVersion"] == "1.6"
    assert "timestamp" not in parsed["metadata"]
    model = next(c for c in parsed["components"] if c["type"] == "machine-learning-model")
    assert model["purl"] == f"pkg:huggingface/Qwen/Qwen2.5-0.5B@{'a' * 40}"
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    assert {p["name"]: p["value"] for p in model["properties"]} == {
        "ezrunner:hub": "hf", "ezrunner:repo": "Qwen/Qwen2.5-0.5B", "ezrunner:revision": "main",
        "ezrunner:commit": "a" * 40,
    }  # fmt: skip
    purls = {c.get("purl") for c in parsed["components"]}
    assert {"pkg:deb/debian/libc6@2.36?arch=amd64", "pkg:pypi/torch@2.13.0"} <= purls
    plan = next(p for p in parsed["metadata"]["properties"] if p["name"] == "ezrunner:plan")
    assert json.loads(plan["value"]) == {"engine": "transformers", "max_model_len": 4096}
    assert counts(parsed).__dict__ == {
        "os_packages": 1, "python_packages": 2, "model_files": 2, "model_bytes": 1008, "license": "Apache-2.0"
    }  # fmt: skip


def test_same_inputs_same_bytes_and_the_serial_number_follows_the_content() -> None:
    first, again = build_sbom(_inputs()), build_sbom(_inputs())
    assert first == again
    other = build_sbom(_inputs(model_files=(ModelFileEntry(path="config.json", size=8, sha256="3" * 64),)))
    serial = json.loads(first)["serialNumber"]
    assert serial.startswith("urn:uuid:") and serial != json.loads(other)["serialNumber"]
    assert validation_errors(other) is None


def test_a_document_that_breaks_the_schema_is_caught() -> None:
    parsed = json.loads(build_sbom(_inputs()))
    parsed["components"][0]["type"] = "spaceship"
    assert validation_errors(json.dumps(parsed).encode()) is not None


def test_a_local_model_without_a_license_validates() -> None:
    document = build_sbom(_inputs(hub="local", repo_id="my-model", license=None, packages=()))
    assert validation_errors(document) is None
    model = next(c for c in json.loads(document)["components"] if c["type"] == "machine-learning-model")
    assert "purl" not in model and "licenses" not in model

"""`ezrunner inspect ARCHIVE`: the model, engine, plan and SBOM counts of an archive, read from its image
config and the SBOM beside it (docker-archive and OCI layout alike), never by loading it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.archive import names
from core.archive.inspect import summarize_archive
from core.image_archive import ArchiveFormat
from core.sbom import ImagePackage, ModelFileEntry, build_sbom
from ezrunner_ui.cli import main
from ezrunner_ui.cli.inspect import is_archive_path
from tests.unit.test_image_archive import _model, _write
from tests.unit.test_sbom import _inputs

LABELS = {
    "io.ezrunner.model": "tiny-org/tiny", "io.ezrunner.model.source": "hf", "io.ezrunner.model.commit": "c" * 40,
    "io.ezrunner.engine": "transformers",
    "io.ezrunner.plan": json.dumps({"target": "CPU only", "tensor_parallel_size": 1, "max_model_len": 2048,
                                    "dtype": "bfloat16"}),
}  # fmt: skip


@pytest.mark.parametrize("archive_format", ["docker-archive", "oci-layout"])
def test_inspect_an_archive_prints_model_engine_plan_and_sbom_counts(
    tmp_path: Path, archive_format: ArchiveFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    result = _write(tmp_path, folder, _model(folder), labels=LABELS, format=archive_format)
    archive = result.paths[0]
    document = build_sbom(_inputs(
        model_files=(ModelFileEntry(path="config.json", size=8, sha256="1" * 64),),
        packages=(ImagePackage(kind="deb", name="libc6", version="2.36"),
                  ImagePackage(kind="pypi", name="torch", version="2.13.0")),
    ))  # fmt: skip
    names.sbom_path(archive).write_bytes(document)
    summary = summarize_archive(archive=archive)
    assert (summary.model, summary.engine, summary.commit) == ("tiny-org/tiny", "transformers", "c" * 40)
    assert summary.plan["max_model_len"] == 2048 and summary.repo_tags == ("ezrunner/tiny:1",)
    assert summary.sbom is not None and (summary.sbom.os_packages, summary.sbom.python_packages) == (1, 1)
    assert not summary.signed

    assert main(["inspect", str(archive)]) == 0
    text = capsys.readouterr().out
    assert "tiny-org/tiny (hf, commit " in text and "engine: transformers" in text
    assert "context 2048" in text and "1 OS packages, 1 Python packages, 1 model files" in text
    assert "signature: none" in text
    names.sbom_path(archive).unlink()
    assert main(["inspect", str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sbom"] is None


def test_archive_paths_are_told_from_model_references() -> None:
    assert is_archive_path("out/m.tar") and is_archive_path("m.tar.zst") and is_archive_path("m.tar.part000")
    assert not is_archive_path("Qwen/Qwen2.5-0.5B") and not is_archive_path("./my-model")


def test_inspect_a_missing_archive_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nothing.tar")]) == 2
    assert "There is no archive at" in capsys.readouterr().err

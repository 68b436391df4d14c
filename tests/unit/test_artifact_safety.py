"""Review findings turned into tests: tokens stay with their hub, load.sh and archives are never taken
for another pack's, bad names fail before any work, and damaged sidecars give clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.archive.names import load_script_candidates
from core.archive.reader import verify_archive
from core.errors import ArtifactInvalidError, InvalidOptionsError, InvalidReferenceError
from core.history import History
from core.hubs import _token_for
from core.pack import output_paths, remove_stale_pieces
from core.render import find_load_script, render
from tests.unit.test_render import qwen05b_on_cpu


def test_a_hugging_face_token_never_goes_to_modelscope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    assert _token_for("ms", "hf_secret", explicit=True) is None
    assert _token_for("hf", "hf_secret", explicit=True) == "hf_secret"
    assert _token_for("hf", "ms-secret", explicit=True) is None
    assert _token_for("ms", "ms-secret", explicit=True) == "ms-secret"
    assert _token_for("local", "hf_secret", explicit=True) is None
    # with both set, ModelScope gets its own token, not the Hugging Face one
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-own")
    assert _token_for("ms", "hf_secret", explicit=True) == "ms-own"


def write_script(path: Path, archive_name: str) -> None:
    path.write_text(f"#!/usr/bin/env bash\nARCHIVE={archive_name}\n")


def test_load_script_ownership_is_by_its_archive_line_not_a_substring(tmp_path: Path) -> None:
    zst = tmp_path / "model.tar.zst"
    write_script(tmp_path / "load.sh", "model.tar.zst")  # "model.tar" is a substring of it
    assert find_load_script(zst) == tmp_path / "load.sh"
    assert find_load_script(tmp_path / "model.tar") is None
    assert load_script_candidates(tmp_path / "model.tar")[1] == tmp_path / "model.load.sh"


def test_output_names_load_sh_cannot_use_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionsError, match=r"load\.sh cannot use"):
        output_paths(output=tmp_path / "My Model.tar", compression="none")
    with pytest.raises(InvalidOptionsError, match=r"must end in \.tar"):
        output_paths(output=tmp_path / "model.zip", compression="none")
    assert output_paths(output=tmp_path / "m.tar", compression="zstd").name == "m.tar.zst"


def test_a_trailing_newline_cannot_slip_through_the_name_checks() -> None:
    p = qwen05b_on_cpu()
    evil = p.model.__class__(**{**p.model.__dict__, "repo_id": "org/name\nRUN curl evil"})
    with pytest.raises(InvalidReferenceError):
        render(plan=p.__class__(**{**p.__dict__, "model": evil}))
    with pytest.raises(InvalidOptionsError):
        render(plan=p.__class__(**{**p.__dict__, "base_image": "python:3.11-slim\n"}))


def test_stale_pieces_of_an_earlier_pack_are_removed(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    old = [archive, *(tmp_path / f"m.tar.part{i:03d}" for i in range(3)), tmp_path / "m.tar.parts.sha256"]
    for path in old:
        path.write_bytes(b"old")
    new = [tmp_path / "m.tar.part000", tmp_path / "m.tar.part001"]
    remove_stale_pieces(archive=archive, keep=new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.part000", "m.tar.part001", "m.tar.parts.sha256"]
    remove_stale_pieces(archive=archive, keep=[archive])  # and the other way round
    assert list(tmp_path.iterdir()) == []


def record(history: History, archive: Path) -> str:
    record_id = history.start(
        model_id="org/m", source="hf", revision="main", model_commit="c" * 40, target={}, plan={},
        dockerfile="FROM x", image_tag="ezrunner/m:c",
    )
    archive.write_bytes(b"tar")
    history.finish(record_id, outcome="succeeded", archive=archive, parts=(archive,), size=3, sha256="0" * 64)
    return record_id


def test_a_newer_pack_to_the_same_path_owns_the_files(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite")
    archive = tmp_path / "m.tar"
    older = record(history, archive)
    newer = record(history, archive)
    assert history.get(older).archive is None  # its files were replaced by the newer pack
    assert history.delete(older, files=True) == []
    assert archive.is_file() and history.get(newer).archive == str(archive)
    assert history.delete(newer, files=True) == [archive]


def test_an_empty_or_garbled_checksum_file_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar"
    archive.write_bytes(b"data")
    for text in ("", "not-a-checksum  m.tar\n"):
        (tmp_path / "m.tar.sha256").write_text(text)
        with pytest.raises(ArtifactInvalidError, match="does not hold a sha256"):
            verify_archive(archive=archive)
    (tmp_path / "m.tar.sha256").write_text(hashlib.sha256(b"data").hexdigest() + "  m.tar\n")
    assert verify_archive(archive=archive) == hashlib.sha256(b"data").hexdigest()

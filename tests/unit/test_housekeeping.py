"""core.housekeeping: the packs in the history as they are on disk, what a clean deletes (and never), free space."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import EzRunnerError
from core.history import History
from core.housekeeping import (
    CLEAN_KINDS,
    CleanKind,
    clean_candidates,
    disk_probe,
    free_bytes,
    list_packs,
    pack_entry_to_dict,
    remove,
)

SHM = Path("/dev/shm")


def _record(history: History, *, archive: Path | None, parts: tuple[Path, ...] = (), outcome: str = "succeeded",
            engine: str = "transformers") -> str:  # fmt: skip
    record_id = history.start(
        model_id="tiny-org/tiny-llama", source="hf", revision="main", model_commit="c" * 40, target={},
        plan={"engine": engine}, dockerfile="FROM x\n", image_tag="ezrunner/tiny:1",
    )  # fmt: skip
    if outcome != "running":
        files = parts or ((archive,) if archive else ())
        error = None if outcome == "succeeded" else "It broke.\nmore"
        history.finish(record_id, outcome=outcome, archive=archive, parts=files, size=5, sha256="a" * 64, error=error)
    return record_id


def _write(path: Path, size: int = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# FREE SPACE OF ODD PATHS


def test_a_folder_not_made_yet_is_measured_on_its_nearest_existing_ancestor(tmp_path: Path) -> None:
    assert disk_probe(path=tmp_path / "not" / "made" / "yet" / "m.tar") == tmp_path.resolve()


def test_a_relative_path_is_taken_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    assert disk_probe(path=Path("out/new/m.tar")) == (tmp_path / "out").resolve()
    assert disk_probe(path=Path("m.tar")) == tmp_path.resolve()


def test_a_symlinked_output_folder_is_measured_where_it_points(tmp_path: Path) -> None:
    if not SHM.is_dir():
        pytest.fail("this test needs /dev/shm (a tmpfs on Linux), another filesystem than the temp folder")
    target = SHM / f"ezrunner-test-{os.getpid()}"
    target.mkdir(exist_ok=True)
    try:
        (tmp_path / "link").symlink_to(target)
        (tmp_path / "dangling").symlink_to(target / "made-later")
        assert disk_probe(path=tmp_path / "link" / "m.tar") == target
        assert disk_probe(path=tmp_path / "link" / "sub" / "m.tar") == target
        # a link to a folder not made yet: the filesystem of the folder it will be made in
        assert disk_probe(path=tmp_path / "dangling" / "m.tar") == target
        assert os.stat(disk_probe(path=tmp_path / "link")).st_dev != os.stat(tmp_path).st_dev
        assert abs(free_bytes(path=tmp_path / "link" / "m.tar") - os.statvfs(target).f_bavail * os.statvfs(
            target).f_frsize) < 64 << 20
    finally:
        target.rmdir()


def test_a_symlink_loop_does_not_raise(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert disk_probe(path=tmp_path / "a" / "m.tar") == tmp_path.resolve()


def test_a_folder_this_user_cannot_look_into_counts_as_not_existing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir()
    real_stat = Path.stat

    def stat(self: Path, **kwargs: bool) -> os.stat_result:
        # What a folder without the x bit does to any path inside it (root is never refused, so fake it)
        if closed in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert disk_probe(path=closed / "inner" / "m.tar") == closed.resolve()


def test_check_disk_names_the_path_asked_for_and_the_filesystem_measured(tmp_path: Path) -> None:
    from core.errors import DiskSpaceError
    from core.pack import check_disk

    with pytest.raises(DiskSpaceError) as caught:
        check_disk(needs=[(tmp_path / "new" / "dir", 1 << 60)])
    assert f"{tmp_path / 'new' / 'dir'} (on the filesystem of {tmp_path.resolve()})" in str(caught.value)


# LIST


def test_packs_are_listed_newest_first_with_their_files_state_now(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite")
    whole = _write(tmp_path / "out" / "a.tar", 7)
    parts = (_write(tmp_path / "out" / "b.tar.zst.part000", 3), tmp_path / "out" / "b.tar.zst.part001")
    _record(history, archive=whole, engine="vllm")
    _record(history, archive=tmp_path / "out" / "b.tar.zst", parts=parts, engine="llama.cpp")
    _record(history, archive=None, outcome="failed")

    failed, split, plain = list_packs(history=history)
    assert (plain.engine, plain.present, plain.size_on_disk) == ("vllm", True, 7)
    assert [f.path for f in plain.files] == [whole]
    assert split.engine == "llama.cpp" and not split.present
    assert [(f.path.name, f.size, f.exists) for f in split.files] == [
        ("b.tar.zst.part000", 3, True), ("b.tar.zst.part001", None, False),
    ]  # fmt: skip
    assert failed.outcome == "failed" and failed.files == () and not failed.present
    as_json = pack_entry_to_dict(split)
    assert as_json["files"][1] == {"path": str(parts[1]), "size": None, "exists": False}
    assert as_json["model"] == "tiny-org/tiny-llama" and as_json["present"] is False


# CLEAN


def _home_with_everything(tmp_path: Path) -> tuple[Path, History, dict[str, Path]]:
    home = tmp_path / "home"
    history = History(home / "history.sqlite")
    out = tmp_path / "user-disk"
    files = {
        "context": _write(home / "builds" / "context-abc" / "layers" / "w" / "model.safetensors", 100),
        "layer_cache": _write(home / "layer-cache" / "blobs" / "sha256" / ("f" * 64), 1000),
        "conversion": _write(home / "gguf" / "cccccccccccccccc-Q4_K_M" / "m.gguf", 50),
        "partial_home": _write(home / "exports" / "old.tar.partial", 10),
        "export": _write(home / "exports" / "done.tar", 20),
        "partial_beside": _write(out / "m.tar.part001.partial", 30),
        "owned_partial_gone": _write(out / ".m.tar.999999999-0a1b2c3d.partial", 40),
        "owned_partial_alive": _write(out / f".m.tar.{os.getpid()}-0a1b2c3d.partial", 40),
        "archive": _write(out / "m.tar.part000", 60),
        "checksum": _write(out / "m.tar.sha256", 1),
        "load_script": _write(out / "load.sh", 1),
        "unrelated": _write(tmp_path / "elsewhere" / "x.partial", 1),
    }
    _record(history, archive=out / "m.tar", parts=(files["archive"],))
    _record(history, archive=home / "exports" / "done.tar")
    return home, history, files


def test_a_clean_finds_the_working_files_with_sizes_and_never_an_archive(tmp_path: Path) -> None:
    home, history, files = _home_with_everything(tmp_path)
    items = clean_candidates(data_dir=home, history=history)
    found = {item.path: (item.kind, item.size) for item in items}
    assert found == {
        home / "builds" / "context-abc": ("build-contexts", 100),
        home / "layer-cache": ("layer-cache", 1000),
        home / "gguf" / "cccccccccccccccc-Q4_K_M": ("conversions", 50),
        files["partial_home"]: ("partial-files", 10),
        files["partial_beside"]: ("partial-files", 30),
        files["owned_partial_gone"]: ("partial-files", 40),
    }
    assert set(CLEAN_KINDS) == {kind for kind, _ in found.values()}
    partials: tuple[CleanKind, ...] = ("partial-files",)
    only = clean_candidates(data_dir=home, history=history, kinds=partials)
    assert {item.kind for item in only} == {"partial-files"} and len(only) == 3


def test_removing_deletes_exactly_the_candidates(tmp_path: Path) -> None:
    home, history, files = _home_with_everything(tmp_path)
    result = remove(items=clean_candidates(data_dir=home, history=history))
    assert result.failed == () and result.freed == 100 + 1000 + 50 + 10 + 30 + 40
    for key in ("context", "layer_cache", "conversion", "partial_home", "partial_beside", "owned_partial_gone"):
        assert not files[key].exists(), key
    for key in ("export", "owned_partial_alive", "archive", "checksum", "load_script", "unrelated"):
        assert files[key].exists(), key
    assert (home / "history.sqlite").exists() and (home / "builds").is_dir()
    assert clean_candidates(data_dir=home, history=history) == ()


def test_a_symlink_in_the_build_folder_is_removed_not_followed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    history = History(home / "history.sqlite")
    precious = _write(tmp_path / "user" / "weights.safetensors", 9)
    (home / "builds").mkdir()
    (home / "builds" / "context-link").symlink_to(precious.parent)
    items = clean_candidates(data_dir=home, history=history)
    assert [(i.path.name, i.size) for i in items] == [("context-link", 0)]
    remove(items=items)
    assert precious.read_bytes() == b"x" * 9 and not (home / "builds" / "context-link").is_symlink()


def test_no_clean_while_a_pack_is_running(tmp_path: Path) -> None:
    home = tmp_path / "home"
    history = History(home / "history.sqlite")
    _write(home / "builds" / "context-abc" / "Dockerfile")
    _record(history, archive=None, outcome="running")
    with pytest.raises(EzRunnerError, match="is running") as caught:
        clean_candidates(data_dir=home, history=history)
    assert "ezrunner clean" in str(caught.value)
    assert (home / "builds" / "context-abc" / "Dockerfile").exists()


def test_a_file_that_cannot_be_deleted_is_reported_and_the_rest_go(tmp_path: Path) -> None:
    from core.housekeeping import CleanItem

    doomed = _write(tmp_path / "a.partial")
    stuck = doomed / "child.partial"  # a path through a regular file fails for every user, root too (ENOTDIR)
    result = remove(items=[CleanItem(kind="partial-files", path=stuck, size=1),
                           CleanItem(kind="partial-files", path=doomed, size=5)])  # fmt: skip
    assert [item.path for item in result.removed] == [doomed] and not doomed.exists()
    assert [item.path for item, _ in result.failed] == [stuck] and result.failed[0][1]
    assert result.freed == 5


def test_the_module_runs_in_a_python_without_the_ui() -> None:
    code = "import core.housekeeping, sys; sys.exit('streamlit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0

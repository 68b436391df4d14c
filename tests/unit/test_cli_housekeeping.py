"""`ezrunner --version`, `dockerfile --json`, `list`, `clean` and the pack summary, through the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.archive import names
from core.archive.compression import Compression
from core.history import History
from core.pack import Artifact
from ezrunner_ui.cli.pack import manual_load_command, summary, written_files
from tests.fixtures.cli import ezrunner

CPU_TARGET = ("--cpu-only", "--ram", "16", "--cpu-cores", "4")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    values["EZRUNNER_HOME"] = str(tmp_path / "home")
    return values


def test_version_prints_the_installed_version(env: dict[str, str]) -> None:
    from importlib import metadata

    result = ezrunner("--version", env=env)
    assert result.stdout.strip() == f"ezrunner {metadata.version('ezrunner')}"


def test_dockerfile_json_is_the_dockerfile_plan_and_run_spec(env: dict[str, str], tiny_model_dir: Path) -> None:
    plain = ezrunner("dockerfile", str(tiny_model_dir), *CPU_TARGET, env=env).stdout
    value = json.loads(ezrunner("dockerfile", str(tiny_model_dir), *CPU_TARGET, "--json", env=env).stdout)
    assert set(value) == {"dockerfile", "image_tag", "plan", "run_spec"}
    assert value["dockerfile"] == plain
    assert value["plan"]["engine"] == "transformers" and value["plan"]["fits"] is True
    assert value["run_spec"]["port"] == 8000 and value["run_spec"]["image"] == value["image_tag"]
    assert value["image_tag"] in plain


def test_list_shows_each_pack_its_files_and_whether_they_are_still_there(env: dict[str, str], tmp_path: Path) -> None:
    assert "No packs yet" in ezrunner("list", env=env).stdout
    assert json.loads(ezrunner("list", "--json", env=env).stdout) == []
    archive = tmp_path / "out" / "tiny.tar"
    archive.parent.mkdir()
    archive.write_bytes(b"x" * 2048)
    history = History(Path(env["EZRUNNER_HOME"]) / "history.sqlite")
    record = history.start(
        model_id="tiny-org/tiny-llama", source="hf", revision="main", model_commit="c" * 40, target={},
        plan={"engine": "transformers"}, dockerfile="FROM x\n", image_tag="ezrunner/tiny:1",
    )  # fmt: skip
    history.finish(record, outcome="succeeded", archive=archive, parts=(archive,), size=2048, sha256="a" * 64)

    text = ezrunner("list", env=env).stdout
    assert "tiny-org/tiny-llama  transformers  succeeded  2.0 KiB" in text
    assert f"    {archive}  2.0 KiB" in text
    archive.unlink()
    (listed,) = json.loads(ezrunner("list", "--json", env=env).stdout)
    assert listed["present"] is False and listed["files"] == [{"path": str(archive), "size": None, "exists": False}]
    text = ezrunner("list", env=env).stdout
    assert f"    {archive}  missing" in text and "succeeded  2.0 KiB when packed, files missing" in text


def test_clean_shows_sizes_asks_and_deletes_only_working_files(env: dict[str, str]) -> None:
    home = Path(env["EZRUNNER_HOME"])
    context = home / "builds" / "context-1"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_bytes(b"x" * 3000)
    finished = home / "exports" / "done.tar"
    finished.parent.mkdir()
    finished.write_bytes(b"done")

    dry = ezrunner("clean", "--dry-run", env=env)
    assert re.search(rf"^build-contexts +2\.9 KiB  {re.escape(str(context))}$", dry.stdout, re.MULTILINE)
    assert "Dry run: nothing was deleted." in dry.stdout
    assert context.exists()

    refused = subprocess.run([sys.executable, "-m", "ezrunner_ui.cli", "clean"], env=env, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    assert refused.returncode != 0 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert context.exists()

    bad = ezrunner("clean", "everything", "--dry-run", env=env, check=False)
    assert bad.returncode == 2 and "not one of build-contexts" in bad.stderr

    done = json.loads(ezrunner("clean", "--yes", "--json", env=env).stdout)
    assert done["removed"] == [str(context)] and done["bytes"] == 3000 and done["failed"] == []
    assert not context.exists() and finished.read_bytes() == b"done"
    assert "0 item(s)" in ezrunner("clean", env=env).stdout


def _artifact(folder: Path, *, compression: Compression, parts: int) -> Artifact:
    archive = folder / names.archive_name("m.tar", compression=compression)
    files = [names.part_path(archive, i) for i in range(parts)] if parts > 1 else [archive]
    for f in files:
        f.write_bytes(b"x" * 10)
    sidecars = [names.checksum_path(archive), folder / "load.sh"]
    if parts > 1:
        sidecars.append(names.parts_checksum_path(archive))
    for f in sidecars:
        f.write_text("x")
    return Artifact(
        archive=archive, parts=tuple(files), size=10 * len(files), sha256="a" * 64,
        checksum_file=names.checksum_path(archive), load_script=folder / "load.sh", image_tag="ezrunner/m:1",
        image_id="sha256:" + "b" * 64, run_command="docker run ezrunner/m:1", compression=compression,
        export_path="fast", export_reason="Fast path.", seconds=1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("compression", "parts", "files", "load"),
    [
        ("none", 1, ["m.tar", "m.tar.sha256", "load.sh"], "docker load -i m.tar"),
        ("zstd", 1, ["m.tar.zst", "m.tar.zst.sha256", "load.sh"], "zstd -dc m.tar.zst | docker load"),
        ("none", 2, ["m.tar.part000", "m.tar.part001", "m.tar.sha256", "m.tar.parts.sha256", "load.sh"],
         "cat m.tar.part000 m.tar.part001 | docker load"),
        ("zstd", 2, ["m.tar.zst.part000", "m.tar.zst.part001", "m.tar.zst.sha256", "m.tar.zst.parts.sha256",
                     "load.sh"], "cat m.tar.zst.part000 m.tar.zst.part001 | zstd -dc | docker load"),
    ],
)  # fmt: skip
def test_the_pack_summary_names_the_files_really_written(
    tmp_path: Path, compression: Compression, parts: int, files: list[str], load: str
) -> None:
    artifact = _artifact(tmp_path, compression=compression, parts=parts)
    written = written_files(artifact)
    assert [p.name for p in written] == files and all(p.is_file() for p in written)
    lines = summary(artifact)
    listed = [line.split()[0] for line in lines[1 : 1 + len(files)]]
    assert listed == files
    assert manual_load_command(artifact) == load
    assert lines[-1] == f"  or by hand: {load} && docker run ezrunner/m:1"
    if parts > 1:
        # the logical archive name is no file: the summary must not offer it
        assert not any(line.strip() == artifact.archive.name for line in lines)

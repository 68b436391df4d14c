"""Two packs of the same model, plan and options are the same artifact: same sha256, same image id.

Packed as a user packs, `ezrunner pack` in a subprocess, from two EZRUNNER_HOMEs (so two downloads with
their own file times, two build contexts, two fresh layer caches, two histories), the second started
seconds later; then a third time in this process with the clock days ahead. The archives must be equal
byte for byte, plain and zstd, and `docker load` of either must give the image id the pack reported.
The pack times differ, and they are in the history rows, not in the archives.

The docker-build path (docker build with the weights, then docker save) cannot be byte-identical, since
Docker stamps its own times; its image config must equal the fast path's once those stamps are set aside.

The model is served under a repo id of this test's own, so its image tags (and the runtime image whose
build cache the packs rely on) are not shared with other tests that remove theirs while this one runs.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import zstandard
from docker import DockerClient

from core.docker import api as docker_api
from core.history import History
from ezrunner_ui.cli import main as ezrunner_main
from tests.fixtures.cli import ezrunner, user_shell
from tests.fixtures.fake_hub import FakeHub
from tests.unit.test_archive_reproducible import CLOCK_SHIFT, _shift_clock

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO_ID = "repro-org/tiny-llama-repro"
CPU_TARGET = ["--cpu-only", "--ram", "8"]
#: Between the two subprocess packs: every second-resolution stamp differs (the in-process pack moves
#: the clock by days, so minutes, hours and dates differ too).
DELAY_S = 2.5


@pytest.fixture
def repro_hub(fake_hub: FakeHub, tiny_sharded_model_dir: Path) -> FakeHub:
    if not any(repo.repo_id == REPO_ID for repo in fake_hub.repos.values()):
        fake_hub.add_model(source="hf", repo_id=REPO_ID, folder=tiny_sharded_model_dir)
    return fake_hub


def _user_env(hub: FakeHub, home: Path) -> dict[str, str]:
    """A user's shell with its own home: hub at the fake hub, its own download cache and EZRUNNER_HOME."""
    return user_shell(hub_url=hub.url, home=home)


def _pack_args(base_image: str, out: Path, *extra: str) -> list[str]:
    return ["pack", f"hf:{REPO_ID}", *CPU_TARGET, "--base-image", base_image, "-o", str(out), "--json", *extra]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _checked(artifact: dict[str, Any]) -> dict[str, Any]:
    """The artifact, after checking that its sha256 (JSON and sidecar) is the file's."""
    archive = Path(artifact["archive"])
    digest = _sha256(archive)
    assert artifact["sha256"] == digest
    assert Path(artifact["checksum_file"]).read_text() == f"{digest}  {archive.name}\n"
    assert artifact["export_path"] == "fast"
    return artifact


@pytest.fixture
def images(docker_client: DockerClient) -> Iterator[list[str]]:
    """Image refs to remove after the test, whatever happens."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        docker_api.remove_image(ref=ref, force=True, client=docker_client)


def test_packs_from_two_homes_and_clocks_are_the_same_archive(
    repro_hub: FakeHub, offline_base_image: str, tmp_path: Path, docker_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], images: list[str],
) -> None:
    packs: dict[str, dict[str, Any]] = {}
    for home in ("home-a", "home-b"):
        env = _user_env(repro_hub, tmp_path / home)
        out = tmp_path / home / "out"
        for kind, extra in (("plain", ()), ("zstd", ("--compress", "zstd"))):
            result = ezrunner(*_pack_args(offline_base_image, out / "tiny.tar", *extra), env=env)
            packs[f"{home}/{kind}"] = _checked(json.loads(result.stdout))
        if home == "home-a":
            images += [packs["home-a/plain"]["image_tag"], packs["home-a/plain"]["image_tag"] + "-runtime"]
            time.sleep(DELAY_S)

    # The third pack: in this process, another home, the clock three days ahead.
    home_c = tmp_path / "home-c"
    monkeypatch.setenv("EZRUNNER_HOME", str(home_c / "ezrunner-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home_c / "hf-home" / "hub"))
    _shift_clock(monkeypatch, CLOCK_SHIFT)
    capsys.readouterr()
    assert ezrunner_main(_pack_args(offline_base_image, home_c / "out" / "tiny.tar")) == 0
    packs["home-c/plain"] = _checked(json.loads(capsys.readouterr().out))
    monkeypatch.undo()  # the real clock and environment again

    plain = {p["sha256"] for name, p in packs.items() if name.endswith("/plain")}
    zstd = {p["sha256"] for name, p in packs.items() if name.endswith("/zstd")}
    assert len(plain) == 1, packs
    assert len(zstd) == 1, packs
    assert len({p["image_id"] for p in packs.values()}) == 1, packs
    # Each home's layer cache got the runtime layers from its own `docker save`: the same blobs (named by sha256).
    blobs = [
        sorted(p.name for p in (tmp_path / home / "ezrunner-home" / "layer-cache" / "blobs" / "sha256").iterdir())
        for home in ("home-a", "home-b", "home-c")
    ]
    assert blobs[0] and blobs[0] == blobs[1] == blobs[2]
    # The zstd archive is the plain tar, compressed.
    with open(packs["home-b/zstd"]["archive"], "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        digest = hashlib.sha256()
        while chunk := reader.read(8 << 20):
            digest.update(chunk)
    assert digest.hexdigest() in plain

    # The pack times are in the history rows, and they differ as the clocks did.
    started = {}
    for home in ("home-a", "home-b", "home-c"):
        rows = History(tmp_path / home / "ezrunner-home" / "history.sqlite").list()
        assert {row.outcome for row in rows} == {"succeeded"}
        assert {row.sha256 for row in rows} <= plain | zstd
        started[home] = min(row.started for row in rows)
    assert started["home-b"] - started["home-a"] >= DELAY_S
    assert started["home-c"] - started["home-b"] >= CLOCK_SHIFT.total_seconds() - 60

    # `docker load` gives the id the packs reported, from the plain archive of one home and the zstd of the other.
    tag, image_id = packs["home-a/plain"]["image_tag"], packs["home-a/plain"]["image_id"]
    for archive in (packs["home-a/plain"]["archive"], packs["home-b/zstd"]["archive"]):
        docker_api.remove_image(ref=tag, force=True, client=docker_client)
        assert tag in docker_api.load_image(tar=Path(archive), client=docker_client)
        assert docker_client.images.get(tag).id == image_id


def _normalised_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without what Docker stamps on the docker-build path and what tells the two paths apart."""
    config = json.loads(json.dumps(config))
    config.pop("created")
    # The build container of the last step (its id, and its parent image in both run configs).
    config.pop("container")
    config["container_config"].pop("Hostname")
    config["container_config"].pop("Image")
    config["config"].pop("Image")
    model_layers = 0
    for entry in config["history"]:
        entry.pop("created")
        # Docker names a COPY's source by a hash of the context files; the fast path by the layer digest.
        prefix, copy, rest = entry.get("created_by", "").partition(" COPY dir:")
        # the model layers, and after them the SBOM's (COPY sbom/ /etc/ezrunner/)
        if copy and (rest[64:].startswith(" in /models/") or (model_layers and rest[64:].startswith(" in /etc/"))):
            entry["created_by"] = f"{prefix}{copy}<digest>{rest[64:]}"
            model_layers += 1
    # The model and SBOM layers' bytes differ (Docker keeps the source files' mtimes and stamps the folders).
    assert model_layers > 0
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:-model_layers]
    return config


def _archive_config(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        config = tar.extractfile(json.load(manifest)[0]["Config"])
        assert config is not None
        parsed: dict[str, Any] = json.load(config)
    return parsed


def test_docker_build_path_gives_the_same_image_config_but_for_dockers_stamps(
    repro_hub: FakeHub, offline_base_image: str, tmp_path: Path, images: list[str]
) -> None:
    env = _user_env(repro_hub, tmp_path / "home")
    args = _pack_args(offline_base_image, tmp_path / "reference" / "tiny.tar", "--export-path", "docker-build")
    reference = json.loads(ezrunner(*args, env=env).stdout)
    images += [reference["image_tag"], reference["image_tag"] + "-runtime"]
    assert reference["export_path"] == "docker-build"
    fast = json.loads(ezrunner(*_pack_args(offline_base_image, tmp_path / "fast" / "tiny.tar"), env=env).stdout)
    _checked(fast)
    expected, config = _archive_config(Path(reference["archive"])), _archive_config(Path(fast["archive"]))
    assert config["created"] == "1970-01-01T00:00:00Z" != expected["created"]
    assert _normalised_config(config) == _normalised_config(expected)

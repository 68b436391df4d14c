"""Honest run and load.sh on this machine's engine, which has no bridge network (scripts/ensure-docker
starts dockerd with --bridge=none): `ezrunner run` and load.sh without host networking end within
seconds naming `--network host`; waits are bounded and end with the container's last log lines; the
port is checked first; a stray next-numbered part is ignored, and named; an existing archive is kept
unless `--overwrite`."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core.archive import names
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.history import History
from tests.fixtures.cli import ezrunner, user_shell
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CPU_TARGET = ["--cpu-only", "--ram", "8"]
#: A check that needs no verify and no load must end well within this (a hang check: the old wait was 30 min).
QUICK_S = 60


@pytest.fixture(scope="module")
def packed(
    tmp_path_factory: pytest.TempPathFactory, fake_hub_server: FakeHub, offline_base_image: str,
    docker_client: DockerClient,
) -> Iterator[tuple[Path, dict[str, str], dict[str, object]]]:
    """The tiny model packed once, split in parts: (archive, the user's environment, the artifact)."""
    root = tmp_path_factory.mktemp("honest")
    env = user_shell(hub_url=fake_hub_server.url, home=root)
    archive = root / "out" / "tiny.tar"
    artifact = json.loads(ezrunner("pack", f"hf:{HF_SHARDED}", *CPU_TARGET, "--base-image", offline_base_image,
                                   "-o", str(archive), "--split", "300M", "--json", env=env).stdout)  # fmt: skip
    yield archive, env, artifact
    docker_api.remove_image(ref=str(artifact["image_tag"]), force=True, client=docker_client)


def _ours(client: DockerClient, name: str) -> list[object]:
    return client.containers.list(all=True, filters={"label": docker_api.LABEL, "name": name})


def test_the_engine_has_no_bridge_network(docker_client: DockerClient) -> None:
    # what the two tests below rely on: this engine is the one the issue describes
    assert not docker_containers.bridge_available(client=docker_client)


def test_run_without_host_network_ends_within_seconds_naming_the_fix(
    packed: tuple[Path, dict[str, str], dict[str, object]], docker_client: DockerClient, free_port: int
) -> None:
    archive, env, _ = packed
    name = f"ezrunner-test-bridge-{free_port}"
    started = time.monotonic()
    result = ezrunner("run", str(archive), "--port", str(free_port), "--name", name, env=env, check=False,
                      timeout=QUICK_S)  # fmt: skip
    print(f"refused in {time.monotonic() - started:.1f} s")
    assert result.returncode == 2
    assert "no bridge network" in result.stderr and "--network host" in result.stderr
    assert "Traceback" not in result.stderr
    assert "==> verify" not in result.stderr and "==> load" not in result.stderr  # refused before the slow steps
    assert _ours(docker_client, name) == []


def test_load_sh_on_this_engine_says_use_network_host_and_never_ready(
    packed: tuple[Path, dict[str, str], dict[str, object]], free_port: int
) -> None:
    archive, env, _ = packed
    result = subprocess.run(["bash", str(archive.parent / "load.sh"), "--port", str(free_port)], env=env,
                            capture_output=True, text=True, timeout=QUICK_S)  # fmt: skip
    assert result.returncode == 1
    assert "./load.sh --network host" in result.stderr
    assert "Ready" not in result.stdout + result.stderr


def test_a_port_in_use_is_refused_before_verify_and_load(
    packed: tuple[Path, dict[str, str], dict[str, object]], docker_client: DockerClient
) -> None:
    archive, env, _ = packed
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ezrunner("run", str(archive), "--network", "host", "--port", str(port), env=env, check=False,
                          timeout=QUICK_S)  # fmt: skip
    assert result.returncode == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr and "--port" in result.stderr
    assert "==> verify" not in result.stderr


def test_a_bounded_wait_ends_with_the_last_log_lines_and_removes_the_container(
    packed: tuple[Path, dict[str, str], dict[str, object]], docker_client: DockerClient, free_port: int
) -> None:
    archive, env, _ = packed
    name = f"ezrunner-test-timeout-{free_port}"
    try:
        result = ezrunner("run", str(archive), "--network", "host", "--port", str(free_port), "--name", name,
                          "--timeout", "2", env=env, check=False)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "did not answer" in result.stderr and "within 2 s" in result.stderr
        assert "Last log lines" in result.stderr and "--timeout" in result.stderr
        assert "waiting for the server" in result.stderr  # the wait's line (plain: stderr is not a terminal)
        assert _ours(docker_client, name) == []
    finally:
        docker_containers.remove_container(container=name, client=docker_client)


def test_a_stray_next_numbered_part_is_ignored_and_named(
    packed: tuple[Path, dict[str, str], dict[str, object]], docker_client: DockerClient, free_port: int
) -> None:
    archive, env, artifact = packed
    listed = [p.name for p, _ in names.read_parts_list(archive)]
    assert len(listed) > 1
    stray = names.part_path(archive, len(listed))
    stray.write_bytes(b"a leftover part of another pack, which must not be appended")
    name = f"ezrunner-test-stray-{free_port}"
    try:
        result = ezrunner("run", str(archive), "--network", "host", "--port", str(free_port), "--name", name,
                          "--timeout", "300", "--json", env=env)  # fmt: skip
        assert f"Ignoring {stray.name}" in result.stderr
        server = json.loads(result.stdout)
        assert server["endpoint"] == f"http://127.0.0.1:{free_port}/v1"
        models = requests.get(f"{server['endpoint']}/models", timeout=30).json()
        assert HF_SHARDED in [m["id"] for m in models["data"]]
        assert docker_client.images.get(str(artifact["image_tag"])).id == artifact["image_id"]
    finally:
        stray.unlink(missing_ok=True)
        docker_containers.remove_container(container=name, client=docker_client)


def test_an_existing_archive_is_kept_unless_overwrite(
    packed: tuple[Path, dict[str, str], dict[str, object]], offline_base_image: str
) -> None:
    archive, env, _ = packed
    before = {p.name: p.stat().st_mtime_ns for p in archive.parent.iterdir()}
    pack = ["pack", f"hf:{HF_SHARDED}", *CPU_TARGET, "--base-image", offline_base_image, "-o", str(archive),
            "--split", "300M"]  # fmt: skip
    refused = ezrunner(*pack, env=env, check=False, timeout=QUICK_S)
    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert "==> download" not in refused.stderr  # refused before any work
    assert {p.name: p.stat().st_mtime_ns for p in archive.parent.iterdir()} == before
    history = History(Path(env["EZRUNNER_HOME"]) / "history.sqlite")
    assert [r.outcome for r in history.list()] == ["succeeded"]  # the refusal is no pack, and no stuck row

    replaced = json.loads(ezrunner(*pack, "--overwrite", "--json", env=env).stdout)
    assert replaced["sha256"] == names.checksum_path(archive).read_text().split()[0]
    assert sorted(p.name for p in archive.parent.iterdir() if not p.name.startswith(".")) == sorted(before)
    assert [r.outcome for r in history.list()] == ["succeeded", "succeeded"]

"""Stop means stop: SIGINT and SIGTERM sent to a real `ezrunner pack` (during the download, during the
export) and to a real `ezrunner run` (while it waits for the server) end it within seconds, with
nothing left behind: no file in the output folder (hidden .partial ones included), no build context,
no container, no history row in "running"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from docker import DockerClient

from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.history import History
from tests.fixtures.cli import ezrunner, user_shell
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CPU_TARGET = ["--cpu-only", "--ram", "8"]
SLOW_FILE = "model-00001-of-00002.safetensors"
#: A stop must end the command well within this (a hang check, not a speed target: the throttled
#: download alone would take minutes).
STOP_WITHIN_S = 40


class Command:
    """`ezrunner ARGS…` as a subprocess whose stderr is collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ezrunner_ui.cli", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_for(self, condition: Callable[[], bool], *, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"ezrunner ended before {what}:\n{''.join(self.stderr)}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{''.join(self.stderr)}"
            time.sleep(0.05)

    def stop(self, signum: int) -> tuple[int, float, str]:
        """Send ``signum``; return the exit code, the seconds it took to end, and all of stderr."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=STOP_WITHIN_S)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        took = time.monotonic() - sent
        self._reader.join(10)
        return code, took, "".join(self.stderr)


def _no_running_rows(home: Path) -> list[str]:
    history = History(home / "history.sqlite")
    return [r.outcome for r in history.list()]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def slow_hub(fake_hub: FakeHub) -> Iterator[FakeHub]:
    fake_hub.throttle(SLOW_FILE, bytes_per_s=2048)  # ~80 s for the file: the stop must not wait for it
    yield fake_hub
    fake_hub.throttle(SLOW_FILE, bytes_per_s=None)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_download_stops_the_pack_and_leaves_nothing(
    signum: int, slow_hub: FakeHub, user_env: dict[str, str], offline_base_image: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pack = Command("pack", f"hf:{HF_SHARDED}", *CPU_TARGET, "--base-image", offline_base_image,
                   "-o", str(out / "tiny.tar"), env=user_env)  # fmt: skip
    # the hub client writes the file being downloaded as a .incomplete blob in its cache
    hf_home = tmp_path / "hf-home"
    pack.wait_for(lambda: any(hf_home.rglob("*.incomplete")), what="the download of the slow file")
    time.sleep(1.0)  # well inside the download
    code, took, stderr = pack.stop(signum)

    print(f"stopped {signal.Signals(signum).name} in {took:.1f} s")
    assert code == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert "cancelled" in stderr.lower()
    assert _leftovers(out) == []
    home = tmp_path / "ezrunner-home"
    assert _leftovers(home / "builds") == []
    assert _no_running_rows(home) == ["cancelled"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_export_stops_the_pack_and_leaves_nothing(
    signum: int, fake_hub: FakeHub, user_env: dict[str, str], offline_base_image: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pack = Command("pack", f"hf:{HF_SHARDED}", *CPU_TARGET, "--base-image", offline_base_image,
                   "-o", str(out / "tiny.tar"), env=user_env)  # fmt: skip
    # the archive is being written: its hidden temporary file is there
    pack.wait_for(lambda: any(p.name.endswith(".partial") for p in out.iterdir()), what="the archive's .partial file")
    code, took, stderr = pack.stop(signum)

    print(f"stopped {signal.Signals(signum).name} in {took:.1f} s")
    assert code == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert _leftovers(out) == []
    home = tmp_path / "ezrunner-home"
    assert _leftovers(home / "builds") == []
    assert not [p for p in (home / "layer-cache").rglob("*") if ".partial" in p.name or ".tmp" in p.name]
    assert _no_running_rows(home) == ["cancelled"]


@pytest.fixture(scope="module")
def packed_archive(
    tmp_path_factory: pytest.TempPathFactory, fake_hub_server: FakeHub, offline_base_image: str,
    docker_client: DockerClient,
) -> Iterator[tuple[Path, dict[str, str], str]]:
    """One packed tiny archive for the run tests: (archive, the user's environment, its image tag)."""
    root = tmp_path_factory.mktemp("packed")
    env = user_shell(hub_url=fake_hub_server.url, home=root)
    archive = root / "out" / "tiny.tar"
    artifact = json.loads(ezrunner("pack", f"hf:{HF_SHARDED}", *CPU_TARGET, "--base-image", offline_base_image,
                                   "-o", str(archive), "--json", env=env).stdout)  # fmt: skip
    yield archive, env, artifact["image_tag"]
    docker_api.remove_image(ref=artifact["image_tag"], force=True, client=docker_client)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_run_waits_removes_the_container_it_started(
    signum: int, packed_archive: tuple[Path, dict[str, str], str], free_port: int, docker_client: DockerClient
) -> None:
    archive, env, _ = packed_archive
    name = f"ezrunner-test-stop-{free_port}"
    run = Command("run", str(archive), "--network", "host", "--port", str(free_port), "--name", name,
                  "--timeout", "600", env=env)  # fmt: skip
    try:
        run.wait_for(lambda: bool(docker_client.containers.list(all=True, filters={"name": name})),
                     what="the container")  # fmt: skip
        time.sleep(0.5)
        code, took, stderr = run.stop(signum)
        print(f"stopped {signal.Signals(signum).name} in {took:.1f} s")
        assert code == 128 + signum, stderr
        assert "Traceback" not in stderr
        assert "cancelled" in stderr.lower()
        assert docker_client.containers.list(all=True, filters={"name": name}) == []
        assert docker_client.containers.list(all=True, filters={"label": docker_api.LABEL, "name": name}) == []
    finally:
        docker_containers.remove_container(container=name, client=docker_client)

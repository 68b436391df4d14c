"""Profiles on the real engine: the tiny llama.cpp pack (CPU) started by hand (`docker run IMAGE`, no arguments)
runs its ENTRYPOINT's profile selection, which picks the CPU profile and says why; the image's own script lists
its profiles, a container whose memory is too small for the model is refused before llama-server starts; and
`load.sh --profiles` / `ezrunner profiles` list the same."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core.runspec import SELECT_SCRIPT_PATH
from tests.fixtures.cli import ezrunner
from tests.fixtures.tiny_gguf import make_tiny_gguf

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CPU_TARGET = ["--cpu-only", "--ram", "8"]


def test_the_image_started_by_hand_picks_its_cpu_profile(
    offline_llama_image: str, tmp_path: Path, free_port: int, docker_client: DockerClient, cleanup: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_TOKEN", "EZRUNNER_"))}
    env["EZRUNNER_HOME"] = str(tmp_path / "ezrunner-home")
    folder = tmp_path / "tiny-gguf"
    folder.mkdir()
    make_tiny_gguf(folder / "tiny-llama-F16.gguf")
    out = tmp_path / "out"
    artifact = json.loads(ezrunner("pack", str(folder), *CPU_TARGET, "--base-image", offline_llama_image,
                                   "-o", str(out / "tiny.tar"), "--json", env=env).stdout)  # fmt: skip
    image = artifact["image_tag"]
    cleanup += [image, image + "-runtime"]
    # the server's first step, as load.sh takes it (the fast path built only the engine layers here)
    loaded = subprocess.run(["docker", "load", "-i", str(out / "tiny.tar")], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    spec = json.loads(docker_client.images.get(image).labels["io.ezrunner.run-spec"])
    assert [(p["name"], p["device"]) for p in spec["profiles"]] == [("default", "cpu")]
    assert spec["profiles"][0]["needs"]["min_ram_bytes"] > 0

    # by hand, as a user or Kubernetes starts it: no arguments, no EZ Runner on the host
    name = f"ezrunner-test-profile-{free_port}"
    cleanup.insert(0, name)
    docker_client.containers.run(image, name=name, detach=True, network_mode="host",
                                 environment={"PORT": str(free_port)})  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{free_port}/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        container = docker_client.containers.get(name)
        assert container.status in ("created", "running"), container.logs().decode(errors="replace")
        assert time.monotonic() < deadline, container.logs().decode(errors="replace")
        time.sleep(1)
    logs = docker_client.containers.get(name).logs().decode(errors="replace")
    assert "ezrunner: starting profile default (" in logs and "CPU" in logs
    assert "it fits" in logs and "of RAM" in logs

    # the image's own script lists its profiles (sh and awk only: the image has no python3)
    listed = docker_client.containers.run(image, entrypoint=["/bin/sh", SELECT_SCRIPT_PATH, "list"], remove=True,
                                          network_mode="none").decode()  # fmt: skip
    assert "Runnable:" in listed and "default" in listed and "load.sh and the image start default." in listed

    # a container with too little memory for the model is refused before the server starts, naming why
    refused = f"{name}-small"
    cleanup.insert(0, refused)
    small = docker_client.containers.run(image, name=refused, detach=True, network_mode="none",
                                         environment={"EZRUNNER_RAM_BYTES": "1000000"})  # fmt: skip
    assert small.wait(timeout=60)["StatusCode"] == 1
    said = small.logs().decode(errors="replace")
    assert "no profile of this image fits this server" in said and "memory: needs" in said
    assert "llama-server" not in said.split("no profile", 1)[0]

    # load.sh --profiles and ezrunner profiles judge the same way on this machine
    on_server = subprocess.run(["bash", str(out / "load.sh"), "--profiles"], capture_output=True, text=True,
                               timeout=60, env=env)  # fmt: skip
    assert on_server.returncode == 0 and "Runnable:" in on_server.stdout and "default" in on_server.stdout
    checked = json.loads(ezrunner("profiles", str(out / "tiny.tar"), *CPU_TARGET, "--json", env=env).stdout)
    assert checked["chosen"] == {"profile": "default", "max_model_len": spec["profiles"][0]["max_model_len"]}

"""The offline llama.cpp CPU image (scripts/offline-base-images llama.cpp) on the real engine: the tiny Llama,
converted to GGUF with the pinned source's converter, served by llama-server as user 10001 from a read-only
mount; its health check (ezrunner-probe, no python or curl in the image) says healthy while the server answers
and unhealthy once the server process is dead."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from docker import DockerClient
from docker.models.containers import Container

from core.docker import containers as docker_containers
from core.engines.versions import LLAMA_CPP_BUILD, LLAMA_CPP_OFFLINE_PROBE
from tests.fixtures.docker_plugin import DockerScratch
from tests.fixtures.tiny_gguf import convert_hf_to_gguf
from tests.fixtures.tiny_model import make_tiny_llama

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL_DIR = "/models"
MODEL_FILE = "tiny-llama-f16.gguf"
ALIAS = "tiny-llama"
SECOND_NS = 1_000_000_000

def convert_to_gguf(model_dir: Path, out: Path) -> Path:
    return convert_hf_to_gguf(model_dir, out, outtype="f16", pre_tokenizer="gpt-2")


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the tiny Llama as f16 GGUF, readable by any user (it is mounted read-only)."""
    folder = tmp_path_factory.mktemp("gguf")
    convert_to_gguf(make_tiny_llama(), folder / MODEL_FILE).chmod(0o644)
    folder.chmod(0o755)
    return folder


def unused_port(*, other_than: int) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port != other_than:
            return port


def start_server(
    client: DockerClient, scratch: DockerScratch, image: str, models: Path, port: int, *, script: str
) -> Container:
    """llama-server configured the way an engine template can: LLAMA_ARG_* variables plus ``--port "$PORT"``."""
    container: Container = client.containers.run(
        image,
        ["/bin/sh", "-c", script, "serve"],
        entrypoint=[],
        name=scratch.container_name("llama"),
        labels=scratch.labels,
        detach=True,
        network_mode="host",
        user="10001:10001",
        volumes={str(models): {"bind": MODEL_DIR, "mode": "ro"}},
        environment={
            "PORT": str(port),
            "LLAMA_ARG_MODEL": f"{MODEL_DIR}/{MODEL_FILE}",
            "LLAMA_ARG_HOST": "127.0.0.1",  # host network: stay on loopback
            "LLAMA_ARG_ALIAS": ALIAS,
            "LLAMA_ARG_CTX_SIZE": "512",
            "LLAMA_ARG_N_PARALLEL": "1",
            "LLAMA_ARG_THREADS": "1",
            "LLAMA_ARG_OFFLINE": "1",
        },
        # the image's HEALTHCHECK as the engine template writes it (exec form, PORT from the environment)
        healthcheck={
            "test": ["CMD", LLAMA_CPP_OFFLINE_PROBE],
            "interval": SECOND_NS,
            "timeout": 5 * SECOND_NS,
            "retries": 2,
            "start_period": 60 * SECOND_NS,
        },
    )
    return container


def health(container: Container) -> dict[str, Any]:
    container.reload()
    state: dict[str, Any] = container.attrs["State"]
    return state.get("Health") or {}


def wait_health(container: Container, status: str, *, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        current = health(container)
        if current.get("Status") == status:
            return current
        if container.status == "exited" or time.monotonic() > deadline:
            logs = container.logs(tail=60).decode(errors="replace")
            raise AssertionError(f"container never became {status} (now {current.get('Status')}):\n{logs}")
        time.sleep(0.5)


def test_serves_chat_completions_as_user_10001_from_a_read_only_model(
    docker_client: DockerClient, docker_scratch: DockerScratch, offline_llama_image: str, gguf_dir: Path, free_port: int
) -> None:
    # the shape the engine template's ENTRYPOINT has: exec, so llama-server is PID 1 and gets docker's signals
    server = start_server(
        docker_client, docker_scratch, offline_llama_image, gguf_dir, free_port,
        script='exec llama-server --port "${PORT}" "$@"',
    )
    wait_health(server, "healthy")
    base = f"http://127.0.0.1:{free_port}"

    assert requests.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    assert [m["id"] for m in requests.get(f"{base}/v1/models", timeout=10).json()["data"]] == [ALIAS]
    reply = requests.post(
        f"{base}/v1/chat/completions",
        json={
            "model": ALIAS,
            "messages": [{"role": "user", "content": "Hello, how are you today?"}],
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,  # llama-server extension: random weights may pick EOS first; count 8 tokens
        },
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["usage"]["completion_tokens"] == 8
    assert body["choices"][0]["finish_reason"] == "length"
    assert isinstance(body["choices"][0]["message"]["content"], str)

    status, output = docker_containers.exec_in_container(
        container=server.name, argv=[LLAMA_CPP_OFFLINE_PROBE], client=docker_client
    )
    assert (status, output.strip()) == (0, f"ezrunner-probe: 127.0.0.1:{free_port}/health: HTTP/1.1 200 OK")
    idle = unused_port(other_than=free_port)
    status, output = docker_containers.exec_in_container(
        container=server.name, argv=[LLAMA_CPP_OFFLINE_PROBE, "-p", str(idle)], client=docker_client
    )
    assert (status, output.strip()) == (1, f"ezrunner-probe: 127.0.0.1:{idle}: Connection refused")

    version = server.exec_run(["llama-server", "--version"], user="10001:10001")
    assert version.exit_code == 0 and f"build {LLAMA_CPP_BUILD}" in version.output.decode()
    # the model mount is read-only to the server's user
    assert server.exec_run(["sh", "-c", f"touch {MODEL_DIR}/x"]).exit_code != 0


def test_health_turns_unhealthy_when_the_server_dies(
    docker_client: DockerClient, docker_scratch: DockerScratch, offline_llama_image: str, gguf_dir: Path, free_port: int
) -> None:
    # a shell stays PID 1 so that the container outlives the killed server and Docker keeps probing it
    server = start_server(
        docker_client, docker_scratch, offline_llama_image, gguf_dir, free_port,
        script='llama-server --port "${PORT}" & echo $! > /tmp/server.pid; wait; exec sleep 600',
    )
    wait_health(server, "healthy")
    killed = server.exec_run(["sh", "-c", "kill -9 $(cat /tmp/server.pid)"])
    assert killed.exit_code == 0, killed.output

    dead = wait_health(server, "unhealthy", timeout_s=60)
    assert server.status == "running"
    last = dead["Log"][-1]
    assert last["ExitCode"] == 1
    assert last["Output"].strip() == f"ezrunner-probe: 127.0.0.1:{free_port}: Connection refused"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{free_port}/health", timeout=5)


def test_quantizes_with_no_network_as_user_10001(
    docker_client: DockerClient, docker_scratch: DockerScratch, offline_llama_image: str, gguf_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by uid 10001
    log = docker_client.containers.run(
        offline_llama_image,
        ["llama-quantize", f"{MODEL_DIR}/{MODEL_FILE}", "/out/tiny-llama-q8_0.gguf", "Q8_0", "1"],
        name=docker_scratch.container_name("quantize"),
        labels=docker_scratch.labels,
        network_mode="none",
        user="10001:10001",
        volumes={str(gguf_dir): {"bind": MODEL_DIR, "mode": "ro"}, str(out): {"bind": "/out", "mode": "rw"}},
        stdout=True,
        stderr=True,
    ).decode(errors="replace")
    quantized = out / "tiny-llama-q8_0.gguf"
    assert quantized.read_bytes()[:4] == b"GGUF", log
    # Q8_0 stores 8.5 bits per weight where f16 stores 16; the tokenizer metadata is the same in both
    assert quantized.stat().st_size < 0.7 * (gguf_dir / MODEL_FILE).stat().st_size, log

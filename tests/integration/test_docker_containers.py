"""core.docker.containers against the real Docker engine: run, health checks, exec, remove, port checks.

Containers start from the offline base image and use --network host and only 127.0.0.1. Everything a
test makes is removed by the docker_scratch fixture.
"""

from __future__ import annotations

import socket
import time

import docker.errors
import pytest
from docker import DockerClient

from core.docker import containers as docker_containers
from core.errors import HealthTimeoutError, PortInUseError
from core.events import Event
from tests.fixtures.docker_plugin import DockerScratch

pytestmark = pytest.mark.docker


def test_run_wait_healthy_exec_and_remove(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient, free_port: int
) -> None:
    name = docker_scratch.container_name("http")
    container = docker_containers.run_container(
        image=offline_base_image,
        name=name,
        port=free_port,
        network="host",
        device="cpu",
        env={"GREETING": "hello-from-env"},
        command=["python3", "-m", "http.server", str(free_port), "--bind", "127.0.0.1"],
        labels=docker_scratch.labels,
        client=docker_client,
    )
    events: list[Event] = []

    docker_containers.wait_healthy(
        container=container, url=f"http://127.0.0.1:{free_port}/", timeout=60, on_event=events.append
    )

    assert events[-1].message == "healthy"
    attrs = docker_client.containers.get(container).attrs
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    assert attrs["HostConfig"]["IpcMode"] == "host"
    rc, output = docker_containers.exec_in_container(
        container=container, argv=["python3", "-c", "import os; print(os.environ['GREETING'])"]
    )
    assert (rc, output) == (0, "hello-from-env\n")
    rc, _ = docker_containers.exec_in_container(container=container, argv=["sh", "-c", "exit 7"])
    assert rc == 7
    # the server's port is now taken, so a second server on it is refused before it starts
    with pytest.raises(PortInUseError):
        docker_containers.run_container(
            image=offline_base_image, name=docker_scratch.container_name("second"), port=free_port
        )

    docker_containers.remove_container(container=container, client=docker_client)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container)
    docker_containers.remove_container(container=container, client=docker_client)  # already gone is fine


def test_run_refuses_a_port_something_listens_on(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        name = docker_scratch.container_name("taken")

        with pytest.raises(PortInUseError, match=str(port)):
            docker_containers.run_container(image=offline_base_image, name=name, port=port, client=docker_client)

    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(name)


def test_wait_healthy_times_out_with_the_container_logs(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient, free_port: int
) -> None:
    container = docker_containers.run_container(
        image=offline_base_image,
        name=docker_scratch.container_name("silent"),
        port=free_port,
        command=["python3", "-c", "print('unhealthy-marker', flush=True); import time; time.sleep(120)"],
        labels=docker_scratch.labels,
        client=docker_client,
    )

    started = time.monotonic()
    with pytest.raises(HealthTimeoutError) as raised:
        docker_containers.wait_healthy(container=container, url=f"http://127.0.0.1:{free_port}/health", timeout=4)

    assert 4 <= time.monotonic() - started < 30
    assert "unhealthy-marker" in str(raised.value)
    assert "within 4 s" in str(raised.value)


def test_wait_healthy_fails_early_when_the_container_exits(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient, free_port: int
) -> None:
    container = docker_containers.run_container(
        image=offline_base_image,
        name=docker_scratch.container_name("exits"),
        port=free_port,
        command=["sh", "-c", "echo out-of-memory-marker; exit 4"],
        labels=docker_scratch.labels,
        client=docker_client,
    )

    started = time.monotonic()
    with pytest.raises(HealthTimeoutError) as raised:
        docker_containers.wait_healthy(container=container, url=f"http://127.0.0.1:{free_port}/", timeout=120)

    assert time.monotonic() - started < 30
    assert "exit code 4" in str(raised.value)
    assert "out-of-memory-marker" in str(raised.value)

"""`ezrunner run`: verify an archive, load it, start it, wait until it answers, say where."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from docker import DockerClient

from core.archive.names import archive_of
from core.archive.reader import verify_archive
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.errors import HealthTimeoutError
from core.events import Event, EventSink, ignore_events
from core.planning import Device
from core.runspec import Network, run_spec_from_labels


@dataclass(frozen=True)
class RunningServer:
    container_id: str
    container_name: str
    image: str
    endpoint: str | None  # None with --network none: only reachable from inside the container
    served_model_name: str
    port: int


def run_archive(
    *,
    archive: Path,
    port: int | None = None,
    network: Network = "bridge",
    name: str | None = None,
    timeout_s: float = 1800,
    on_event: EventSink = ignore_events,
) -> RunningServer:
    verify_archive(archive=archive, on_event=on_event)
    archive = archive_of(archive)
    client = docker_api.connect()
    on_event(Event(stage="load", message=f"Loading {archive.name}"))
    refs = docker_api.load_image(client=client, tar=archive, on_event=on_event)
    image_ref = next((r for r in refs if r.startswith("ezrunner/")), refs[0])
    labels = client.images.get(image_ref).labels or {}
    served = labels.get("io.ezrunner.served-model-name", "")
    host_port = port or _env_port(client, image_ref)
    # The image's entrypoint listens on $PORT: make it the host port, so host and bridge networks agree.
    env = {"PORT": str(host_port)}
    spec = run_spec_from_labels(labels)
    device: Device
    if spec is not None:
        device, ipc_host = spec.default.device, spec.ipc_host
    else:  # packed before run specs: only the GPU label says how to start it
        device = "cuda" if labels.get("io.ezrunner.gpus") == "all" else "cpu"
        ipc_host = True
    container_name = name or "ezrunner-" + image_ref.split("/", 1)[-1].split(":", 1)[0]
    on_event(Event(stage="run", message=f"Starting {container_name}"))
    container_id = docker_containers.run_container(
        client=client,
        image=image_ref,
        name=container_name,
        port=host_port,
        network=network,
        device=device,
        ipc_host=ipc_host,
        env=env,
    )
    if network == "none":
        _wait_docker_health(client=client, container_id=container_id, timeout_s=timeout_s, on_event=on_event)
        endpoint = None
    else:
        docker_containers.wait_healthy(
            client=client,
            container=container_id,
            url=f"http://127.0.0.1:{host_port}/health",
            timeout=timeout_s,
            on_event=on_event,
        )
        endpoint = f"http://127.0.0.1:{host_port}/v1"
    return RunningServer(
        container_id=container_id,
        container_name=container_name,
        image=image_ref,
        endpoint=endpoint,
        served_model_name=served,
        port=host_port,
    )


def _env_port(client: DockerClient, image_ref: str) -> int:
    """The port the image's server listens on by default (its ``PORT`` env, as the template sets it)."""
    env = client.images.get(image_ref).attrs["Config"].get("Env") or []
    for item in env:
        if item.startswith("PORT="):
            return int(item.split("=", 1)[1])
    return 8000


def _wait_docker_health(*, client: DockerClient, container_id: str, timeout_s: float, on_event: EventSink) -> None:
    """With no network the host cannot probe the server: rely on the image's own HEALTHCHECK."""
    deadline = time.monotonic() + timeout_s
    container = client.containers.get(container_id)
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if not state.get("Running"):
            break
        on_event(Event(stage="run", message=f"Waiting for the health check ({health or 'starting'})"))
        time.sleep(2)
    logs = container.logs(tail=30).decode("utf-8", "replace")
    raise HealthTimeoutError(
        f"The server did not become healthy within {timeout_s:.0f} s. Last log lines:\n{logs}",
        hint="Check the log above; a large model may need a longer --timeout.",
    )

"""Containers: start one from an image, wait until its server answers, read its logs, exec in it, remove it.

Keyword-only functions with an optional ``client``, like ``core.docker.api``, whose connection and
error handling they share.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import docker.errors
import requests
from docker import DockerClient
from docker.types import DeviceRequest

from core.docker.api import LABEL, LOG_TAIL_LINES, connect, engine_errors
from core.errors import (
    ArtifactInvalidError,
    ContainerConflictError,
    EzRunnerError,
    GpuUnavailableError,
    HealthTimeoutError,
    PortInUseError,
)
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.planning import Device
from core.runspec import Network


def port_is_free(*, port: int, host: str = "127.0.0.1") -> bool:
    """Whether something could listen on ``host:port`` now (a listener on 0.0.0.0 counts as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: sockets lingering in TIME_WAIT do not stop a server from listening
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_container(
    *,
    image: str,
    name: str,
    port: int | None,
    network: Network = "host",
    device: Device = "cpu",
    ipc_host: bool = True,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    client: DockerClient | None = None,
) -> str:
    """Start ``image`` detached and return the container id.

    ``network="host"`` shares the host's network (the server's ``port`` is the host's); ``"bridge"``
    publishes ``port`` on 127.0.0.1 only; ``"none"`` has no network. ``device`` and ``ipc_host`` come from
    the image's run spec: the same accelerator and shared-memory flags as ``core.runspec.container_flags``.
    """
    client = client or connect()
    if port is not None and network != "none" and not port_is_free(port=port):
        raise PortInUseError(
            f"Port {port} on 127.0.0.1 is already in use.",
            hint=f"Stop what listens there (`ss -ltnp 'sport = :{port}'` shows it) or choose another port.",
        )
    options: dict[str, Any] = {
        "name": name,
        "detach": True,
        "network_mode": network,
        "environment": dict(env or {}),
        "labels": {LABEL: "1", **(labels or {})},
    }
    if network == "bridge" and port is not None:
        options["ports"] = {f"{port}/tcp": ("127.0.0.1", port)}
    if ipc_host:
        options["ipc_mode"] = "host"
    if device == "cuda":
        options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    elif device in ("rocm", "vulkan"):
        options["devices"] = ["/dev/kfd:/dev/kfd", "/dev/dri:/dev/dri"] if device == "rocm" else ["/dev/dri:/dev/dri"]
        if device == "rocm":
            options["group_add"] = ["video"]
    gpus = device != "cpu"
    with engine_errors(action=f"start a container from {image}"):
        try:
            container = client.containers.run(image, list(command) if command else None, **options)
        except docker.errors.ImageNotFound as error:
            raise ArtifactInvalidError(
                f"There is no image {image} on this machine.",
                hint="Load it first with `docker load -i FILE.tar` (or the bundled load.sh).",
            ) from error
        except docker.errors.APIError as error:
            explanation = str(error.explanation or error)
            if error.status_code == 409:
                raise ContainerConflictError(
                    f"A container named {name} already exists.",
                    hint=f"Remove it with `docker rm -f {name}` or choose another name.",
                ) from error
            if gpus and ("gpu" in explanation.lower() or "nvidia" in explanation.lower()):
                raise GpuUnavailableError(
                    f"Docker could not give the container GPUs: {explanation}.",
                    hint="Install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure "
                    "--runtime=docker`, restart Docker, and check that `nvidia-smi` works.",
                ) from error
            raise EzRunnerError(
                f"Docker could not start {image}: {explanation}.", hint="Check `docker info` and try again."
            ) from error
    return str(container.id)


def container_logs(*, container: str, tail: int = LOG_TAIL_LINES, client: DockerClient | None = None) -> str:
    client = client or connect()
    with engine_errors(action=f"read the logs of {container}"):
        try:
            raw = client.containers.get(container).logs(tail=tail)
        except docker.errors.NotFound:
            return ""
    return bytes(raw).decode("utf-8", "replace")


def wait_healthy(
    *,
    container: str,
    url: str,
    timeout: float,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    interval: float = 1.0,
    client: DockerClient | None = None,
) -> None:
    """Wait until ``url`` answers 200, failing early if the container stops.

    Raises HealthTimeoutError with the container's last log lines when it does not become healthy.
    """
    client = client or connect()
    started = time.monotonic()
    last_problem = "no answer yet"
    with requests.Session() as http:
        http.trust_env = False  # the server is on this machine: never ask an HTTP(S)_PROXY for it
        while True:
            elapsed = time.monotonic() - started
            raise_if_cancelled(
                cancel, message="Cancelled while waiting for the server to start.", hint="Start again when ready."
            )
            with engine_errors(action=f"check container {container}"):
                try:
                    state = client.api.inspect_container(container)["State"]
                except docker.errors.NotFound as error:
                    raise HealthTimeoutError(
                        f"The container {container} disappeared while starting.", hint="Start it again."
                    ) from error
            if not state.get("Running"):
                logs = container_logs(container=container, client=client)
                raise HealthTimeoutError(
                    f"The container stopped (exit code {state.get('ExitCode')}) before {url} answered.\n"
                    f"Last log lines:\n{logs}",
                    hint="The log lines above say why (often not enough memory): fix it and run again.",
                )
            try:
                response = http.get(url, timeout=min(5.0, max(timeout - elapsed, 0.5)))
                if response.status_code == 200:
                    on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message="healthy"))
                    return
                last_problem = f"HTTP {response.status_code}"
            except requests.exceptions.RequestException as error:
                last_problem = type(error).__name__
            on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message=last_problem))
            if time.monotonic() - started >= timeout:
                logs = container_logs(container=container, client=client)
                raise HealthTimeoutError(
                    f"The server did not answer at {url} within {timeout:.0f} s (last: {last_problem}).\n"
                    f"Last log lines:\n{logs}",
                    hint="Large models take longer to load: retry with a longer timeout, or look for an "
                    "error in the log lines above.",
                )
            time.sleep(interval)


def exec_in_container(*, container: str, argv: Sequence[str], client: DockerClient | None = None) -> tuple[int, str]:
    """Run ``argv`` inside a running container; returns (exit code, stdout and stderr together)."""
    client = client or connect()
    with engine_errors(action=f"run a command in {container}"):
        try:
            result = client.containers.get(container).exec_run(list(argv))
        except docker.errors.NotFound as error:
            raise EzRunnerError(f"There is no container {container}.", hint="Start it again, then retry.") from error
    return int(result.exit_code), bytes(result.output or b"").decode("utf-8", "replace")


def remove_container(*, container: str, client: DockerClient | None = None) -> None:
    """Stop and remove a container; one that is already gone is fine."""
    client = client or connect()
    with engine_errors(action=f"remove container {container}"), contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container, force=True, v=True)

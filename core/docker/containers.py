"""Containers: start one from an image, wait until its server answers, read its logs, exec in it, remove it.

Keyword-only functions with an optional ``client``, like ``core.docker.api``, whose connection and
error handling they share. Before a start, ``require_network`` checks that the engine can give the
container the network asked for (an engine whose daemon runs with ``--bridge=none`` has no bridge to
publish a port on); waits are bounded and cancellable, and report ``Event(stage="run", unit="s")``.
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
from docker.models.containers import Container
from docker.types import DeviceRequest

from core.docker.api import LABEL, LOG_TAIL_LINES, connect, engine_errors
from core.errors import (
    ArtifactInvalidError,
    ContainerConflictError,
    EzRunnerError,
    GpuUnavailableError,
    HealthTimeoutError,
    InvalidOptionsError,
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


def require_port_free(*, port: int) -> None:
    """Raise PortInUseError when something already listens on ``port`` of this machine."""
    if not port_is_free(port=port):
        raise PortInUseError(
            f"Port {port} on 127.0.0.1 is already in use.",
            hint=f"Stop what listens there (`ss -ltnp 'sport = :{port}'` shows it) or choose another --port.",
        )


def bridge_available(*, client: DockerClient | None = None) -> bool:
    """Whether the engine has its default bridge network (absent when dockerd runs with ``--bridge=none``)."""
    client = client or connect()
    with engine_errors(action="list Docker's networks"):
        found = client.api.networks(names=["bridge"])  # a name filter matches parts of names too
    return any(n.get("Name") == "bridge" and n.get("Driver") == "bridge" for n in found or [])


def require_network(*, network: Network, port: int | None = None, client: DockerClient | None = None) -> None:
    """Raise InvalidOptionsError, naming the fix, when this engine cannot give a container ``network``.

    Without the default bridge, Docker still starts a container asked for ``--network bridge`` and
    publishes nothing: it would run unreachable while a caller waits for it to answer.
    """
    if network != "bridge" or bridge_available(client=client):
        return
    where = f" port {port}" if port else " the server's port"
    raise InvalidOptionsError(
        f"This Docker engine has no bridge network (its daemon runs with --bridge=none), so a container on "
        f"--network bridge cannot publish{where}: nothing could reach the server.",
        hint="Use --network host (the server then listens on the port of this machine directly), or enable "
        'Docker\'s default bridge (drop "bridge": "none" from /etc/docker/daemon.json) and restart Docker.',
    )


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
    The network and the port are checked first; a container that was created but could not start is
    removed, so that a failed start leaves nothing behind (nor a name taken for the next try).
    """
    client = client or connect()
    if port is not None and network != "none":
        require_port_free(port=port)
    require_network(network=network, port=port, client=client)
    options: dict[str, Any] = {
        "name": name,
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
            container = client.containers.create(image, list(command) if command else None, **options)
        except docker.errors.ImageNotFound as error:
            raise ArtifactInvalidError(
                f"There is no image {image} on this machine.",
                hint="Load it first with `docker load -i FILE.tar` (or the bundled load.sh).",
            ) from error
        except docker.errors.APIError as error:
            if error.status_code == 409:
                raise ContainerConflictError(
                    f"A container named {name} already exists.",
                    hint=f"Remove it with `docker rm -f {name}` or choose another --name.",
                ) from error
            raise _start_failed(image, error, gpus=gpus) from error
        try:
            container.start()
        except BaseException as error:
            remove_container(container=str(container.id), client=client)
            if isinstance(error, docker.errors.APIError):
                raise _start_failed(image, error, gpus=gpus) from error
            raise
    if network == "bridge" and not _has_bridge_address(client, str(container.id)):
        remove_container(container=str(container.id), client=client)
        require_network(network="bridge", port=port, client=client)  # names the fix when the bridge is gone
        raise EzRunnerError(
            f"Docker started {name} on the bridge network but gave it no address, so its port is not published.",
            hint="Use --network host, or check the bridge with `docker network inspect bridge`.",
        )
    return str(container.id)


def _has_bridge_address(client: DockerClient, container: str) -> bool:
    with engine_errors(action=f"inspect container {container}"):
        networks = (client.api.inspect_container(container).get("NetworkSettings") or {}).get("Networks") or {}
    return bool((networks.get("bridge") or {}).get("NetworkID"))


def _start_failed(image: str, error: docker.errors.APIError, *, gpus: bool) -> EzRunnerError:
    explanation = str(error.explanation or error)
    if gpus and ("gpu" in explanation.lower() or "nvidia" in explanation.lower()):
        return GpuUnavailableError(
            f"Docker could not give the container GPUs: {explanation}.",
            hint="Install the NVIDIA Container Toolkit, run `nvidia-ctk runtime configure "
            "--runtime=docker`, restart Docker, and check that `nvidia-smi` works.",
        )
    return EzRunnerError(f"Docker could not start {image}: {explanation}.", hint="Check `docker info` and try again.")


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
    """Wait, at most ``timeout`` seconds, until ``url`` answers 200 from this machine.

    Fails early, with the container's last log lines, when the container stops or the image's own
    health check calls it unhealthy; raises CancelledError once ``cancel`` is set.
    """
    client = client or connect()
    started = time.monotonic()
    last_problem = "no answer yet"
    with requests.Session() as http:
        http.trust_env = False  # the server is on this machine: never ask an HTTP(S)_PROXY for it
        while True:
            elapsed = time.monotonic() - started
            _cancelled(cancel)
            _check_still_starting(client, container, waiting_for=url)
            try:
                response = http.get(url, timeout=min(5.0, max(timeout - elapsed, 0.5)))
                if response.status_code == 200:
                    on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message="healthy"))
                    return
                last_problem = f"HTTP {response.status_code}"
            except requests.exceptions.RequestException as error:
                last_problem = _request_problem(error)
            on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message=last_problem))
            if time.monotonic() - started >= timeout:
                logs = container_logs(container=container, client=client)
                raise HealthTimeoutError(
                    f"The server did not answer at {url} within {timeout:.0f} s (last: {last_problem}).\n"
                    f"Last log lines:\n{logs}",
                    hint="Large models take longer to load: retry with a longer --timeout, or look for an "
                    "error in the log lines above.",
                )
            _sleep(interval, cancel)


def wait_docker_healthy(
    *,
    container: str,
    timeout: float,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    interval: float = 2.0,
    client: DockerClient | None = None,
) -> None:
    """Wait, at most ``timeout`` seconds, until the image's own HEALTHCHECK calls the container healthy
    (with no network the host cannot ask the server itself)."""
    client = client or connect()
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        _cancelled(cancel)
        health = _check_still_starting(client, container, waiting_for="its health check")
        if health == "healthy":
            on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message="healthy"))
            return
        if health is None:
            raise HealthTimeoutError(
                f"The image of {container} has no health check, so with no network nothing can tell when it is ready.",
                hint="Start it with --network host, or pack it again with this EZ Runner (its images have one).",
            )
        on_event(Event(stage="run", done=int(elapsed), total=int(timeout), unit="s", message=f"health: {health}"))
        if elapsed >= timeout:
            logs = container_logs(container=container, client=client)
            raise HealthTimeoutError(
                f"The server did not become healthy within {timeout:.0f} s. Last log lines:\n{logs}",
                hint="Large models take longer to load: retry with a longer --timeout, or look for an "
                "error in the log lines above.",
            )
        _sleep(interval, cancel)


def _cancelled(cancel: Cancel | None) -> None:
    raise_if_cancelled(
        cancel, message="Cancelled while waiting for the server to start.", hint="Start it again when ready."
    )


def _sleep(seconds: float, cancel: Cancel | None) -> None:
    """Sleep, but wake up as soon as ``cancel`` is set."""
    if cancel is None:
        time.sleep(seconds)
    else:
        cancel.wait(seconds)


def _check_still_starting(client: DockerClient, container: str, *, waiting_for: str) -> str | None:
    """The container's health status (None without a health check); raise when it stopped, restarts or is
    unhealthy, with its last log lines."""
    with engine_errors(action=f"check container {container}"):
        try:
            state = client.api.inspect_container(container)["State"]
        except docker.errors.NotFound as error:
            raise HealthTimeoutError(
                f"The container {container} disappeared while starting (someone removed it).", hint="Start it again."
            ) from error
    health = (state.get("Health") or {}).get("Status")
    if not state.get("Running") or state.get("Restarting"):
        logs = container_logs(container=container, client=client)
        raise HealthTimeoutError(
            f"The container stopped (exit code {state.get('ExitCode')}) before {waiting_for} answered.\n"
            f"Last log lines:\n{logs}",
            hint="The log lines above say why (often not enough memory): fix it and run again.",
        )
    if health == "unhealthy":
        logs = container_logs(container=container, client=client)
        raise HealthTimeoutError(
            f"The image's health check calls the server unhealthy.\nLast log lines:\n{logs}",
            hint="The log lines above say why: fix it and run again (a large model may need more memory).",
        )
    return str(health) if health else None


def _request_problem(error: requests.exceptions.RequestException) -> str:
    if isinstance(error, requests.exceptions.ConnectionError):
        return "not listening yet"
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer within 5 s"
    return type(error).__name__


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


def containers_labelled(*, label: str, client: DockerClient | None = None) -> list[Container]:
    """Every container (running or not) carrying ``label`` (``key=value``)."""
    client = client or connect()
    with engine_errors(action=f"list containers labelled {label}"):
        return list(client.containers.list(all=True, filters={"label": label}))


def container_running(*, container: str, client: DockerClient | None = None) -> bool:
    """Whether ``container`` exists and runs; False once it is gone or has exited."""
    client = client or connect()
    with engine_errors(action=f"inspect container {container}"):
        try:
            state = client.api.inspect_container(container).get("State") or {}
        except docker.errors.NotFound:
            return False
    return bool(state.get("Running"))

"""`ezrunner run`: verify an archive, load it, start it, wait until it answers, say where.

What takes seconds is checked before what takes minutes: the network mode (an engine without its default
bridge cannot publish a port) and the host port come before the archive is verified and loaded. The wait
for health is bounded (by default scaled to the model's size, as the image's own health check is) and
cancellable; when the server does not come up, or the run is cancelled, the container this run started
is removed and the error carries its last log lines and the next step.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docker import DockerClient

from core.archive import names
from core.archive.reader import verify_archive
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.errors import InvalidOptionsError
from core.events import Cancel, Event, EventSink, ignore_events
from core.planning import Device
from core.render import default_timeout_s
from core.runspec import Network, run_spec_from_labels


@dataclass(frozen=True)
class RunningServer:
    container_id: str
    container_name: str
    image: str
    endpoint: str | None  # None with --network none: only reachable from inside the container
    served_model_name: str
    port: int
    api_key_env: str | None = None  # the variable whose key clients must send ("Authorization: Bearer …")
    # the key the container was given: this process's clients send it; never printed, never written
    api_key: str | None = field(default=None, repr=False, compare=False)
    api_key_one_off: bool = False  # a random key made for this throwaway server (its variable was unset here)

    def as_json(self) -> dict[str, Any]:
        """What `ezrunner run --json` prints: everything but the key."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}


def check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and not (0 < timeout_s < float("inf")):
        raise InvalidOptionsError(
            f"--timeout {timeout_s} is not a number of seconds.", hint="Pass a positive number, e.g. --timeout 600."
        )


def run_archive(
    *,
    archive: Path,
    port: int | None = None,
    network: Network = "bridge",
    name: str | None = None,
    timeout_s: float | None = None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    labels: Mapping[str, str] | None = None,
    one_off_key: bool = False,
) -> RunningServer:
    """Verify ``archive``, load it, start its server and wait (at most ``timeout_s``, default
    ``default_timeout_s``) until it answers; raise, having removed the container, when it does not."""
    check_timeout(timeout_s)
    if port is not None and not 1 <= port <= 65535:
        raise InvalidOptionsError(f"--port {port} is out of range.", hint="Use a port from 1 to 65535.")
    archive = names.archive_of(archive)
    client = docker_api.connect()
    if port is not None and network != "none":
        docker_containers.require_port_free(port=port)
    docker_containers.require_network(network=network, port=port, client=client)
    stray = names.stray_parts(archive)
    if stray:
        on_event(Event(stage="verify", message=f"Ignoring {', '.join(p.name for p in stray)}: "
                       f"{names.parts_checksum_name(archive.name)} does not list it"))  # fmt: skip
    verify_archive(archive=archive, on_event=on_event, cancel=cancel)
    archive_bytes = sum(p.stat().st_size for p in names.archive_parts(archive))
    on_event(Event(stage="load", message=f"Loading {archive.name}"))
    refs = docker_api.load_image(client=client, tar=archive, on_event=on_event, cancel=cancel)
    image_ref = next((r for r in refs if r.startswith("ezrunner/")), refs[0])
    return start_image(
        image_ref=image_ref,
        port=port,
        network=network,
        name=name,
        timeout_s=timeout_s,
        archive_bytes=archive_bytes,
        on_event=on_event,
        cancel=cancel,
        client=client,
        labels=labels,
        one_off_key=one_off_key,
    )


def start_image(
    *,
    image_ref: str,
    port: int | None = None,
    network: Network = "bridge",
    name: str | None = None,
    timeout_s: float | None = None,
    archive_bytes: int = 0,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
    client: DockerClient | None = None,
    labels: Mapping[str, str] | None = None,
    one_off_key: bool = False,
) -> RunningServer:
    """Start the loaded image ``image_ref`` as its run spec says and wait (bounded, cancellable) until it
    answers; raise, having removed the container, when it does not. ``run_archive`` after its load, and
    ``core.bench`` for an image that is already loaded. ``one_off_key``: a server removed when its caller is
    done may get a random key where the image's key variable is unset (``api_key_for``)."""
    check_timeout(timeout_s)
    client = client or docker_api.connect()
    image_labels = client.images.get(image_ref).labels or {}
    served = image_labels.get("io.ezrunner.served-model-name", "")
    host_port = port or _env_port(client, image_ref)
    # The image's entrypoint listens on $PORT: make it the host port, so host and bridge networks agree.
    env = {"PORT": str(host_port)}
    spec = run_spec_from_labels(image_labels)
    device: Device
    key: str | None = None
    one_off = False
    if spec is not None and spec.api_key is not None:
        key, one_off = api_key_for(spec.api_key.env, one_off=one_off_key)
        if key is None:
            raise InvalidOptionsError(
                f"This image was packed to require an API key, and {spec.api_key.env} is not set.",
                hint=f"export {spec.api_key.env}=... (the key clients will send as 'Authorization: Bearer ...'), "
                "then run it again.",
            )
        env[spec.api_key.env] = key
    if spec is not None:
        device, ipc_host = spec.default.device, spec.ipc_host
    else:  # packed before run specs: only the GPU label says how to start it
        device = "cuda" if image_labels.get("io.ezrunner.gpus") == "all" else "cpu"
        ipc_host = True
    timeout = timeout_s or default_timeout_s(spec=spec, archive_bytes=archive_bytes)
    health_path = spec.health_path if spec is not None else "/health"
    container_name = name or "ezrunner-" + image_ref.split("/", 1)[-1].split(":", 1)[0]
    on_event(Event(stage="run", message=f"Starting {container_name} (waiting at most {timeout:.0f} s)"))
    container_id = docker_containers.run_container(
        client=client,
        image=image_ref,
        name=container_name,
        port=host_port,
        network=network,
        device=device,
        ipc_host=ipc_host,
        env=env,
        labels=labels,
    )
    try:
        if network == "none":  # the host cannot ask the server: the image's own HEALTHCHECK tells
            docker_containers.wait_docker_healthy(
                client=client, container=container_id, timeout=timeout, on_event=on_event, cancel=cancel
            )
            endpoint = None
        else:
            docker_containers.wait_healthy(
                client=client,
                container=container_id,
                url=f"http://127.0.0.1:{host_port}{health_path}",
                timeout=timeout,
                on_event=on_event,
                cancel=cancel,
            )
            endpoint = f"http://127.0.0.1:{host_port}/v1"
    except BaseException:
        # Not up (timeout, crash, cancel, Ctrl-C): the error holds its last log lines; the container
        # would only hold the name and the port against the next try.
        docker_containers.remove_container(container=container_id, client=client)
        raise
    return RunningServer(
        container_id=container_id,
        container_name=container_name,
        image=image_ref,
        endpoint=endpoint,
        served_model_name=served,
        port=host_port,
        api_key_env=spec.api_key.env if spec is not None and spec.api_key is not None else None,
        api_key=key,
        api_key_one_off=one_off,
    )


def api_key_for(variable: str, *, one_off: bool) -> tuple[str | None, bool]:
    """The key a container packed with --api-key-env gets, and whether it was made up here: this environment's
    ``variable``, as docker run -e would hand it over (never a flag or a file); where it is unset and the server
    is a throwaway one (a check, a bench, a test drive: removed when done), a random key for that container
    alone; else None."""
    key = os.environ.get(variable)
    if key:
        return key, False
    return (secrets.token_urlsafe(24), True) if one_off else (None, False)


def _env_port(client: DockerClient, image_ref: str) -> int:
    """The port the image's server listens on by default (its ``PORT`` env, as the template sets it)."""
    env = client.images.get(image_ref).attrs["Config"].get("Env") or []
    for item in env:
        if item.startswith("PORT="):
            return int(item.split("=", 1)[1])
    return 8000

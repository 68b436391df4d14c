"""How a packed image's server starts, in one description: the run spec.

An engine turns its plan into a ``RunSpec``; everything that starts a container renders from it — the
image's own ENTRYPOINT, ``docker run`` lines (the CLI, the wizard, ``load.sh``), ``ezrunner run`` — so
no flag is written twice. The spec is baked into the image as JSON (``/etc/ezrunner/run-spec.json`` and
the ``io.ezrunner.run-spec`` label), so any later command can read it back from an archive or an image.

A spec has one or more *profiles* (ways to start: device, GPUs, parallelism, context) and names the
default one; today every plan makes one profile, and the multi-profile, multi-node and data-parallel
fields are carried so later work extends the same spec instead of adding a second copy.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import ArtifactInvalidError
from core.planning import Device

RUN_SPEC_VERSION = 1
RUN_SPEC_LABEL = "io.ezrunner.run-spec"
RUN_SPEC_PATH = "/etc/ezrunner/run-spec.json"
PLAN_PATH = "/etc/ezrunner/plan.json"
IMAGE_USER = "10001:10001"

Network = Literal["bridge", "host", "none"]


@dataclass(frozen=True)
class Profile:
    """One way to start the server in this image."""

    name: str
    device: Device
    argv: tuple[str, ...]  # the server command inside the container, without the port flag
    env: tuple[tuple[str, str], ...] = ()  # extra environment for this profile
    gpus_per_node: int = 0  # GPUs one node (one container) needs; 0 on the CPU
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    nodes: int = 1
    max_model_len: int = 0
    description: str = ""  # "1 × NVIDIA H100 80GB SXM, 32,768 tokens"


@dataclass(frozen=True)
class RunSpec:
    engine: str
    image: str  # the image reference the pack tags
    served_model_name: str  # what clients send as "model"
    port: int  # the port the server listens on inside the container ($PORT overrides it)
    port_flag: str  # how the server command takes its port ("--port")
    health_path: str  # GET answers 200 once the model is loaded
    metrics_path: str | None  # Prometheus metrics, when the engine serves them
    healthcheck: tuple[str, ...]  # the image's HEALTHCHECK command (exec form; reads $PORT)
    start_period_s: int  # how long loading may take before failed health checks count
    profiles: tuple[Profile, ...]
    default_profile: str
    ipc_host: bool = False  # engines that share tensors between processes through /dev/shm
    user: str = IMAGE_USER
    env: tuple[tuple[str, str], ...] = field(default=())  # set in the image for every profile

    def __post_init__(self) -> None:
        names = [p.name for p in self.profiles]
        if not names or self.default_profile not in names or len(set(names)) != len(names):
            raise ValueError(f"run spec profiles {names} must be unique and include {self.default_profile!r}")

    @property
    def default(self) -> Profile:
        return self.profile(self.default_profile)

    def profile(self, name: str) -> Profile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise ArtifactInvalidError(
            f"This image has no profile {name!r}.",
            hint=f"Choose one of: {', '.join(p.name for p in self.profiles)}.",
        )

    @property
    def needs_gpus(self) -> bool:
        return self.default.device != "cpu"


# RENDERERS


def server_command(spec: RunSpec, *, profile: Profile | None = None) -> str:
    """The server's shell command with the port left as ``${PORT}`` (and extra arguments as ``"$@"``)."""
    chosen = profile or spec.default
    return " ".join(shlex.quote(a) for a in chosen.argv) + f' {spec.port_flag} "${{PORT}}" "$@"'


def entrypoint(spec: RunSpec) -> list[str]:
    """The image's ENTRYPOINT (exec form): the default profile's command, port from ``$PORT``, extra
    ``docker run IMAGE ARGS…`` appended."""
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in spec.default.env)
    command = ("exec env " + env + " " if env else "exec ") + server_command(spec)
    return ["/bin/sh", "-c", command, "serve"]


def device_flags(device: Device) -> list[str]:
    """``docker run`` flags that hand the container its accelerator."""
    if device == "cuda":
        return ["--gpus", "all"]
    if device == "rocm":  # AMD's documented flags for ROCm containers
        return ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]
    if device == "vulkan":
        return ["--device", "/dev/dri"]
    return []


def container_flags(spec: RunSpec, *, profile: Profile | None = None) -> list[str]:
    """The accelerator and shared-memory flags every ``docker run`` of this image needs."""
    flags = device_flags((profile or spec.default).device)
    if spec.ipc_host:
        flags.append("--ipc=host")
    return flags


def docker_run_argv(
    spec: RunSpec,
    *,
    name: str,
    host_port: int | None = None,
    network: Network = "bridge",
    restart: str | None = "unless-stopped",
    profile: Profile | None = None,
) -> list[str]:
    """The ``docker run -d`` line for a server: with ``network="host"`` the server listens on the host's
    ``host_port`` directly; with ``"bridge"`` the container port is published there."""
    chosen = profile or spec.default
    port = host_port or spec.port
    argv = ["docker", "run", "-d", "--name", name]
    if restart:
        argv += ["--restart", restart]
    argv += container_flags(spec, profile=chosen)
    if network == "host":
        argv += ["--network", "host", "-e", f"PORT={port}"]
    elif network == "none":
        argv += ["--network", "none"]
    else:
        argv += ["-p", f"{port}:{spec.port}"]
    argv.append(spec.image)
    return argv


def run_command(spec: RunSpec, **kwargs: Any) -> str:
    """``docker_run_argv`` as one shell line."""
    return shlex.join(docker_run_argv(spec, **kwargs))


# JSON


def run_spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    return {
        "version": RUN_SPEC_VERSION,
        "engine": spec.engine,
        "image": spec.image,
        "served_model_name": spec.served_model_name,
        "port": spec.port,
        "port_flag": spec.port_flag,
        "health_path": spec.health_path,
        "metrics_path": spec.metrics_path,
        "healthcheck": list(spec.healthcheck),
        "start_period_s": spec.start_period_s,
        "ipc_host": spec.ipc_host,
        "user": spec.user,
        "env": [list(pair) for pair in spec.env],
        "default_profile": spec.default_profile,
        "profiles": [
            {
                "name": p.name,
                "device": p.device,
                "argv": list(p.argv),
                "env": [list(pair) for pair in p.env],
                "gpus_per_node": p.gpus_per_node,
                "tensor_parallel_size": p.tensor_parallel_size,
                "pipeline_parallel_size": p.pipeline_parallel_size,
                "data_parallel_size": p.data_parallel_size,
                "nodes": p.nodes,
                "max_model_len": p.max_model_len,
                "description": p.description,
            }
            for p in spec.profiles
        ],
    }


def run_spec_json(spec: RunSpec) -> str:
    """Compact, key-sorted JSON: the same spec always gives the same bytes (reproducible images)."""
    return json.dumps(run_spec_to_dict(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pairs(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise _bad(f"{what} must be a list of [name, value] pairs")
    return tuple((p[0], p[1]) for p in value)


def _bad(why: str) -> ArtifactInvalidError:
    return ArtifactInvalidError(
        f"The image's run spec is not valid: {why}.",
        hint="The archive was not made by this EZ Runner version, or it is damaged: pack it again.",
    )


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(f"{key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def run_spec_from_dict(data: object) -> RunSpec:
    """Read a spec back (from an image label or file): untrusted input, so every field is checked."""
    if not isinstance(data, Mapping):
        raise _bad("it is not a JSON object")
    if data.get("version") != RUN_SPEC_VERSION:
        raise _bad(f"version {data.get('version')!r} is not {RUN_SPEC_VERSION}")
    profiles = []
    raw_profiles = data.get("profiles")
    if not isinstance(raw_profiles, list) or not raw_profiles:
        raise _bad("it has no profiles")
    for raw in raw_profiles:
        if not isinstance(raw, Mapping):
            raise _bad("a profile is not an object")
        device = _field(raw, "device", str)
        if device not in ("cuda", "rocm", "vulkan", "cpu"):
            raise _bad(f"unknown device {device!r}")
        argv = _field(raw, "argv", list)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise _bad("a profile's argv must be a non-empty list of strings")
        profiles.append(
            Profile(
                name=_field(raw, "name", str),
                device=device,
                argv=tuple(argv),
                env=_pairs(raw.get("env", []), "a profile's env"),
                gpus_per_node=_field(raw, "gpus_per_node", int),
                tensor_parallel_size=_field(raw, "tensor_parallel_size", int),
                pipeline_parallel_size=_field(raw, "pipeline_parallel_size", int),
                data_parallel_size=_field(raw, "data_parallel_size", int),
                nodes=_field(raw, "nodes", int),
                max_model_len=_field(raw, "max_model_len", int),
                description=str(raw.get("description", "")),
            )
        )
    healthcheck = _field(data, "healthcheck", list)
    metrics = data.get("metrics_path")
    try:
        return RunSpec(
            engine=_field(data, "engine", str),
            image=_field(data, "image", str),
            served_model_name=_field(data, "served_model_name", str),
            port=_field(data, "port", int),
            port_flag=_field(data, "port_flag", str),
            health_path=_field(data, "health_path", str),
            metrics_path=metrics if isinstance(metrics, str) else None,
            healthcheck=tuple(str(a) for a in healthcheck),
            start_period_s=_field(data, "start_period_s", int),
            profiles=tuple(profiles),
            default_profile=_field(data, "default_profile", str),
            ipc_host=bool(data.get("ipc_host", False)),
            user=str(data.get("user", IMAGE_USER)),
            env=_pairs(data.get("env", []), "env"),
        )
    except ValueError as error:
        raise _bad(str(error)) from error


def run_spec_from_json(text: str) -> RunSpec:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise _bad(f"it is not JSON ({error})") from error
    return run_spec_from_dict(data)


def run_spec_from_labels(labels: Mapping[str, str] | None) -> RunSpec | None:
    """The spec an image carries in its labels, or None for images packed before run specs existed."""
    text = (labels or {}).get(RUN_SPEC_LABEL)
    return run_spec_from_json(text) if text else None


__all__ = [
    "PLAN_PATH",
    "RUN_SPEC_LABEL",
    "RUN_SPEC_PATH",
    "Profile",
    "RunSpec",
    "container_flags",
    "device_flags",
    "docker_run_argv",
    "entrypoint",
    "run_command",
    "run_spec_from_dict",
    "run_spec_from_json",
    "run_spec_from_labels",
    "run_spec_json",
    "run_spec_to_dict",
    "server_command",
]


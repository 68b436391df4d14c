"""How a packed image's server starts, in one description: the run spec.

An engine turns its plan into a ``RunSpec``; everything that starts a container renders from it — the
image's own ENTRYPOINT, ``docker run`` lines (the CLI, the wizard, ``load.sh``), ``ezrunner run`` — so
no flag is written twice. The spec is baked into the image as JSON (``/etc/ezrunner/run-spec.json`` and
the ``io.ezrunner.run-spec`` label), so any later command can read it back from an archive or an image.

A spec has one or more *profiles* (ways to start: device, GPUs, parallelism, context) and names the
default one, the plan the user made; a pack adds one profile per neighbouring target the same image can serve
(``core.profiles``), each with the facts (``Needs``) that judge at start whether the server it lands on fits.
A one-node image's ENTRYPOINT runs ``core.profiles``' selection script first and starts the profile it
picks. Data-parallel replicas live in the server command (vLLM's
``--data-parallel-size``), so a one-node profile starts the same way whatever its parallelism. A multi-node
profile (``nodes > 1``, vLLM over Ray) starts differently per node, and its two roles render from here too:
the first node runs ``head_script`` (the image's ENTRYPOINT: Ray head, wait for every node, then the
server), every other node runs ``worker_script`` (join the head's Ray cluster); ``node_run_argv`` is the
``docker run`` line of either role, and the Kubernetes manifests use the same two scripts.

An image packed with ``--api-key-env NAME`` carries ``ApiKey(env=NAME, server_env=...)``: names only, never a
key. Its ENTRYPOINT refuses to start without ``$NAME``, copies it into the variable the engine's server reads
(``api_key_lines``), and every ``docker run`` line passes ``-e NAME``, which docker fills from its own
environment, so the key is on no command line and in no image, archive or log.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from core.errors import ArtifactInvalidError
from core.planning import Device

RUN_SPEC_VERSION = 1
RUN_SPEC_LABEL = "io.ezrunner.run-spec"
RUN_SPEC_PATH = "/etc/ezrunner/run-spec.json"
PLAN_PATH = "/etc/ezrunner/plan.json"
IMAGE_USER = "10001:10001"
# Ray's default head port, as vLLM's multi-node examples start it (examples/online_serving/run_cluster.sh).
RAY_HEAD_PORT = 6379
# How often a waiting node asks again (the head for its workers, a worker for the head).
RAY_RETRY_S = 5
# The variable a worker node's container reads the head node's address from.
HEAD_ADDRESS_ENV = "RAY_HEAD_ADDRESS"

# An environment variable name as POSIX shells take it (IEEE Std 1003.1, 8.1: letters, digits and '_').
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# How the ENTRYPOINT exits when the API key's variable is empty: EX_USAGE of sysexits.h, a configuration error.
MISSING_KEY_EXIT = 64

Role = Literal["head", "worker"]

Network = Literal["bridge", "host", "none"]

#: Where the image keeps the profile selection script (``core.profiles.selection_script``).
SELECT_SCRIPT_PATH = "/etc/ezrunner/select-profile.sh"
#: The variables the ENTRYPOINT reads a profile forced by load.sh or by hand from, and its context.
PROFILE_ENV = "EZRUNNER_PROFILE"
CONTEXT_ENV = "EZRUNNER_MAX_MODEL_LEN"
# Profile names travel through shell words and environment variables unquoted.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Needs:
    """What a server must have to start a profile: the facts the selection script judges fit with.

    GPU memory is the total one GPU reports (``nvidia-smi --query-gpu=memory.total``); the per-GPU use is
    modelled as ``gpu_fixed_bytes + gpu_kv_bytes_per_token × context`` out of ``gpu_memory_fraction`` of it, so
    a GPU with less than ``min_gpu_memory_bytes`` can still start the profile with a shorter context (through
    ``context_flag``) down to ``min_context`` tokens. Zero / empty: not checked.
    """

    min_gpu_memory_bytes: int = 0  # per GPU, for the profile's full max_model_len
    gpu_fixed_bytes: int = 0  # per GPU: weights + overhead, whatever the context
    gpu_kv_bytes_per_token: int = 0  # per GPU
    gpu_memory_fraction: float = 0.0  # the share of a GPU's total memory the engine may use
    min_compute_capability: str = ""  # "8.0"
    min_driver: str = ""  # "580.65.06": the GA driver of the image's CUDA
    min_cuda: str = ""  # "13.0": that CUDA, for messages
    min_ram_bytes: int = 0  # system RAM, for what runs from it (a CPU profile, llama.cpp's host share)
    context_flag: str = ""  # the server flag that sets the context ("--max-model-len"); "": cannot shorten
    min_context: int = 0  # the shortest context worth starting with

    @property
    def empty(self) -> bool:
        return self == Needs()


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
    nodes: int = 1  # > 1: the pipeline stages run on this many nodes joined by Ray
    max_model_len: int = 0
    description: str = ""  # "1 × NVIDIA H100 80GB SXM, 32,768 tokens"
    ray_port: int = 0  # the head node's Ray port when nodes > 1; 0 otherwise
    needs: Needs = Needs()  # what a server must have to start it (empty in specs made before profiles)

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


@dataclass(frozen=True)
class ApiKey:
    """Where the server's API key comes from at container start: never a value, only variable names.

    ``env`` is the variable the user chose at pack time (``--api-key-env NAME``): ``docker run -e NAME``,
    load.sh and the Kubernetes Secret fill it. ``server_env`` is the one the server itself reads (vLLM's
    ``VLLM_API_KEY``, llama-server's ``LLAMA_API_KEY``, the transformers image's proxy's own); the
    ENTRYPOINT copies the first into the second, so no key is ever on a command line or in the image.
    """

    env: str
    server_env: str

    def __post_init__(self) -> None:
        for name in (self.env, self.server_env):
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")


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
    api_key: ApiKey | None = None  # None: the server answers without a key

    def __post_init__(self) -> None:
        names = [p.name for p in self.profiles]
        if not names or self.default_profile not in names or len(set(names)) != len(names):
            raise ValueError(f"run spec profiles {names} must be unique and include {self.default_profile!r}")
        odd = [name for name in names if not _PROFILE_NAME.fullmatch(name)]
        if odd:
            raise ValueError(f"profile names {odd} must be letters, digits, '.', '_' and '-'")

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


def api_key_lines(spec: RunSpec) -> list[str]:
    """Shell lines that hand the server its API key: refuse to start without the pack's variable (a server
    packed to require a key never runs open by mistake), then copy it into the variable the server reads
    and drop the user's name for it. Only names are written here; the value stays in the environment."""
    key = spec.api_key
    if key is None:
        return []
    missing = (
        f"EZ Runner: this image was packed with --api-key-env {key.env}, and {key.env} is not set. "
        f"Start it with the API key clients must send in {key.env} (docker run -e {key.env} ...)."
    )
    lines = [
        f'if [ -z "${{{key.env}:-}}" ]; then echo {shlex.quote(missing)} >&2; exit {MISSING_KEY_EXIT}; fi',
        f'export {key.server_env}="${{{key.env}}}"',
    ]
    if key.env != key.server_env:
        lines.append(f"unset {key.env}")
    return lines


def _exec_server(spec: RunSpec, profile: Profile) -> str:
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in profile.env)
    command = ("exec env " + env + " " if env else "exec ") + server_command(spec, profile=profile)
    return "\n".join([*api_key_lines(spec), command])


def _context_argv(profile: Profile) -> list[str]:
    """The profile's argv as shell words, its context value replaced by ``$EZRUNNER_MAX_MODEL_LEN``."""
    words = [shlex.quote(a) for a in profile.argv]
    flag = profile.needs.context_flag
    if flag and flag in profile.argv[:-1]:
        words[profile.argv.index(flag) + 1] = f'"${{{CONTEXT_ENV}}}"'
    return words


def start_script(spec: RunSpec) -> str:
    """A one-node image's start: the selection script picks the profile for the GPUs (or CPU) present, or the
    one ``$EZRUNNER_PROFILE`` names, prints which and why (or refuses, naming the closest), then the chosen
    profile's server starts with the context that fits (``$EZRUNNER_MAX_MODEL_LEN`` when load.sh gave it)."""
    lines = [
        *api_key_lines(spec),  # first: an image packed to need a key never starts, or chooses, without it
        f'choice=$(/bin/sh {SELECT_SCRIPT_PATH} select "${{{PROFILE_ENV}:-}}") || exit $?',
        f"{CONTEXT_ENV}=${{{CONTEXT_ENV}:-${{choice#* }}}}",
        'case "${choice%% *}" in',
    ]
    for profile in spec.profiles:
        env = " ".join(f"{key}={shlex.quote(value)}" for key, value in profile.env)
        start = "exec env " + env + " " if env else "exec "
        command = " ".join(_context_argv(profile)) + f' {spec.port_flag} "${{PORT}}" "$@"'
        lines.append(f"  {profile.name}) {start}{command} ;;")
    lines += ["esac", 'echo "The profile selection chose ${choice%% *}, which this image does not have." >&2', "exit 1"]
    return "\n".join(lines)


def entrypoint(spec: RunSpec) -> list[str]:
    """The image's ENTRYPOINT (exec form): on one node the start script (profile selection, then the chosen
    profile's command, port from ``$PORT``, extra ``docker run IMAGE ARGS…`` appended); for a multi-node
    profile the head node's script, which ends in the server."""
    profile = spec.default
    command = head_script(spec, profile=profile) if profile.multi_node else start_script(spec)
    return ["/bin/sh", "-c", command, "serve"]


def _multi_node(spec: RunSpec, profile: Profile | None) -> Profile:
    chosen = profile or spec.default
    if not chosen.multi_node or chosen.ray_port <= 0:
        raise ArtifactInvalidError(
            f"The image's profile {chosen.name!r} runs on one node, so it has no head and worker roles.",
            hint="Start it with the image's own command (load.sh, ezrunner run or docker run).",
        )
    return chosen


def head_script(spec: RunSpec, *, profile: Profile | None = None) -> str:
    """The first node's shell script: start the Ray head, wait until all ``nodes`` have joined (vLLM places
    its pipeline stages on the GPUs Ray sees at start-up), then exec the server on ``$PORT``."""
    chosen = _multi_node(spec, profile)
    ready = (  # double quotes inside, so that the shell's single quotes wrap it unbroken
        'import sys, ray; ray.init(address="auto", logging_level="ERROR"); '
        f'sys.exit(0 if sum(1 for n in ray.nodes() if n["Alive"]) >= {chosen.nodes} else 1)'
    )
    return "\n".join(
        [
            f"ray start --head --port={chosen.ray_port} --disable-usage-stats",
            f"echo 'Waiting for {chosen.nodes - 1} worker node(s) to join the Ray head on port {chosen.ray_port}'",
            f"until python3 -c {shlex.quote(ready)}; do sleep {RAY_RETRY_S}; done",
            _exec_server(spec, chosen),
        ]
    )


def worker_script(
    spec: RunSpec, *, head_address: str = "${" + HEAD_ADDRESS_ENV + "}", profile: Profile | None = None
) -> str:
    """Every other node's shell script: join the Ray head at ``head_address`` (a host name, an IP, or a shell
    expansion read in the container: by default ``$RAY_HEAD_ADDRESS``, so the script is the same on every
    worker) and stay in the foreground. Retried, because the head may not listen yet and a worker that exits
    takes its pipeline stage with it."""
    chosen = _multi_node(spec, profile)
    target = f'"{head_address}:{chosen.ray_port}"' if head_address.startswith("${") else shlex.quote(
        f"{head_address}:{chosen.ray_port}"
    )
    return "\n".join(
        [
            f"until ray start --address={target} --block --disable-usage-stats; do",
            f"  echo 'The Ray head does not answer yet; trying again in {RAY_RETRY_S} s'",
            f"  sleep {RAY_RETRY_S}",
            "done",
        ]
    )


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
    env: tuple[tuple[str, str], ...] = (),
) -> list[str]:
    """The ``docker run -d`` line for a server: with ``network="host"`` the server listens on the host's
    ``host_port`` directly; with ``"bridge"`` the container port is published there; ``env`` adds ``-e``
    variables (load.sh's chosen profile)."""
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
    argv += api_key_flags(spec)
    for key, value in env:
        argv += ["-e", f"{key}={value}"]
    argv.append(spec.image)
    return argv


def api_key_flags(spec: RunSpec) -> list[str]:
    """``-e NAME``: docker copies the variable from the environment of the ``docker`` command itself, so the
    key never appears on a command line (``ps``, shell history, logs)."""
    return ["-e", spec.api_key.env] if spec.api_key is not None else []


def node_run_argv(
    spec: RunSpec,
    *,
    role: Role,
    name: str,
    node_address: str,
    head_address: str | None = None,
    host_port: int | None = None,
    profile: Profile | None = None,
) -> list[str]:
    """The ``docker run -d`` line of one node of a multi-node profile: host networking (Ray and NCCL reach the
    other nodes by the host's address; vLLM's examples/online_serving/run_cluster.sh), this node's address as
    ``VLLM_HOST_IP``; the head runs the image's ENTRYPOINT (its server on ``host_port``), a worker the
    worker script, which joins the head at ``head_address`` (passed as ``$RAY_HEAD_ADDRESS``)."""
    chosen = _multi_node(spec, profile)
    argv = ["docker", "run", "-d", "--name", name, "--restart", "unless-stopped"]
    argv += container_flags(spec, profile=chosen)
    argv += ["--network", "host", "-e", f"VLLM_HOST_IP={node_address}"]
    if role == "head":
        return [*argv, "-e", f"PORT={host_port or spec.port}", *api_key_flags(spec), spec.image]
    if not head_address:
        raise ArtifactInvalidError(
            "A worker node needs the head node's address.", hint="Give the first node's IP address or host name."
        )
    script = worker_script(spec, profile=chosen)
    return [*argv, "-e", f"{HEAD_ADDRESS_ENV}={head_address}", "--entrypoint", "/bin/sh", spec.image, "-c", script]


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
        # only where a key is required: specs without one keep the bytes of earlier versions
        **({"api_key": {"env": spec.api_key.env, "server_env": spec.api_key.server_env}} if spec.api_key else {}),
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
                # only where it means something: one-node specs keep the bytes of earlier versions
                **({"ray_port": p.ray_port} if p.multi_node else {}),
                **({"needs": _needs_to_dict(p.needs)} if not p.needs.empty else {}),
            }
            for p in spec.profiles
        ],
    }


def _needs_to_dict(needs: Needs) -> dict[str, Any]:
    return {f.name: getattr(needs, f.name) for f in fields(Needs)}


def _needs_from_dict(value: object) -> Needs:
    """A profile's needs, absent in specs packed before profiles (then nothing is checked)."""
    if value is None:
        return Needs()
    if not isinstance(value, Mapping):
        raise _bad("a profile's 'needs' is not an object")
    read: dict[str, Any] = {}
    for f in fields(Needs):
        default = getattr(Needs(), f.name)
        item = value.get(f.name, default)
        if isinstance(default, float):
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and 0 <= item <= 1
            item = float(item) if ok else item
        elif isinstance(default, int):
            ok = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        else:
            ok = isinstance(item, str) and re.fullmatch(r"[A-Za-z0-9._-]{0,40}", item) is not None
        if not ok:
            raise _bad(f"a profile's need {f.name!r} is {item!r}")
        read[f.name] = item
    return Needs(**read)


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


_SIZES = ("gpus_per_node", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "nodes")


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
        sizes = {key: _field(raw, key, int) for key in _SIZES}
        if any(value < (0 if key == "gpus_per_node" else 1) for key, value in sizes.items()):
            raise _bad(f"a profile's sizes {sizes} must be positive")
        ray_port = raw.get("ray_port", 0)  # absent in specs of one-node profiles
        if not isinstance(ray_port, int) or isinstance(ray_port, bool) or not 0 <= ray_port <= 65535:
            raise _bad(f"'ray_port' {ray_port!r} is not a port")
        if sizes["nodes"] > 1 and ray_port == 0:
            raise _bad("a multi-node profile has no 'ray_port'")
        profiles.append(
            Profile(
                name=_field(raw, "name", str),
                device=device,
                argv=tuple(argv),
                env=_pairs(raw.get("env", []), "a profile's env"),
                **sizes,
                max_model_len=_field(raw, "max_model_len", int),
                description=str(raw.get("description", "")),
                ray_port=ray_port,
                needs=_needs_from_dict(raw.get("needs")),
            )
        )
    healthcheck = _field(data, "healthcheck", list)
    metrics = data.get("metrics_path")
    try:
        api_key = _api_key(data.get("api_key"))
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
            api_key=api_key,
        )
    except ValueError as error:
        raise _bad(str(error)) from error


def _api_key(raw: object) -> ApiKey | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not all(isinstance(raw.get(k), str) for k in ("env", "server_env")):
        raise _bad("'api_key' must be an object with the names 'env' and 'server_env'")
    return ApiKey(env=raw["env"], server_env=raw["server_env"])  # ValueError on a bad name


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
    "CONTEXT_ENV",
    "ENV_NAME",
    "HEAD_ADDRESS_ENV",
    "PLAN_PATH",
    "PROFILE_ENV",
    "RAY_HEAD_PORT",
    "RUN_SPEC_LABEL",
    "RUN_SPEC_PATH",
    "SELECT_SCRIPT_PATH",
    "ApiKey",
    "Needs",
    "Profile",
    "RunSpec",
    "api_key_flags",
    "api_key_lines",
    "container_flags",
    "device_flags",
    "docker_run_argv",
    "entrypoint",
    "head_script",
    "node_run_argv",
    "run_command",
    "run_spec_from_dict",
    "run_spec_from_json",
    "run_spec_from_labels",
    "run_spec_json",
    "run_spec_to_dict",
    "server_command",
    "start_script",
    "worker_script",
]


"""Kubernetes manifests and a compose file for a packed image, rendered from its run spec.

Like the image's ENTRYPOINT, ``docker run`` and ``load.sh``, these render from ``core.runspec.RunSpec`` alone:
the server command, its port, the health path, the accelerator and /dev/shm needs, the start-up budget. A
one-node plan runs the image's own ENTRYPOINT (so no server flag is written here), as a Deployment and a
ClusterIP Service. A data-parallel plan stays one pod holding every GPU of its replicas: the server command
balances requests over them (vLLM's ``--data-parallel-size``), as on one host. A multi-node plan
(``Profile.nodes > 1``, vLLM only) becomes a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1): every pod of a
group holds ``gpus_per_node`` GPUs, the leader runs the image's ENTRYPOINT (for such a profile the run spec's
head script: Ray head, wait for the workers, then the server with its tensor and pipeline parallel sizes),
the workers run the run spec's worker script (join the leader's Ray cluster), and the Service selects the
leader only — vLLM's documented recipe
(https://docs.vllm.ai/en/latest/deployment/frameworks/lws.html and
https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html, "Multi-node deployment").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from core import errors
from core.errors import ArtifactInvalidError, InvalidOptionsError
from core.planning import Device
from core.refs import validate_image_ref
from core.render import ezrunner_version
from core.runspec import Profile, RunSpec, worker_script

#: Extended resource names of the GPU device plugins: NVIDIA's k8s-device-plugin and AMD's k8s-device-plugin.
#: A Vulkan device has no one plugin (Intel's is gpu.intel.com/i915, AMD's amd.com/gpu): the caller names it.
GPU_RESOURCES: Mapping[Device, str] = MappingProxyType({"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"})
#: The image's HEALTHCHECK (templates/base.Dockerfile.j2): every 15 s, 5 s timeout, unhealthy after 3 misses.
HEALTH_INTERVAL_S = 15
HEALTH_TIMEOUT_S = 5
HEALTH_RETRIES = 3
#: How often the startup and readiness probes ask; the startup probe's failureThreshold spreads the budget.
PROBE_PERIOD_S = 10
#: /dev/shm per GPU: vLLM's LWS example gives its 8-GPU pods 15 GiB (docs/deployment/frameworks/lws.md).
SHM_BYTES_PER_GPU = 2 << 30
SHM_MIN_BYTES = 2 << 30
#: The variable LeaderWorkerSet sets in every pod of a group to the leader pod's address
#: (vLLM's LWS example uses it: https://docs.vllm.ai/en/latest/deployment/frameworks/lws.html).
LWS_LEADER_ADDRESS_ENV = "LWS_LEADER_ADDRESS"
#: The video group's gid in the Ubuntu-based ROCm images: what ``docker run --group-add video`` resolves to.
ROCM_VIDEO_GID = 44
API_KEY_SECRET_KEY = "api-key"
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1035 label: Service and object names
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # RFC 1123 label
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: Room left in a 63-character name for the suffixes Kubernetes and LWS add to pod names ("-0-1", "-7d9f…").
_NAME_MAX = 40
_MODEL_KEY = "io.ezrunner/model"
_ENGINE_KEY = "io.ezrunner/engine"


# NAMES


def resource_name(spec: RunSpec) -> str:
    """A Kubernetes object (and compose service) name from the served model's name: ``org/Llama-3.1-8B`` →
    ``llama-3-1-8b``."""
    base = spec.served_model_name.rsplit("/", 1)[-1].lower()
    name = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    if not name or not name[0].isalpha():
        name = f"model-{name}".rstrip("-")
    return name[:_NAME_MAX].rstrip("-")


def _label_value(text: str) -> str:
    """``text`` as a label value: 63 characters of letters, digits, '-', '_' and '.', alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _check_name(name: str) -> str:
    if not _DNS_LABEL.fullmatch(name) or len(name) > _NAME_MAX:
        raise InvalidOptionsError(
            f"--name {name!r} is not a usable Kubernetes name.",
            hint=f"Use up to {_NAME_MAX} lowercase letters, digits and '-', starting with a letter.",
        )
    return name


def _check_inputs(*, image: str, namespace: str | None, api_key_env: str | None) -> None:
    validate_image_ref(image, field=errors.IMAGE)
    if namespace is not None and not _NAMESPACE.fullmatch(namespace):
        raise InvalidOptionsError(
            f"--namespace {namespace!r} is not a valid Kubernetes namespace.",
            hint="Use up to 63 lowercase letters, digits and '-', starting and ending with a letter or digit.",
        )
    if api_key_env is not None and not _ENV_NAME.fullmatch(api_key_env):
        raise InvalidOptionsError(
            f"--api-key-env {api_key_env!r} is not an environment variable name.",
            hint="Use letters, digits and '_', not starting with a digit, e.g. VLLM_API_KEY.",
        )


def key_variable(spec: RunSpec, given: str | None) -> str | None:
    """The variable the container takes its API key from: the one the image was packed with
    (``--api-key-env`` at pack time, in the run spec), or for an image packed without one, ``given``."""
    packed = spec.api_key.env if spec.api_key is not None else None
    if given is not None and packed is not None and given != packed:
        raise InvalidOptionsError(
            f"This image takes its API key from {packed} (it was packed with --api-key-env {packed}), not {given}.",
            hint=f"Drop --api-key-env, or pass --api-key-env {packed}.",
            field=errors.API_KEY_ENV,
        )
    return given or packed


# WHAT A POD NEEDS


def _gpu_resource(device: Device, override: str | None) -> str:
    if override is not None:
        if not _RESOURCE_NAME.fullmatch(override):
            raise InvalidOptionsError(
                f"--gpu-resource {override!r} is not an extended resource name.",
                hint="Use the name your GPU device plugin advertises, e.g. nvidia.com/gpu or gpu.intel.com/i915.",
            )
        return override
    resource = GPU_RESOURCES.get(device)
    if resource is None:
        raise InvalidOptionsError(
            f"This image runs on a {device.upper()} device, which no one Kubernetes device plugin names.",
            hint="Pass --gpu-resource with the resource your device plugin advertises, e.g. gpu.intel.com/i915.",
        )
    return resource


def _user(spec: RunSpec) -> tuple[int, int]:
    uid, _, gid = spec.user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit() or int(uid) == 0:
        raise ArtifactInvalidError(
            f"The run spec's user {spec.user!r} is not a numeric non-root uid[:gid].",
            hint="Pack the image again with this EZ Runner version.",
        )
    return int(uid), int(gid or uid)


def _shm_size(gpus: int) -> str:
    return f"{max(SHM_MIN_BYTES, gpus * SHM_BYTES_PER_GPU) >> 30}Gi"


def _probes(spec: RunSpec) -> dict[str, Any]:
    check = {"httpGet": {"path": spec.health_path, "port": "http"}, "timeoutSeconds": HEALTH_TIMEOUT_S}
    return {
        # Liveness and readiness only start once the startup probe has passed: loading may take its whole budget.
        "startupProbe": {
            **check,
            "periodSeconds": PROBE_PERIOD_S,
            # The image's own start period: it grows with the model's size, and the run spec of a multi-node
            # plan adds the time its workers may take to join.
            "failureThreshold": math.ceil(spec.start_period_s / PROBE_PERIOD_S),
        },
        "readinessProbe": {**check, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": HEALTH_RETRIES},
        "livenessProbe": {**check, "periodSeconds": HEALTH_INTERVAL_S, "failureThreshold": HEALTH_RETRIES},
    }


def _literal(text: str) -> str:
    """``text`` as Kubernetes passes it on: it expands ``$(NAME)`` in command, args and env values and turns
    ``$$`` into ``$``, so those two get an escaping ``$`` (``${PORT}`` and ``"$@"`` are the shell's, untouched)."""
    return re.sub(r"\$(?=[$(])", "$$", text)


def _env(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    return [{"name": key, "value": _literal(value)} for key, value in pairs]


def _api_key_env(api_key_env: str | None, secret: str) -> list[dict[str, Any]]:
    if api_key_env is None:
        return []
    return [{"name": api_key_env, "valueFrom": {"secretKeyRef": {"name": secret, "key": API_KEY_SECRET_KEY}}}]


def _container(
    *,
    spec: RunSpec,
    profile: Profile,
    image: str,
    name: str,
    gpu_resource: str | None,
    serves: bool,
    env: list[dict[str, Any]],
    command: list[str] | None = None,
    ray_port: int = 0,
) -> dict[str, Any]:
    uid, gid = _user(spec)
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent"}
    if command is not None:
        container["command"] = [_literal(part) for part in command]
    container["env"] = [{"name": "PORT", "value": str(spec.port)}, *_env(spec.env), *env]
    if serves:
        container["ports"] = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    if ray_port:  # informational: the workers reach the leader pod directly through LWS's headless Service
        container.setdefault("ports", []).append({"name": "ray", "containerPort": ray_port, "protocol": "TCP"})
    if profile.device != "cpu" and profile.gpus_per_node > 0:
        resource = _gpu_resource(profile.device, gpu_resource)
        # Extended resources are requested by their limit alone (requests default to it and may not differ).
        container["resources"] = {"limits": {resource: str(profile.gpus_per_node)}}
    if serves:
        container.update(_probes(spec))
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "capabilities": {"drop": ["ALL"]},
    }
    if spec.ipc_host:
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    return container


def _pod_spec(*, spec: RunSpec, profile: Profile, container: dict[str, Any]) -> dict[str, Any]:
    uid, gid = _user(spec)
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if profile.device == "rocm":  # the device nodes /dev/kfd and /dev/dri belong to the video group
        security["supplementalGroups"] = [ROCM_VIDEO_GID]
    pod: dict[str, Any] = {"securityContext": security, "containers": [container]}
    if spec.ipc_host:
        # The Kubernetes form of `docker run --ipc=host`: a RAM-backed /dev/shm larger than the runtime's 64 MiB.
        pod["volumes"] = [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _shm_size(profile.gpus_per_node)}}
        ]
    return pod


# MULTI-NODE (vLLM ON RAY)


def _check_multi_node(spec: RunSpec, profile: Profile) -> None:
    """A LeaderWorkerSet needs every pod to hold the same GPUs: the stages' TP groups, no replicas."""
    if spec.engine != "vllm" or profile.ray_port <= 0:
        raise ArtifactInvalidError(
            f"The run spec asks for {profile.nodes} nodes, and only vLLM plans (with a Ray port) run across "
            f"nodes; this one is {spec.engine}'s.",
            hint="Plan and pack again for one node, or with the vLLM engine.",
        )
    if profile.data_parallel_size != 1 or profile.pipeline_parallel_size != profile.nodes or (
        profile.tensor_parallel_size != profile.gpus_per_node
    ):
        raise ArtifactInvalidError(
            f"The run spec's profile {profile.name!r} does not add up: tensor {profile.tensor_parallel_size} × "
            f"pipeline {profile.pipeline_parallel_size} × data {profile.data_parallel_size} parallel ranks for "
            f"{profile.nodes} nodes of {profile.gpus_per_node} GPUs.",
            hint="Plan and pack again: a multi-node plan has one pipeline stage per node and no replicas.",
        )


# KUBERNETES


def kubernetes_objects(
    *,
    spec: RunSpec,
    image: str,
    namespace: str | None = None,
    name: str | None = None,
    api_key_env: str | None = None,
    api_key: str | None = None,
    gpu_resource: str | None = None,
) -> list[dict[str, Any]]:
    """The objects that run ``spec``'s default profile from ``image``: [Secret,] Deployment + Service for one
    node, [Secret,] LeaderWorkerSet + Service for several.

    ``api_key_env`` is the variable the container takes its API key from: by default the one the image was
    packed with (``core.runspec.ApiKey.env``), for an image packed without one e.g. VLLM_API_KEY; it is filled
    from the Secret ``<name>-api-key`` (key ``api-key``), which is rendered too when ``api_key`` gives its value.
    """
    _check_inputs(image=image, namespace=namespace, api_key_env=api_key_env)
    api_key_env = key_variable(spec, api_key_env)
    if api_key is not None and api_key_env is None:
        raise InvalidOptionsError("An API key was given without --api-key-env.", hint="Name the variable too.")
    profile = spec.default
    name = _check_name(name) if name is not None else resource_name(spec)
    secret = f"{name}-api-key"
    labels = {
        "app.kubernetes.io/name": name,
        _MODEL_KEY: _label_value(spec.served_model_name),
        _ENGINE_KEY: _label_value(spec.engine),
    }
    annotations = {_MODEL_KEY: spec.served_model_name, "io.ezrunner/image": spec.image}
    if profile.description:
        annotations["io.ezrunner/profile"] = profile.description

    def metadata(object_name: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": object_name}
        if namespace is not None:
            meta["namespace"] = namespace
        meta["labels"] = dict(labels)
        meta["annotations"] = dict(annotations)
        return meta

    objects: list[dict[str, Any]] = []
    if api_key is not None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": metadata(secret),
                "type": "Opaque",
                "stringData": {API_KEY_SECRET_KEY: api_key},
            }
        )
    if profile.nodes > 1:
        objects.append(
            _leader_worker_set(
                spec=spec,
                image=image,
                labels=labels,
                metadata=metadata(name),
                api_key_env=api_key_env,
                secret=secret,
                gpu_resource=gpu_resource,
            )
        )
        selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "leader"}
    else:
        selector = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "server"}
        container = _container(
            spec=spec,
            profile=profile,
            image=image,
            name="server",
            gpu_resource=gpu_resource,
            serves=True,
            env=_api_key_env(api_key_env, secret),
        )  # no command: the image's ENTRYPOINT is the run spec's default profile already
        objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata(name),
                "spec": {
                    "replicas": 1,
                    # A rolling update would start the new pod while the old one still holds the GPUs.
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": {**labels, **selector}},
                        "spec": _pod_spec(spec=spec, profile=profile, container=container),
                    },
                },
            }
        )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )
    return objects


def _leader_worker_set(
    *,
    spec: RunSpec,
    image: str,
    labels: dict[str, str],
    metadata: dict[str, Any],
    api_key_env: str | None,
    secret: str,
    gpu_resource: str | None,
) -> dict[str, Any]:
    profile = spec.default
    _check_multi_node(spec, profile)
    # vLLM's multi-node guide: each node's VLLM_HOST_IP is its own address (here the pod's).
    host_ip = [{"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    leader = _container(
        spec=spec,
        profile=profile,
        image=image,
        name="leader",
        gpu_resource=gpu_resource,
        serves=True,
        env=[*host_ip, *_api_key_env(api_key_env, secret)],
        ray_port=profile.ray_port,
    )  # no command: the image's ENTRYPOINT is the run spec's head script for a multi-node profile
    worker = _container(
        spec=spec,
        profile=profile,
        image=image,
        name="worker",
        gpu_resource=gpu_resource,
        serves=False,
        # The worker script replaces the ENTRYPOINT, so the profile's own environment is set here: the vLLM
        # workers Ray starts on this node inherit their raylet's.
        env=[*_env(profile.env), *host_ip],
        command=["/bin/sh", "-c", worker_script(spec, head_address="${" + LWS_LEADER_ADDRESS_ENV + "}")],
    )
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            # Workers start with the leader: the leader only turns ready once they have joined its Ray cluster.
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": profile.nodes,
                # A Ray cluster does not survive losing a member: any restart starts the whole group again.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": {**labels, "app.kubernetes.io/component": "leader"}},
                    "spec": _pod_spec(spec=spec, profile=profile, container=leader),
                },
                "workerTemplate": {
                    "metadata": {"labels": {**labels, "app.kubernetes.io/component": "worker"}},
                    "spec": _pod_spec(spec=spec, profile=profile, container=worker),
                },
            },
        },
    }


def kubernetes_manifests(
    *,
    spec: RunSpec,
    image: str,
    namespace: str | None = None,
    name: str | None = None,
    api_key_env: str | None = None,
    api_key: str | None = None,
    gpu_resource: str | None = None,
) -> str:
    """``kubernetes_objects`` as one multi-document YAML file for ``kubectl apply -f``, with a comment header."""
    objects = kubernetes_objects(
        spec=spec,
        image=image,
        namespace=namespace,
        name=name,
        api_key_env=api_key_env,
        api_key=api_key,
        gpu_resource=gpu_resource,
    )
    profile = spec.default
    api_key_env = key_variable(spec, api_key_env)
    chosen = objects[-1]["metadata"]["name"]
    ns = f" -n {namespace}" if namespace else ""
    header = [
        f"# {spec.served_model_name} served by {spec.engine}: Kubernetes manifests generated by EZ Runner "
        f"{ezrunner_version()} from the image's run spec.",
        f"# Image: {image}. Every node that runs a pod must be able to pull it: push the loaded image to a",
        "# registry the cluster reaches (and name it with --image), or import the archive on each node.",
    ]
    if profile.nodes > 1:
        header.append(
            f"# {profile.nodes} pods of {profile.gpus_per_node} GPUs in one LeaderWorkerSet group: install the "
            "LeaderWorkerSet controller first (https://lws.sigs.k8s.io/docs/installation/)."
        )
    elif profile.data_parallel_size > 1:
        header.append(
            f"# One pod of {profile.gpus_per_node} GPUs: vLLM runs {profile.data_parallel_size} replicas of "
            f"{profile.tensor_parallel_size} GPU(s) inside it and balances requests over them behind one port."
        )
    if api_key_env is not None and api_key is None:
        header.append(
            f"# Create the API key first: kubectl create secret generic {chosen}-api-key{ns} "
            f"--from-file={API_KEY_SECRET_KEY}=./api-key.txt"
        )
    header.append(f"# Apply: kubectl apply{ns} -f FILE; then: kubectl port-forward{ns} svc/{chosen} {spec.port}")
    return "\n".join(header) + "\n" + _dump_all(objects)


# COMPOSE


def compose_document(
    *,
    spec: RunSpec,
    image: str,
    name: str | None = None,
    host_port: int | None = None,
    api_key_env: str | None = None,
) -> dict[str, Any]:
    """A compose file's content for ``spec``'s default profile on one host, as ``docker run`` would start it."""
    _check_inputs(image=image, namespace=None, api_key_env=api_key_env)
    api_key_env = key_variable(spec, api_key_env)
    profile = spec.default
    if profile.nodes > 1:
        raise InvalidOptionsError(
            f"This plan runs on {profile.nodes} nodes; a compose file starts containers on one host.",
            hint="Generate Kubernetes manifests instead (ezrunner generate k8s): they start a LeaderWorkerSet.",
        )
    if host_port is not None and not 1 <= host_port <= 65535:
        raise InvalidOptionsError(f"--host-port {host_port} is out of range.", hint="Use a port from 1 to 65535.")
    name = _check_name(name) if name is not None else resource_name(spec)
    environment = {"PORT": str(spec.port), **{key: _compose_literal(value) for key, value in spec.env}}
    if api_key_env is not None:
        # Compose fills it from the shell or an .env file beside compose.yaml, and refuses to start without it.
        environment[api_key_env] = f"${{{api_key_env}:?set {api_key_env} to the API key clients must send}}"
    service: dict[str, Any] = {
        "image": image,
        "restart": "unless-stopped",
        "ports": [f"{host_port or spec.port}:{spec.port}"],
        "environment": environment,
        "labels": {"io.ezrunner.model": spec.served_model_name, "io.ezrunner.engine": spec.engine},
        "healthcheck": {
            "test": ["CMD", *(_compose_literal(part) for part in spec.healthcheck)],
            "interval": f"{HEALTH_INTERVAL_S}s",
            "timeout": f"{HEALTH_TIMEOUT_S}s",
            "retries": HEALTH_RETRIES,
            "start_period": f"{spec.start_period_s}s",
        },
    }
    if spec.ipc_host:
        service["ipc"] = "host"
    if profile.device == "cuda":
        service["deploy"] = {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": max(1, profile.gpus_per_node), "capabilities": ["gpu"]}]
                }
            }
        }
    elif profile.device == "rocm":  # the same devices and group as core.runspec.device_flags
        service["devices"] = ["/dev/kfd", "/dev/dri"]
        service["group_add"] = ["video"]
    elif profile.device == "vulkan":
        service["devices"] = ["/dev/dri"]
    return {"name": name, "services": {name: service}}


def _compose_literal(text: str) -> str:
    """``text`` as compose passes it on: compose interpolates ``$VAR`` and ``${VAR}`` from the host, and ``$$`` is
    its literal ``$`` (a health check's ``${PORT}`` is the container shell's)."""
    return text.replace("$", "$$")


def compose_file(
    *,
    spec: RunSpec,
    image: str,
    name: str | None = None,
    host_port: int | None = None,
    api_key_env: str | None = None,
) -> str:
    """``compose_document`` as compose.yaml text for ``docker compose up -d``, with a comment header."""
    document = compose_document(spec=spec, image=image, name=name, host_port=host_port, api_key_env=api_key_env)
    header = [
        f"# {spec.served_model_name} served by {spec.engine}: a compose file generated by EZ Runner "
        f"{ezrunner_version()} from the image's run spec.",
        "# Load the archive first (load.sh, or docker load), then: docker compose up -d",
    ]
    return "\n".join(header) + "\n" + _dump_all([document])


# YAML


class _Dumper(yaml.SafeDumper):
    """Block-style YAML the way kubectl users read it: list items indented under their key, shell scripts as
    literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &anchors / *aliases: each object reads on its own


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump_all(documents: list[dict[str, Any]]) -> str:
    # No line folding: a folded health check or path reads as two words to a person copying it.
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 16)


__all__ = [
    "API_KEY_SECRET_KEY",
    "GPU_RESOURCES",
    "LWS_API_VERSION",
    "compose_document",
    "compose_file",
    "kubernetes_manifests",
    "kubernetes_objects",
    "resource_name",
]

"""Kubernetes manifests and compose files rendered from a real plan's run spec, validated offline: built-in kinds
with ``kubernetes-validate --strict`` (its Python API), the LeaderWorkerSet against its vendored CRD schema, the
compose file against the vendored compose-spec (tests/fixtures/schemas/README.md says where each comes from)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from core.errors import ArtifactInvalidError, InvalidOptionsError
from core.hardware import describe_target
from core.hubs.base import ModelFile
from core.manifests import compose_document, compose_file, kubernetes_manifests, kubernetes_objects, resource_name
from core.plan import Options, plan
from core.render import render
from core.runspec import RunSpec, entrypoint
from tests.unit.test_sizing import model_info

SCHEMAS = Path(__file__).resolve().parent.parent / "fixtures" / "schemas"
KUBERNETES_VERSION = "1.33.0"  # a release every maintained cluster runs or has passed
IMAGE = "registry.internal:5000/llm/llama:1"


def _spec(name: str, *, gpu: str, gpus: int, weights_gib: float, **options: Any) -> RunSpec:
    """The run spec a pack of ``name`` bakes in, for a model whose files weigh ``weights_gib``."""
    files = (ModelFile("model.safetensors", int(weights_gib * 2**30)), ModelFile("config.json", 700))
    model = dataclasses.replace(model_info(name), files=files)
    the_plan = plan(model=model, target=describe_target(gpu_preset=gpu, gpu_count=gpus), options=Options(**options))
    assert the_plan.fits, [w.text for w in the_plan.warnings]
    return render(plan=the_plan).run_spec


@pytest.fixture(scope="module")
def llama_8b_on_2_l4() -> RunSpec:
    return _spec("Llama-3.1-8B-Instruct", gpu="l4", gpus=2, weights_gib=14.96)


@pytest.fixture(scope="module")
def llama_70b_on_2_nodes() -> RunSpec:
    return _spec("Llama-3.1-70B", gpu="a100-40gb", gpus=4, weights_gib=131.4, nodes=2)


def _validate_builtin(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _strict(node: Any) -> Any:
    """A CRD schema as the API server applies it with ``kubectl apply --validate=strict``: an unknown field is an
    error (the schema itself only lists the known ones; the server prunes or rejects the rest), except under
    ``x-kubernetes-preserve-unknown-fields``."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def _lws_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _strict(yaml.safe_load((SCHEMAS / "leaderworkerset-v0.10.0.openapi.yaml").read_text()))
    return schema


def test_strict_lws_schema_rejects_unknown_and_mistyped_fields(llama_70b_on_2_nodes: RunSpec) -> None:
    lws = _by_kind(kubernetes_objects(spec=llama_70b_on_2_nodes, image=IMAGE))["LeaderWorkerSet"]
    jsonschema.validate(lws, _lws_schema())
    for path, value in ((("spec", "bogus"), 1), (("spec", "leaderWorkerTemplate", "size"), "2")):
        broken = json.loads(json.dumps(lws))
        *parents, last = path
        node = broken
        for key in parents:
            node = node[key]
        node[last] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _lws_schema())


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(set(kinds)) == len(kinds), kinds
    return {o["kind"]: o for o in objects}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ONE NODE: DEPLOYMENT + SERVICE


def test_8b_on_2_l4_gives_a_valid_deployment_and_service(llama_8b_on_2_l4: RunSpec) -> None:
    spec = llama_8b_on_2_l4
    text = kubernetes_manifests(spec=spec, image=IMAGE, namespace="llm")
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    assert documents == kubernetes_objects(spec=spec, image=IMAGE, namespace="llm")  # the YAML says the same
    objects = _by_kind(documents)
    assert set(objects) == {"Deployment", "Service"}
    for document in documents:
        _validate_builtin(document)
        assert document["metadata"]["namespace"] == "llm"

    deployment, service = objects["Deployment"], objects["Service"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert "command" not in container and "args" not in container  # the image's ENTRYPOINT is the run spec's
    # the GPUs: the plan's per node, as a limit (an extended resource's request defaults to it)
    assert spec.default.gpus_per_node == 2
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    # probes on the health path at the plan's port
    assert container["ports"] == [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= spec.start_period_s
    # /dev/shm: a memory-backed emptyDir, the Kubernetes form of --ipc=host
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    (volume,) = pod["volumes"]
    assert volume["name"] == "dshm" and volume["emptyDir"]["medium"] == "Memory"
    # not root, in the pod and the container
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the Service reaches the Deployment's pods, on the server's port
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(service["spec"]["selector"], labels)
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["ports"] == [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}]


def test_startup_budget_grows_with_the_model() -> None:
    small = _spec("Llama-3.1-8B-Instruct", gpu="h100", gpus=1, weights_gib=14.96)
    large = _spec("Llama-3.1-70B", gpu="h100", gpus=4, weights_gib=131.4)

    def budget(spec: RunSpec) -> int:
        deployment = _by_kind(kubernetes_objects(spec=spec, image=IMAGE))["Deployment"]
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        return int(probe["periodSeconds"] * probe["failureThreshold"])

    assert budget(small) >= small.start_period_s and budget(large) >= large.start_period_s
    assert budget(large) > budget(small) + 500  # 116 GiB more to read at the assumed 200 MiB/s


def test_api_key_comes_from_a_secret(llama_8b_on_2_l4: RunSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    referenced = kubernetes_manifests(spec=llama_8b_on_2_l4, image=IMAGE, api_key_env="VLLM_API_KEY")
    objects = _by_kind([d for d in yaml.safe_load_all(referenced) if d])
    assert "Secret" not in objects  # no key given: the header says how to create it
    assert "kubectl create secret generic llama-3-1-8b-instruct-api-key" in referenced
    env = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llama-3-1-8b-instruct-api-key",
                                                                  "key": "api-key"}}}
    assert ref in env
    embedded = _by_kind(
        kubernetes_objects(spec=llama_8b_on_2_l4, image=IMAGE, api_key_env="VLLM_API_KEY", api_key="s3cret")
    )
    secret = embedded["Secret"]
    _validate_builtin(secret)
    assert secret["metadata"]["name"] == "llama-3-1-8b-instruct-api-key"
    assert secret["stringData"] == {"api-key": "s3cret"}


def test_data_parallel_plan_is_one_pod_with_every_replica_gpu() -> None:
    spec = _spec("Llama-3.1-8B-Instruct", gpu="l4", gpus=4, weights_gib=14.96, tensor_parallel_size=2)
    assert (spec.default.tensor_parallel_size, spec.default.data_parallel_size) == (2, 2)
    assert "--data-parallel-size" in spec.default.argv
    deployment = _by_kind(kubernetes_objects(spec=spec, image=IMAGE))["Deployment"]
    _validate_builtin(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "vLLM runs 2 replicas of 2 GPU(s)" in kubernetes_manifests(spec=spec, image=IMAGE)
    assert deployment["spec"]["replicas"] == 1  # vLLM balances over its replicas behind one port


# SEVERAL NODES: LEADERWORKERSET + SERVICE


def test_70b_on_2_nodes_of_4_a100_40gb_gives_a_leader_worker_set(llama_70b_on_2_nodes: RunSpec) -> None:
    spec = llama_70b_on_2_nodes
    profile = spec.default
    assert (profile.nodes, profile.pipeline_parallel_size, profile.tensor_parallel_size) == (2, 2, 4)
    documents = [d for d in yaml.safe_load_all(kubernetes_manifests(spec=spec, image=IMAGE)) if d]
    objects = _by_kind(documents)
    assert set(objects) == {"LeaderWorkerSet", "Service"}
    lws, service = objects["LeaderWorkerSet"], objects["Service"]
    jsonschema.validate(lws, _lws_schema())
    _validate_builtin(service)
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    templates = {role: group[f"{role}Template"] for role in ("leader", "worker")}
    for role, template in templates.items():
        # each pod template is a valid pod spec of its own
        _validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": template["spec"]})
        (container,) = template["spec"]["containers"]
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
        assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # the Service selects the leader only
    selector = service["spec"]["selector"]
    assert _matches(selector, templates["leader"]["metadata"]["labels"])
    assert not _matches(selector, templates["worker"]["metadata"]["labels"])
    # the leader runs the image's ENTRYPOINT: the Ray head, then the server with TP 4 × PP 2 on Ray
    leader = templates["leader"]["spec"]["containers"][0]
    assert "command" not in leader and "startupProbe" in leader
    head = entrypoint(spec)[2]
    assert head.startswith("ray start --head --port=6379")
    assert ">= 2 else 1" in head  # waits for both nodes
    server = head.splitlines()[-1]
    for flag in ("--tensor-parallel-size 4", "--pipeline-parallel-size 2", "--distributed-executor-backend ray"):
        assert flag in server
    # the workers join the leader's Ray head through the address LWS gives every pod
    worker = templates["worker"]["spec"]["containers"][0]
    assert worker["command"][:2] == ["/bin/sh", "-c"]
    assert 'ray start --address="${LWS_LEADER_ADDRESS}:6379" --block' in worker["command"][2]
    assert "ports" not in worker and "readinessProbe" not in worker


def test_multi_node_startup_budget_includes_the_ray_join(llama_70b_on_2_nodes: RunSpec) -> None:
    one_node = _spec("Llama-3.1-70B", gpu="a100-80gb", gpus=4, weights_gib=131.4)
    assert llama_70b_on_2_nodes.start_period_s == one_node.start_period_s + 300


def test_compose_refuses_a_multi_node_plan(llama_70b_on_2_nodes: RunSpec) -> None:
    with pytest.raises(InvalidOptionsError, match="generate k8s"):
        compose_document(spec=llama_70b_on_2_nodes, image=IMAGE)


def test_inconsistent_multi_node_spec_is_refused(llama_70b_on_2_nodes: RunSpec) -> None:
    spec = llama_70b_on_2_nodes
    broken = dataclasses.replace(spec, profiles=(dataclasses.replace(spec.default, data_parallel_size=2),))
    with pytest.raises(ArtifactInvalidError, match="does not add up"):
        kubernetes_objects(spec=broken, image=IMAGE)


# COMPOSE


def test_compose_file_is_valid_with_the_gpu_reservation(llama_8b_on_2_l4: RunSpec) -> None:
    spec = llama_8b_on_2_l4
    text = compose_file(spec=spec, image=IMAGE, host_port=9000, api_key_env="VLLM_API_KEY")
    document = yaml.safe_load(text)
    schema = json.loads((SCHEMAS / "compose-spec-compose-go-v2.13.0.json").read_text())
    jsonschema.validate(document, schema)
    service = document["services"][resource_name(spec)]
    assert service["image"] == IMAGE and service["ports"] == [f"9000:{spec.port}"]
    assert service["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}
    ]
    assert service["ipc"] == "host"
    # the health check reads the container's $PORT, so compose must not interpolate it from the host
    assert any("$$" in part or "$" not in part for part in service["healthcheck"]["test"])
    assert service["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")


# INPUTS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"namespace": "Not_Valid"}, "namespace"),
        ({"name": "9lives"}, "--name"),
        ({"api_key_env": "1BAD"}, "environment variable"),
        ({"image": "registry.internal/llm/llama"}, "not pinned"),
        ({"gpu_resource": "no slash"}, "extended resource"),
        ({"api_key": "x"}, "api-key-env"),
    ],
)
def test_bad_inputs_say_what_to_change(llama_8b_on_2_l4: RunSpec, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"image": IMAGE, **kwargs}
    with pytest.raises(InvalidOptionsError, match=message):
        kubernetes_objects(spec=llama_8b_on_2_l4, **arguments)


def _kubernetes_expands(text: str) -> str:
    """What the kubelet makes of an env value or command word: ``$$`` is ``$``, ``$(NAME)`` a variable (none is
    defined here, so it must not occur), any other ``$`` itself (kubernetes third_party/forked/golang/expansion)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            raise AssertionError(f"{text!r} would expand a variable at {i}")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def test_dollar_signs_reach_the_server_unexpanded(llama_8b_on_2_l4: RunSpec) -> None:
    literal = "$(whoami) costs $$5 or ${HOME}"
    spec = dataclasses.replace(llama_8b_on_2_l4, env=(("PROMPT_PREFIX", literal),))
    deployment = _by_kind(kubernetes_objects(spec=spec, image=IMAGE))["Deployment"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert _kubernetes_expands(env["PROMPT_PREFIX"]) == literal
    # compose interpolates every $ it does not see doubled
    service = compose_document(spec=spec, image=IMAGE)["services"][resource_name(spec)]
    assert service["environment"]["PROMPT_PREFIX"] == literal.replace("$", "$$")


def test_resource_name_is_a_dns_label(llama_8b_on_2_l4: RunSpec) -> None:
    assert resource_name(llama_8b_on_2_l4) == "llama-3-1-8b-instruct"
    odd = dataclasses.replace(llama_8b_on_2_l4, served_model_name="Org/3B_Model.v2 (final)" + "x" * 80)
    name = resource_name(odd)
    assert name.startswith("model-3b-model-v2-final") and len(name) <= 40 and not name.endswith("-")


def test_cpu_plan_asks_for_no_gpu_and_no_shared_memory() -> None:
    from core.hardware import Target
    from core.sizing import GIB

    cpu = Target(ram_bytes=64 * GIB, cpu_cores=16)
    spec = render(plan=plan(model=model_info("Qwen2.5-0.5B"), target=cpu)).run_spec
    assert spec.default.device == "cpu"
    objects = _by_kind(kubernetes_objects(spec=spec, image=IMAGE))
    for document in objects.values():
        _validate_builtin(document)
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "resources" not in container or "nvidia.com/gpu" not in container["resources"].get("limits", {})
    service = compose_document(spec=spec, image=IMAGE)["services"][resource_name(spec)]
    assert "deploy" not in service

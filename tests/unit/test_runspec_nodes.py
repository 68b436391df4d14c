"""The run spec of multi-node and data-parallel plans: the JSON it bakes in (old specs still read), the head and
worker scripts run by a real /bin/sh against stand-in ``ray``, ``python3`` and ``vllm`` programs that record their
argv, and the ``docker run`` line of each role."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ArtifactInvalidError
from core.hardware import describe_target
from core.plan import Options, plan
from core.render import render
from core.runspec import (
    HEAD_ADDRESS_ENV,
    RAY_HEAD_PORT,
    RunSpec,
    entrypoint,
    head_script,
    node_run_argv,
    run_spec_from_json,
    run_spec_json,
    run_spec_to_dict,
    worker_script,
)
from tests.unit.test_sizing import model_info


@pytest.fixture(scope="module")
def two_nodes() -> RunSpec:
    target = describe_target(gpu_preset="a100-40gb", gpu_count=4)
    return render(plan=plan(model=model_info("Llama-3.1-70B"), target=target, options=Options(nodes=2))).run_spec


@pytest.fixture(scope="module")
def replicas() -> RunSpec:
    target = describe_target(gpu_preset="l4", gpu_count=4)
    options = Options(tensor_parallel_size=2)
    return render(plan=plan(model=model_info("Llama-3.1-8B-Instruct"), target=target, options=options)).run_spec


def test_multi_node_profile_carries_what_the_roles_need(two_nodes: RunSpec) -> None:
    p = two_nodes.default
    assert (p.nodes, p.pipeline_parallel_size, p.tensor_parallel_size, p.data_parallel_size) == (2, 2, 4, 1)
    assert p.gpus_per_node == 4 and p.ray_port == RAY_HEAD_PORT
    argv = list(p.argv)
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert "--data-parallel-size" not in argv
    assert run_spec_from_json(run_spec_json(two_nodes)) == two_nodes


def test_data_parallel_profile_uses_every_gpu(replicas: RunSpec) -> None:
    p = replicas.default
    assert (p.tensor_parallel_size, p.data_parallel_size, p.gpus_per_node, p.nodes) == (2, 2, 4, 1)
    argv = list(p.argv)
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "ray_port" not in run_spec_to_dict(replicas)["profiles"][0]  # one-node specs keep their bytes
    assert run_spec_from_json(run_spec_json(replicas)) == replicas
    with pytest.raises(ArtifactInvalidError, match="one node"):
        head_script(replicas)


def test_a_spec_without_ray_port_still_reads(replicas: RunSpec) -> None:
    """Specs baked by earlier versions have no ray_port; a multi-node one must have it."""
    data = run_spec_to_dict(replicas)
    assert run_spec_from_json(json.dumps(data)).default.ray_port == 0
    data["profiles"][0]["nodes"] = 2
    with pytest.raises(ArtifactInvalidError, match="ray_port"):
        run_spec_from_json(json.dumps(data))
    data["profiles"][0].update(nodes=1, data_parallel_size=0)
    with pytest.raises(ArtifactInvalidError, match="positive"):
        run_spec_from_json(json.dumps(data))


def _stand_ins(folder: Path, log: Path, *, ray_failures: int = 0) -> dict[str, str]:
    """``ray``, ``python3``, ``vllm`` and ``sleep`` that append their argv (one JSON list a line) to ``log``;
    ``ray start --address`` fails ``ray_failures`` times first, as it does while the head is not up."""
    folder.mkdir()
    count = folder / "ray-calls"
    count.write_text("0")
    record = f'{shlex.quote(str(folder / "record"))} "$(basename "$0")" "$@"'
    (folder / "record").write_text(  # the real interpreter: python3 on PATH is a stand-in
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(log)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    scripts = {
        "vllm": f"#!/bin/sh\n{record}\n",
        "python3": f"#!/bin/sh\n{record}\n",
        "sleep": f"#!/bin/sh\n{record}\n",
        "ray": (
            f"#!/bin/sh\n{record}\n"
            f'n=$(cat {count}); echo $((n + 1)) > {count}\n'
            f'case "$2" in --address=*) [ "$n" -ge {ray_failures} ] || exit 1 ;; esac\n'
        ),
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (folder / "record").chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin", "PORT": "8123", "HOME": str(folder)}


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_head_role_starts_ray_then_execs_the_server(two_nodes: RunSpec, tmp_path: Path) -> None:
    log = tmp_path / "argv.jsonl"
    env = _stand_ins(tmp_path / "bin", log)
    command = entrypoint(two_nodes)
    assert command[2] == head_script(two_nodes)
    subprocess.run([*command, "--enable-prefix-caching"], env=env, check=True, timeout=30)
    ray, ready, server = _calls(log)
    assert ray == ["ray", "start", "--head", f"--port={RAY_HEAD_PORT}", "--disable-usage-stats"]
    assert ready[:2] == ["python3", "-c"] and ">= 2 else 1" in ready[2]  # waits for both nodes
    assert server == [*two_nodes.default.argv, "--port", "8123", "--enable-prefix-caching"]
    # the readiness check is Python that counts the live Ray nodes: run it against a stand-in ray module
    fake = tmp_path / "fake-ray"
    fake.mkdir()
    for alive, status in ((1, 1), (2, 0), (3, 0)):
        nodes = [{"Alive": True}] * alive + [{"Alive": False}]
        (fake / "ray.py").write_text(f"def init(**kwargs):\n    pass\n\ndef nodes():\n    return {nodes!r}\n")
        done = subprocess.run([sys.executable, "-c", ready[2]], env={"PYTHONPATH": str(fake)}, check=False)
        assert done.returncode == status, alive


def test_worker_role_joins_the_head_and_retries(two_nodes: RunSpec, tmp_path: Path) -> None:
    log = tmp_path / "argv.jsonl"
    env = _stand_ins(tmp_path / "bin", log, ray_failures=2)
    env[HEAD_ADDRESS_ENV] = "head.cluster.internal"
    subprocess.run(["/bin/sh", "-c", worker_script(two_nodes)], env=env, check=True, timeout=30)
    join = ["ray", "start", f"--address=head.cluster.internal:{RAY_HEAD_PORT}", "--block", "--disable-usage-stats"]
    assert _calls(log) == [join, ["sleep", "5"], join, ["sleep", "5"], join]


def test_docker_run_line_of_each_role(two_nodes: RunSpec) -> None:
    head = node_run_argv(two_nodes, role="head", name="llama-head", node_address="192.0.2.10", host_port=9000)
    assert head[:3] == ["docker", "run", "-d"]
    for flags in (["--gpus", "all"], ["--network", "host"], ["-e", "VLLM_HOST_IP=192.0.2.10"], ["-e", "PORT=9000"]):
        assert any(head[i : i + 2] == flags for i in range(len(head))), flags
    assert "--ipc=host" in head and head[-1] == two_nodes.image  # the image's ENTRYPOINT is the head script
    worker = node_run_argv(
        two_nodes, role="worker", name="llama-worker", node_address="192.0.2.11", head_address="192.0.2.10"
    )
    image_at = worker.index(two_nodes.image)
    assert worker[image_at - 2 : image_at] == ["--entrypoint", "/bin/sh"]
    assert worker[image_at + 1 :] == ["-c", worker_script(two_nodes)]
    assert f"{HEAD_ADDRESS_ENV}=192.0.2.10" in worker and "VLLM_HOST_IP=192.0.2.11" in worker
    with pytest.raises(ArtifactInvalidError, match="head node's address"):
        node_run_argv(two_nodes, role="worker", name="w", node_address="192.0.2.11")


def test_stand_ins_are_not_the_real_programs(tmp_path: Path) -> None:
    """Guard for the tests above: with the stand-ins first on PATH, nothing real is reached."""
    env = _stand_ins(tmp_path / "bin", tmp_path / "argv.jsonl")
    for program in ("ray", "vllm", "python3", "sleep"):
        found = subprocess.run(["/bin/sh", "-c", f"command -v {program}"], env=env, capture_output=True, text=True)
        assert found.stdout.strip() == os.path.join(tmp_path, "bin", program)

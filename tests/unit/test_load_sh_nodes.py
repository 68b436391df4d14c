"""load.sh of a pack that spans several nodes: `--head` on the first node, `--worker HEAD_ADDRESS` on the others,
each starting exactly the `docker run` line core.runspec.node_run_argv gives for its role (stand-in docker)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from core.hardware import describe_target
from core.plan import Options, plan
from core.render import render, render_load_script
from core.runspec import node_run_argv
from tests.unit.test_load_sh_args import FAKE_DOCKER, SERVE, Server, _free_port, _stop_fake_server
from tests.unit.test_sizing import model_info


def _stage(tmp_path: Path, *, nodes: int) -> tuple[Server, object]:
    chosen = plan(model=model_info("Llama-3.1-70B"), target=describe_target(gpu_preset="A100-40GB", gpu_count=4),
                  options=Options(nodes=nodes))  # fmt: skip
    spec = render(plan=chosen)
    folder = tmp_path / "stick"
    folder.mkdir()
    payload = b"a docker-archive " * 100
    (folder / "m.tar").write_bytes(payload)
    (folder / "m.tar.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  m.tar\n")
    (folder / "load.sh").write_text(render_load_script(plan=chosen, spec=spec, archive_name="m.tar"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "FAKE_LOADED": str(tmp_path / "loaded.sha256"),
        "FAKE_SERVER_PID": str(tmp_path / "server.pid"),
        "FAKE_PYTHON": sys.executable,
    }
    return Server(folder=folder, env=env, archive="m.tar", whole_sha256=hashlib.sha256(payload).hexdigest()), spec


@pytest.fixture
def two_nodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    server, spec = _stage(tmp_path, nodes=2)
    yield server, spec
    _stop_fake_server(server)


def _runs(server: Server) -> list[str]:
    return [call for call in server.docker_calls() if call.startswith("run ")]


def test_the_plan_spans_two_nodes() -> None:
    chosen = plan(model=model_info("Llama-3.1-70B"), target=describe_target(gpu_preset="A100-40GB", gpu_count=4),
                  options=Options(nodes=2))  # fmt: skip
    assert (chosen.nodes, chosen.tensor_parallel_size, chosen.pipeline_parallel_size) == (2, 4, 2)


def test_without_a_role_it_names_both_commands_and_loads_nothing(two_nodes) -> None:  # type: ignore[no-untyped-def]
    server, _ = two_nodes
    result = server.load()
    assert result.returncode == 2
    assert "spans 2 nodes" in result.stderr and "--head" in result.stderr and "--worker HEAD_ADDRESS" in result.stderr
    assert server.docker_calls() == []


def test_worker_starts_the_worker_line_of_the_run_spec(two_nodes) -> None:  # type: ignore[no-untyped-def]
    server, spec = two_nodes
    result = server.load("--worker", "head.cluster.test", "--address", "127.0.0.3", "--name", "llm-w1")
    assert result.returncode == 0, result.stderr
    assert "joins the head at head.cluster.test" in result.stdout
    expected = node_run_argv(spec.run_spec, role="worker", name="llm-w1", node_address="127.0.0.3",
                             head_address="head.cluster.test")  # fmt: skip
    # the worker script spans lines: compare with the whole log, which holds exactly one run
    log = Path(server.env["FAKE_DOCKER_LOG"]).read_text()
    assert len(_runs(server)) == 1 and "\n" + " ".join(expected[1:]) + "\n" in "\n" + log
    assert any(call.startswith("load") for call in server.docker_calls())


def test_head_starts_the_head_line_prints_the_worker_command_and_waits_for_the_port(two_nodes) -> None:  # type: ignore[no-untyped-def]
    server, spec = two_nodes
    port = _free_port()
    result = server.load("--head", "--address", "127.0.0.1", "--port", str(port), "--name", "llm-head",
                         FAKE_SERVE=SERVE)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = node_run_argv(spec.run_spec, role="head", name="llm-head", node_address="127.0.0.1", host_port=port)
    assert _runs(server) == [" ".join(expected[1:])]
    assert "./load.sh --worker 127.0.0.1" in result.stdout
    assert "Ready" in result.stdout


@pytest.mark.parametrize("args", [("--worker", "a;b"), ("--worker",), ("--head", "--address", "$(id)")])
def test_bad_addresses_are_refused_before_anything_runs(two_nodes, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    server, _ = two_nodes
    result = server.load(*args)
    assert result.returncode == 2
    assert server.docker_calls() == []


def test_a_one_node_pack_refuses_the_roles(tmp_path: Path) -> None:
    server, _ = _stage(tmp_path, nodes=1)
    for args in (("--head",), ("--worker", "127.0.0.2")):
        result = server.load(*args)
        assert result.returncode == 2 and "runs on one server" in result.stderr
    assert server.docker_calls() == []

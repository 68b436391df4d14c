"""--api-key-env NAME: only the variable's name is packed; the run spec says which variable each engine's server
reads, the image's ENTRYPOINT copies NAME into it at start (and refuses to start without it), and docker run,
load.sh, Kubernetes and compose hand NAME over from the environment, never its value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from core import errors
from core.archive import names
from core.errors import ArtifactInvalidError, InvalidOptionsError
from core.hardware import Target
from core.manifests import compose_document, kubernetes_objects
from core.plan import Options, Plan, plan, validate_options
from core.render import render, render_load_script
from core.runspec import (
    MISSING_KEY_EXIT,
    ApiKey,
    RunSpec,
    docker_run_argv,
    entrypoint,
    node_run_argv,
    run_spec_from_json,
    run_spec_json,
    run_spec_to_dict,
)
from core.sizing import GIB
from ezrunner_ui.cli.common import FLAGS
from tests.unit.test_llamacpp_engine import gguf_repo, target
from tests.unit.test_load_sh_args import FAKE_DOCKER, SERVE, Server, _free_port, _stop_fake_server
from tests.unit.test_plan import gpus
from tests.unit.test_render import with_files
from tests.unit.test_sizing import H100, L4, model_info

KEY = "sk-never-in-the-image-5f3a"


def vllm_plan(options: Options) -> Plan:
    info = with_files(model_info("Llama-3.1-8B-Instruct"), shards=4, shard_bytes=4_000_000_000)
    return plan(model=info, target=gpus(H100, 1), options=options)


def llamacpp_plan(options: Options) -> Plan:
    return plan(model=gguf_repo("Qwen2.5-7B-Instruct"), target=target(L4), options=options)


def transformers_plan(options: Options) -> Plan:
    info = with_files(model_info("Qwen2.5-0.5B"), shards=1, shard_bytes=988_000_000)
    return plan(model=info, target=Target(ram_bytes=32 * GIB, cpu_cores=8), options=options)


ENGINES: dict[str, tuple[Callable[[Options], Plan], str]] = {
    "vllm": (vllm_plan, "VLLM_API_KEY"),  # vllm serve --api-key / VLLM_API_KEY
    "llama.cpp": (llamacpp_plan, "LLAMA_API_KEY"),  # llama-server --api-key (env: LLAMA_API_KEY)
    "transformers": (transformers_plan, "EZRUNNER_API_KEY"),  # core/serving_proxy.py
}


@pytest.mark.parametrize("engine", ENGINES)
def test_the_run_spec_names_the_servers_variable_and_the_entrypoint_maps_the_packed_one_onto_it(engine: str) -> None:
    make, server_env = ENGINES[engine]
    build = render(plan=make(Options(api_key_env="MY_KEY")))
    spec = build.run_spec
    assert spec.engine == engine and spec.api_key == ApiKey(env="MY_KEY", server_env=server_env)
    assert spec.metrics_path == "/metrics" and spec.health_path == "/health"
    script = entrypoint(spec)[2]
    lines = script.splitlines()
    assert lines[0].startswith('if [ -z "${MY_KEY:-}" ]; then echo ')
    assert lines[0].endswith(f"exit {MISSING_KEY_EXIT}; fi")
    assert lines[1:3] == [f'export {server_env}="${{MY_KEY}}"', "unset MY_KEY"]
    assert lines[3].startswith("choice=$(")  # then the profile for this server's GPUs, then its server
    assert any(line.strip().startswith("default) exec ") for line in lines[4:])
    # rendered once, from the run spec: the Dockerfile's ENTRYPOINT, the label and /etc/ezrunner/run-spec.json agree
    assert f"ENTRYPOINT {json.dumps(entrypoint(spec))}\n" in build.dockerfile
    assert run_spec_from_json(dict(build.labels)["io.ezrunner.run-spec"]) == spec
    assert dict(build.context_files)["ezrunner/run-spec.json"] == (run_spec_json(spec) + "\n").encode()
    assert run_spec_to_dict(spec)["api_key"] == {"env": "MY_KEY", "server_env": server_env}
    # docker run hands the variable over by name only: docker reads its value from its own environment
    argv = docker_run_argv(spec, name="m", network="host")
    assert argv[-3:] == ["-e", "MY_KEY", spec.image]
    assert not any("MY_KEY=" in word for word in argv)


@pytest.mark.parametrize("engine", ENGINES)
def test_without_the_option_nothing_about_keys_is_rendered(engine: str) -> None:
    spec = render(plan=ENGINES[engine][0](Options())).run_spec
    assert spec.api_key is None and "api_key" not in run_spec_to_dict(spec)
    assert "export" not in entrypoint(spec)[2] and "-e" not in docker_run_argv(spec, name="m")


def _probe(spec: RunSpec) -> RunSpec:
    """The spec with its server swapped for a program that prints its environment and arguments."""
    probe = (sys.executable, "-c", "import json, os, sys; print(json.dumps([dict(os.environ), sys.argv[1:]]))")
    return dataclasses.replace(spec, profiles=(dataclasses.replace(spec.default, argv=probe),))


def _start(spec: RunSpec, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The image's ENTRYPOINT run here, its profile selection script at a temporary path (the image has it at
    /etc/ezrunner/select-profile.sh)."""
    from core.profiles import selection_script
    from core.runspec import SELECT_SCRIPT_PATH

    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "select-profile.sh"
        script.write_text(selection_script(spec))
        argv = [part.replace(SELECT_SCRIPT_PATH, str(script)) for part in entrypoint(spec)]
        return subprocess.run([*argv, *args], env={"PATH": os.environ["PATH"], "PORT": "8123", **env},
                              capture_output=True, text=True, timeout=30)  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_the_entrypoint_hands_the_key_to_the_server_and_refuses_to_start_without_it(engine: str) -> None:
    make, server_env = ENGINES[engine]
    spec = _probe(render(plan=make(Options(api_key_env="MY_KEY"))).run_spec)
    started = _start(spec, {"MY_KEY": KEY}, "--extra")
    assert started.returncode == 0, started.stderr
    env, argv = json.loads(started.stdout)
    assert env[server_env] == KEY and "MY_KEY" not in env
    assert argv == ["--port", "8123", "--extra"]
    for unset in ({}, {"MY_KEY": ""}):
        refused = _start(spec, unset)
        assert refused.returncode == MISSING_KEY_EXIT and refused.stdout == ""
        assert "packed with --api-key-env MY_KEY" in refused.stderr and "docker run -e MY_KEY" in refused.stderr


def test_the_servers_own_variable_may_be_the_packed_one() -> None:
    spec = _probe(render(plan=vllm_plan(Options(api_key_env="VLLM_API_KEY"))).run_spec)
    assert "unset" not in entrypoint(spec)[2]
    env, _ = json.loads(_start(spec, {"VLLM_API_KEY": KEY}).stdout)
    assert env["VLLM_API_KEY"] == KEY


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("1KEY", "environment variable name"),
        ("my_key", "upper-case"),
        ("MY-KEY", "environment variable name"),
        ("MY_KEY=x", "environment variable name"),
        ("PATH", "already reads"),
        ("PORT", "already reads"),
        ("NAME", "already reads"),  # load.sh's container name
        ("HF_TOKEN", "already reads"),
        ("VLLM_HOST_IP", "already reads"),
        ("LD_PRELOAD", "already reads"),
    ],
)
def test_a_bad_variable_name_is_refused_naming_the_flag(name: str, why: str) -> None:
    with pytest.raises(InvalidOptionsError, match=why) as caught:
        validate_options(options=Options(api_key_env=name), target=Target(ram_bytes=8 * GIB))
    assert caught.value.field == errors.API_KEY_ENV and FLAGS[errors.API_KEY_ENV] == "--api-key-env"


@pytest.mark.parametrize("name", ["MY_KEY", "VLLM_API_KEY", "LLAMA_API_KEY", "EZRUNNER_API_KEY", "_K1"])
def test_names_of_ones_own_and_the_engines_key_variables_are_accepted(name: str) -> None:
    validate_options(options=Options(api_key_env=name), target=Target(ram_bytes=8 * GIB))


def test_a_run_spec_with_a_bad_key_entry_is_refused() -> None:
    data = run_spec_to_dict(render(plan=llamacpp_plan(Options(api_key_env="MY_KEY"))).run_spec)
    for bad in ({"env": "MY KEY", "server_env": "LLAMA_API_KEY"}, {"env": "MY_KEY"}, "MY_KEY"):
        with pytest.raises(ArtifactInvalidError, match="run spec is not valid"):
            run_spec_from_json(json.dumps({**data, "api_key": bad}))


def test_kubernetes_and_compose_read_the_variable_from_the_run_spec() -> None:
    spec = render(plan=vllm_plan(Options(api_key_env="MY_KEY"))).run_spec
    objects = kubernetes_objects(spec=spec, image=spec.image)
    container = objects[-2]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MY_KEY", "valueFrom": {"secretKeyRef": {"name": "llama-3-1-8b-instruct-api-key",
                                                             "key": "api-key"}}} in container["env"]  # fmt: skip
    service = next(iter(compose_document(spec=spec, image=spec.image)["services"].values()))
    assert service["environment"]["MY_KEY"].startswith("${MY_KEY:?")
    with pytest.raises(InvalidOptionsError, match="packed with --api-key-env MY_KEY") as caught:
        kubernetes_objects(spec=spec, image=spec.image, api_key_env="VLLM_API_KEY")
    assert caught.value.field == errors.API_KEY_ENV


def test_a_multi_node_head_takes_the_key_and_workers_do_not_need_it() -> None:
    spec = render(plan=vllm_plan(Options(api_key_env="MY_KEY"))).run_spec
    head_profile = dataclasses.replace(spec.default, nodes=2, pipeline_parallel_size=2, ray_port=6379)
    multi = dataclasses.replace(spec, profiles=(head_profile,))
    script = entrypoint(multi)[2]
    assert script.index("ray start --head") < script.index('export VLLM_API_KEY="${MY_KEY}"') < script.index("exec ")
    head = node_run_argv(multi, role="head", name="h", node_address="10.0.0.1")
    assert head[-3:] == ["-e", "MY_KEY", multi.image]
    worker = node_run_argv(multi, role="worker", name="w", node_address="10.0.0.2", head_address="10.0.0.1")
    assert "MY_KEY" not in worker


def _stick(tmp_path: Path) -> Server:
    p = transformers_plan(Options(api_key_env="MY_KEY"))
    folder = tmp_path / "stick"
    folder.mkdir()
    payload = b"a docker-archive" * 100
    (folder / "m.tar").write_bytes(payload)
    names.checksum_path(folder / "m.tar").write_text(f"{hashlib.sha256(payload).hexdigest()}  m.tar\n")
    (folder / "load.sh").write_text(render_load_script(plan=p, spec=render(plan=p), archive_name="m.tar"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
           "FAKE_LOADED": str(tmp_path / "loaded"), "FAKE_SERVER_PID": str(tmp_path / "server.pid"),
           "FAKE_PYTHON": sys.executable}  # fmt: skip
    return Server(folder=folder, env=env, archive="m.tar", whole_sha256=hashlib.sha256(payload).hexdigest())


def test_load_sh_refuses_to_start_without_the_key_and_hands_it_over_by_name(tmp_path: Path) -> None:
    stick = _stick(tmp_path)
    try:
        refused = stick.load("--network", "host", "--port", str(_free_port()))
        assert refused.returncode == 1 and "MY_KEY is not set" in refused.stderr
        assert not stick.docker_calls() or not any(c.startswith(("load", "run")) for c in stick.docker_calls())
        port = _free_port()
        ready = stick.load("--network", "host", "--port", str(port), "--timeout", "30", FAKE_SERVE=SERVE, MY_KEY=KEY)
        assert ready.returncode == 0, ready.stderr
        run = next(c for c in stick.docker_calls() if c.startswith("run "))
        assert " -e MY_KEY " in f" {run} " and KEY not in run
        assert KEY not in ready.stdout + ready.stderr
        assert 'Authorization: Bearer $MY_KEY' in ready.stdout
        assert "export MY_KEY" in stick.load("--help").stdout
    finally:
        _stop_fake_server(stick)

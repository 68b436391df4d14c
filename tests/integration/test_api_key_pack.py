"""An image packed with --api-key-env, on the real engine: llama.cpp (a folder with one tiny .gguf) and
transformers (the tiny model on the fake hub, behind EZ Runner's proxy). Packed while the key is in the
packing shell's environment, the key is nowhere in the image (config, labels, history), the tar, EZ Runner's
data folder (history) or the CLI's output; started with the key in the environment, the server refuses
requests without it, answers with it, leaves /health open, and its logs hold no key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core import tryout
from core.archive import names
from core.bench import Target
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.events import Cancel, ignore_events
from core.tryout import ChatRun
from tests.fixtures.cli import ezrunner, user_shell
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SINGLE
from tests.fixtures.tiny_gguf import make_tiny_gguf

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CPU_TARGET = ["--cpu-only", "--ram", "8"]
KEY = "sk-ezrunner-test-7c0ffee-never-packed"


@pytest.fixture
def user_env(fake_hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    """The packing user's shell, with the key exported in it (the worst case: nothing may pick it up)."""
    return user_shell(hub_url=fake_hub.url, home=tmp_path, MY_KEY=KEY)


def _assert_key_not_in_the_image(ref: str, client: DockerClient) -> None:
    image = client.images.get(ref)
    config = json.dumps(image.attrs)
    assert KEY not in config and "MY_KEY" in config  # the name is packed (labels, run spec), the value is not
    assert KEY not in json.dumps(image.history())
    assert KEY not in json.dumps(image.labels)


def _assert_key_not_in_the_pack(*, output: str, archive: Path, home: Path) -> None:
    key = KEY.encode()
    assert KEY not in output
    for part in names.archive_parts(archive):
        with part.open("rb") as f:
            tail = b""
            while block := f.read(8 << 20):
                assert key not in tail + block, f"the key is in {part.name}"
                tail = block[-len(key) :]
    for path in home.rglob("*"):  # the history database and everything else EZ Runner keeps
        if path.is_file():
            assert key not in path.read_bytes(), f"the key is in {path}"


def _pack_and_start(*, source: str, base_image: str, tmp_path: Path, env: dict[str, str], port: int,
                    client: DockerClient, cleanup: list[str]) -> tuple[dict, str]:  # fmt: skip
    out = tmp_path / "out"
    packed = ezrunner("pack", source, *CPU_TARGET, "--base-image", base_image, "--api-key-env", "MY_KEY",
                      "-o", str(out / "m.tar"), "--json", env=env)  # fmt: skip
    artifact = json.loads(packed.stdout)
    cleanup += [artifact["image_tag"], artifact["image_tag"] + "-runtime"]
    _assert_key_not_in_the_pack(output=packed.stdout + packed.stderr, archive=out / "m.tar",
                                home=Path(env["EZRUNNER_HOME"]))  # fmt: skip
    if docker_api.image_exists(ref=artifact["image_tag"] + "-runtime", client=client):  # the fast path's base
        _assert_key_not_in_the_image(artifact["image_tag"] + "-runtime", client)
    name = f"ezrunner-test-key-{port}"
    cleanup.insert(0, name)
    # without the key in the environment, `ezrunner run` refuses to start it and says what to set
    without = {k: v for k, v in env.items() if k != "MY_KEY"}
    refused = ezrunner("run", str(out / "m.tar"), "--network", "host", "--port", str(port), "--name", name,
                       env=without, check=False)  # fmt: skip
    assert refused.returncode != 0 and "MY_KEY is not set" in refused.stderr
    started = ezrunner("run", str(out / "m.tar"), "--network", "host", "--port", str(port), "--name", name,
                       "--timeout", "300", "--json", env=env)  # fmt: skip
    assert KEY not in started.stdout + started.stderr
    _assert_key_not_in_the_image(artifact["image_tag"], client)  # as `ezrunner run` loaded it from the tar
    return json.loads(started.stdout), name


def _chat(base: str, model: str, *, key: str | None, stream: bool = False) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": stream}
    return requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=120, stream=stream)


def _assert_refused_without_the_key(base: str, model: str) -> None:
    for key in (None, "sk-wrong"):
        refused = _chat(base, model, key=key)
        assert refused.status_code == 401, refused.text


def test_a_llamacpp_image_packed_with_an_api_key_env_needs_the_key_and_never_holds_it(
    user_env: dict[str, str], offline_llama_image: str, tmp_path: Path, free_port: int, docker_client: DockerClient,
    cleanup: list[str],
) -> None:
    folder = tmp_path / "tiny-gguf"
    folder.mkdir()
    make_tiny_gguf(folder / "tiny-llama-F16.gguf")
    started, name = _pack_and_start(source=str(folder), base_image=offline_llama_image, tmp_path=tmp_path,
                                    env=user_env, port=free_port, client=docker_client, cleanup=cleanup)  # fmt: skip
    base, model = started["endpoint"], started["served_model_name"]
    assert started["api_key_env"] == "MY_KEY"
    _assert_refused_without_the_key(base, model)
    assert requests.get(f"http://127.0.0.1:{free_port}/health", timeout=10).status_code == 200
    answer = _chat(base, model, key=KEY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] > 0
    metrics = requests.get(f"http://127.0.0.1:{free_port}/metrics", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=10)  # fmt: skip
    assert metrics.status_code == 200 and "llamacpp:tokens_predicted_total" in metrics.text
    assert KEY not in docker_containers.container_logs(container=name, tail=10_000, client=docker_client)
    _throwaway_servers_run_without_the_variable(image=started["image"], archive=tmp_path / "out" / "m.tar",
                                                env=user_env, name=name)  # fmt: skip


def _throwaway_servers_run_without_the_variable(*, image: str, archive: Path, env: dict[str, str], name: str) -> None:
    """A check, a bench and a test drive remove their server when done: with MY_KEY unset each runs it on a
    random key of its own (sent by its own client) instead of refusing, as a plain `ezrunner run` does."""
    without = {k: v for k, v in env.items() if k != "MY_KEY"}
    checked = ezrunner("run", str(archive), "--check", "--network", "host", "--port", str(tryout.free_port()),
                       "--name", f"{name}-check", "--timeout", "300", env=without)  # fmt: skip
    assert "Check passed" in checked.stdout, checked.stdout + checked.stderr
    benched = ezrunner("bench", image, "--requests", "2", "--max-tokens", "4", "--network", "host", "--json",
                       env=without)  # fmt: skip
    (result,) = json.loads(benched.stdout)["results"]
    assert result["requests_ok"] == 2 and result["requests_failed"] == 0
    saved = os.environ.pop("MY_KEY", None)
    try:
        server = tryout.start_target(target=Target(text=image, image=image), on_event=ignore_events, cancel=Cancel(),
                                     name=f"{name}-try")  # fmt: skip
        try:
            answer = ChatRun(server=server, messages=[{"role": "user", "content": "hello"}], max_tokens=4,
                             temperature=0.0).start().wait(120)  # fmt: skip
            assert answer.state == "done", answer.error
            assert server.api_key and server.api_key != KEY and server.api_key not in repr(server)
            assert server.api_key_one_off
        finally:
            docker_containers.remove_container(container=server.container_id)
    finally:
        if saved is not None:
            os.environ["MY_KEY"] = saved


def test_a_transformers_image_packed_with_an_api_key_env_streams_behind_the_proxy(
    user_env: dict[str, str], offline_base_image: str, tmp_path: Path, free_port: int, docker_client: DockerClient,
    cleanup: list[str],
) -> None:
    started, name = _pack_and_start(source=f"hf:{HF_SINGLE}", base_image=offline_base_image, tmp_path=tmp_path,
                                    env=user_env, port=free_port, client=docker_client, cleanup=cleanup)  # fmt: skip
    base, model = started["endpoint"], started["served_model_name"]
    _assert_refused_without_the_key(base, model)
    assert requests.get(f"http://127.0.0.1:{free_port}/health", timeout=10).status_code == 200
    assert requests.get(f"http://127.0.0.1:{free_port}/metrics", timeout=10).status_code == 401
    streamed = _chat(base, model, key=KEY, stream=True)
    assert streamed.status_code == 200 and streamed.headers["Content-Type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith(b"data: {")]
    usage = events[-1]["usage"]  # token by token, then the usage chunk (transformers serve sends no [DONE])
    assert len(events) > 2 and usage["completion_tokens"] > 0
    metrics = requests.get(f"http://127.0.0.1:{free_port}/metrics", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=10).text  # fmt: skip
    assert f"ezrunner_generation_tokens_total {usage['completion_tokens']}" in metrics
    assert f"ezrunner_prompt_tokens_total {usage['prompt_tokens']}" in metrics
    assert 'ezrunner_requests_total{code="200"} 1' in metrics and 'ezrunner_requests_total{code="401"}' not in metrics
    logs = docker_containers.container_logs(container=name, tail=10_000, client=docker_client)
    assert "API key required" in logs and KEY not in logs

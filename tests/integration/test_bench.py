"""`ezrunner bench`, `ezrunner run --check` and `load.sh --check` on the real engine with the tiny llama.cpp pack
(llama-server on the CPU answers in milliseconds): two targets, an archive and the loaded image, benched one
after the other, their token counts held against llama.cpp's own /metrics counter, nothing left behind, also
after Ctrl-C midway; the bad inputs; and the smoke check on a good image and on one whose server exits."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker import DockerClient

from core.docker import api as docker_api
from core.history import History
from tests.fixtures.cli import ezrunner, user_shell
from tests.fixtures.docker_plugin import DockerScratch
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SINGLE
from tests.fixtures.packs import CPU_TARGET, Pack, tiny_llamacpp_pack

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_pack(
    tmp_path_factory: pytest.TempPathFactory, offline_llama_image: str, docker_client: DockerClient
) -> Iterator[Pack]:
    """The tiny GGUF packed once with the offline llama.cpp image, and its image loaded (the IMAGE_REF target)."""
    yield from tiny_llamacpp_pack(root=tmp_path_factory.mktemp("bench"), llama_image=offline_llama_image,
                                  client=docker_client)  # fmt: skip


def _bench_containers(client: DockerClient) -> list[object]:
    return [c for c in client.containers.list(all=True) if c.name.startswith("ezrunner-bench-")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_targets_are_benched_in_turn_and_their_tokens_match_the_engine_metrics(
    tiny_pack: Pack, docker_client: DockerClient
) -> None:
    assert _bench_containers(docker_client) == []
    result = ezrunner("bench", str(tiny_pack.archive), tiny_pack.image, "--requests", "4", "--max-tokens", "8",
                      "--json", "--network", "host", "--port", str(_free_port()), env=tiny_pack.env)  # fmt: skip
    results = json.loads(result.stdout)["results"]
    assert [r["target"] for r in results] == [str(tiny_pack.archive), tiny_pack.image]
    for figures in results:
        print(json.dumps(figures))
        assert figures["requests_ok"] == 4 and figures["requests_failed"] == 0
        assert 0 < figures["ttft_s_p50"] <= figures["ttft_s_p95"]
        assert figures["output_tokens_per_s"] > 0 and figures["output_tokens"] > 0
        assert figures["peak_memory_bytes"] > 0
        assert figures["token_count_source"] == "usage"
        assert figures["metrics_counter"] == "llamacpp:tokens_predicted_total"
        assert figures["output_tokens"] == figures["metrics_output_tokens"]  # the engine's own count
        assert figures["pack_id"] == tiny_pack.record_id
    # one after the other: the first container was gone before the second started
    assert result.stderr.index("Removing ezrunner-bench-") < result.stderr.index("Target 2 of 2")
    assert _bench_containers(docker_client) == []
    kept = History(Path(tiny_pack.env["EZRUNNER_HOME"]) / "history.sqlite").bench_results(tiny_pack.record_id)
    assert [k["target"] for k in kept][-2:] == [str(tiny_pack.archive), tiny_pack.image]


def test_the_table_shows_the_targets_side_by_side(tiny_pack: Pack, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Count to five.\nName a colour.\n", encoding="utf-8")
    result = ezrunner("bench", tiny_pack.image, tiny_pack.image, "--requests", "3", "--concurrency", "2",
                      "--max-tokens", "4", "--prompts", str(prompts), "--network", "host",
                      env=tiny_pack.env)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].split()[1:] == [tiny_pack.image, tiny_pack.image]
    assert any(line.startswith("TTFT p95") for line in lines) and any("peak memory" in line for line in lines)
    assert next(line for line in lines if line.startswith("requests ok")).split()[4:] == ["3", "/", "0"] * 2


def test_ctrl_c_midway_leaves_nothing_behind(tiny_pack: Pack, docker_client: DockerClient, tmp_path: Path) -> None:
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ezrunner_ui.cli", "bench", tiny_pack.image, tiny_pack.image, "--requests", "500",
             "--max-tokens", "64", "--network", "host"],
            env=tiny_pack.env, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "request 1 " not in log.read_text() and "request 1/" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert len(_bench_containers(docker_client)) == 1  # midway: the first target's server runs
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode == 130, log.read_text()
    assert "SIGINT: stopping the bench" in log.read_text()
    assert _bench_containers(docker_client) == []
    assert "Target 2 of 2" not in log.read_text()


# BAD INPUT


def test_a_target_that_is_neither_an_archive_nor_a_loaded_image(tiny_pack: Pack, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello\n")
    for target in ("ezrunner/never-packed:1", str(tmp_path / "missing.tar"), str(text_file)):
        result = ezrunner("bench", str(tiny_pack.archive), target, "--json", env=tiny_pack.env, check=False)
        assert result.returncode == 2, result.stderr
        answer = json.loads(result.stdout)
        assert answer["error"] == "target_not_found" and answer["flag"] == "TARGET"
        assert target in answer["message"] and "==> verify" not in result.stderr  # refused before anything starts


def test_a_port_in_use_is_refused_before_anything_starts(tiny_pack: Pack, docker_client: DockerClient) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ezrunner("bench", tiny_pack.image, "--network", "host", "--port", str(port), env=tiny_pack.env,
                          check=False)  # fmt: skip
    assert result.returncode == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr and "Error (--port)" in result.stderr
    assert _bench_containers(docker_client) == []


@pytest.fixture
def broken_images(tiny_pack: Pack, docker_client: DockerClient, docker_scratch: DockerScratch) -> dict[str, str]:
    """The tiny image with its server replaced: one that never listens, one that exits at once."""
    made = {}
    for kind, command in (("silent", "echo 'broken: never listens'; exec sleep 3600"),
                          ("exits", "echo 'broken: cannot load the model' >&2; exit 3")):  # fmt: skip
        ref = docker_scratch.image_ref(f"broken-{kind}")
        dockerfile = f'FROM {tiny_pack.image}\nENTRYPOINT ["/bin/sh", "-c", {json.dumps(command)}]\n'
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, labels=docker_scratch.labels,
                                   rm=True, network_mode="none")  # fmt: skip
        made[kind] = ref
    return made


def test_a_server_that_never_becomes_healthy_is_removed_after_a_bounded_wait(
    tiny_pack: Pack, broken_images: dict[str, str], docker_client: DockerClient
) -> None:
    started = time.monotonic()
    result = ezrunner("bench", broken_images["silent"], "--network", "host", "--timeout", "4", env=tiny_pack.env,
                      check=False, timeout=120)  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode == 2
    assert "did not answer" in result.stderr and "within 4 s" in result.stderr
    assert "broken: never listens" in result.stderr  # its last log lines
    assert _bench_containers(docker_client) == []


def test_run_check_prints_the_first_tokens_and_removes_the_container(
    tiny_pack: Pack, docker_client: DockerClient
) -> None:
    name = f"ezrunner-bench-check-{_free_port()}"
    result = ezrunner("run", str(tiny_pack.archive), "--check", "--network", "host", "--port", str(_free_port()),
                      "--name", name, env=tiny_pack.env)  # fmt: skip
    assert result.stdout.startswith("Answer: ") and len(result.stdout.splitlines()[0]) > len("Answer: ")
    assert "Time to first token: " in result.stdout and "stopped and removed" in result.stdout
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


def _archive_of(client: DockerClient, ref: str, folder: Path) -> Path:
    folder.mkdir()
    archive = folder / "broken.tar"
    with archive.open("wb") as out:
        for chunk in client.images.get(ref).save(named=True):
            out.write(chunk)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / "broken.tar.sha256").write_text(f"{digest}  broken.tar\n")
    return archive


def test_load_sh_check_passes_on_the_pack_and_fails_with_log_lines_on_a_broken_one(
    tiny_pack: Pack, broken_images: dict[str, str], docker_client: DockerClient, tmp_path: Path
) -> None:
    load_sh = tiny_pack.archive.parent / "load.sh"
    good = subprocess.run(["bash", str(load_sh), "--check", "--network", "host", "--port", str(_free_port()),
                           "--name", f"ezrunner-bench-load-{_free_port()}"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "Answer: " in good.stdout and "Time to first token: " in good.stdout
    assert _bench_containers(docker_client) == []

    # The same load.sh for the image whose server exits: what a pack of it writes, but for its name and archive.
    broken = _archive_of(docker_client, broken_images["exits"], tmp_path / "broken")
    script = load_sh.read_text().replace(tiny_pack.image, broken_images["exits"]).replace("A.tar", broken.name)
    (broken.parent / "load.sh").write_text(script)
    name = f"ezrunner-bench-broken-{_free_port()}"
    failed = subprocess.run(["bash", str(broken.parent / "load.sh"), "--check", "--network", "host", "--port",
                             str(_free_port()), "--name", name],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert failed.returncode != 0
    assert "Last log lines" in failed.stderr and "broken: cannot load the model" in failed.stderr
    assert "Check passed" not in failed.stdout
    assert docker_client.containers.list(all=True, filters={"name": name}) == []

    result = ezrunner("run", str(broken), "--check", "--network", "host", "--port", str(_free_port()), "--name",
                      name, env=tiny_pack.env, check=False)  # fmt: skip
    assert result.returncode == 2
    assert "broken: cannot load the model" in result.stderr and "exit code 3" in result.stderr
    assert docker_client.containers.list(all=True, filters={"name": name}) == []


def test_a_transformers_pack_without_metrics_is_benched_and_says_so(
    tmp_path: Path, fake_hub_server: FakeHub, offline_base_image: str, docker_client: DockerClient
) -> None:
    env = user_shell(hub_url=fake_hub_server.url, home=tmp_path)
    archive = tmp_path / "out" / "t.tar"
    artifact = json.loads(ezrunner("pack", f"hf:{HF_SINGLE}", *CPU_TARGET, "--base-image", offline_base_image,
                                   "-o", str(archive), "--json", env=env).stdout)  # fmt: skip
    try:
        result = ezrunner("bench", str(archive), "--requests", "2", "--max-tokens", "4", "--json", "--network",
                          "host", "--port", str(_free_port()), env=env)  # fmt: skip
        (figures,) = json.loads(result.stdout)["results"]
        print(json.dumps(figures))
        assert figures["engine"] == "transformers"
        assert figures["requests_ok"] == 2 and figures["requests_failed"] == 0
        assert 0 < figures["ttft_s_p50"] <= figures["ttft_s_p95"] and figures["output_tokens_per_s"] > 0
        assert figures["peak_memory_bytes"] > 0
        if figures["metrics_counter"] is None:  # transformers serve has no /metrics: said, not hidden
            assert figures["metrics_output_tokens"] is None and any("/metrics" in n for n in figures["notes"])
        else:  # a metrics proxy in front of it (the API-key work) counts what it served
            assert figures["metrics_output_tokens"] == figures["output_tokens"]
        assert figures["pack_id"] == artifact["record_id"]
        assert _bench_containers(docker_client) == []
    finally:
        docker_api.remove_image(ref=str(artifact["image_tag"]), force=True, client=docker_client)
